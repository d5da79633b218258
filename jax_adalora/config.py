"""The AdaLoRA run configuration: one validated, frozen dataclass.

Every field is checked when the config is built; rules that need the run length (the schedule) are
checked by :meth:`AdaLoRAConfig.validate_schedule`, which :func:`jax_adalora.allocator.rank_allocator`
calls. Each error names the field and the rule it broke.
"""

from __future__ import annotations

import dataclasses
import math

from jax_adalora.stats import STATISTICS

SMOOTHINGS = ("adalora", "ema", "none", "sum", "pooled")


@dataclasses.dataclass(frozen=True)
class AdaLoRAConfig:
    """AdaLoRA hyper-parameters.

    Attributes:
      r_init: initial rank of every adapted matrix (PEFT's ``init_r``).
      r_target: average final rank per adapted matrix (PEFT's ``target_r``); the final global budget is
        ``r_target * number_of_adapted_matrices`` triplets.
      alpha: adapter scale numerator; the adapter output is multiplied by ``alpha / r_init`` (PEFT's
        ``lora_alpha / ranknum``, with ``ranknum`` held at ``r_init``).
      targets: a preset name the model offers (the zoo's encoders: ``"paper"``, the six
        matrices per layer) or a regular expression over '.'-joined module paths.
      beta1: EMA coefficient of the smoothed importance (AdaLoRA's β1).
      beta2: EMA coefficient of the uncertainty (AdaLoRA's β2).
      t_init: warm-up steps with the full budget and no masking: a whole number of steps, or a fraction of
        the run in [0, 1) (``0.1``: the first 10 % of the steps, rounded up).
      t_final: final steps with the rank pattern frozen at the target budget: steps, or a fraction of the
        run in [0, 1) (``0.2``: the last 20 %, rounded up). :meth:`for_run` turns fractions into steps.
      delta_t: mask every ``delta_t`` steps during the budget-decreasing phase.
      orth_reg_weight: γ, weight of the orthogonal regularisation added to the loss.
      score: element score ``s(·)``: sensitivity ``|w·g|``, movement ``-w·g``, Fisher ``E[g²]``,
        GSNR ``E[g]²/Var[g]``, magnitude ``|w|``, saliency ``½·w²·E[g²]``, a name given to
        :func:`jax_adalora.scores.register_score`, or a :class:`jax_adalora.scores.Score` (checked when the
        allocator is built).
      statistics: how a score that reads ``E[g²]`` / ``Var[g]`` (Fisher, GSNR, saliency) gets them:
        ``per_example`` (exact, from per-example gradients of the batch) or ``running`` (EMA over steps of
        batch-mean gradients); ``batch`` gives the batch gradient alone, for scores that read nothing else.
        Sensitivity, movement and magnitude need only the batch gradient, which every mode gives exactly.
      smoothing: ``adalora`` (EMA × uncertainty, the reference), ``ema`` (plain EMA), ``none``, ``sum``
        (cumulative sum, as movement pruning accumulates its score) or ``pooled`` (the gradient moments pooled
        over every example since the last re-allocation, then scored once; :mod:`jax_adalora.scores`).
      running_decay: EMA decay of the running moments (only with ``statistics="running"``).
      gsnr_eps: added to ``Var[g]`` in GSNR so that zero variance gives a finite score.
      init_std: standard deviation of the normal init of P and Q (λ starts at 0).
    """

    r_init: int = 16
    r_target: int = 8
    alpha: float = 16.0
    targets: str = "paper"
    beta1: float = 0.85
    beta2: float = 0.85
    t_init: int | float = 0
    t_final: int | float = 0
    delta_t: int = 1
    orth_reg_weight: float = 0.1
    score: str = "sensitivity"
    statistics: str = "per_example"
    smoothing: str = "adalora"
    running_decay: float = 0.9
    gsnr_eps: float = 1e-12
    init_std: float = 0.02

    def __post_init__(self):
        _require(isinstance(self.r_init, int) and self.r_init >= 1, "r_init", self.r_init, "an integer >= 1")
        _require(
            isinstance(self.r_target, int) and 0 <= self.r_target <= self.r_init,
            "r_target",
            self.r_target,
            f"an integer with 0 <= r_target <= r_init ({self.r_init})",
        )
        _require(self.alpha > 0, "alpha", self.alpha, "> 0")
        _require(isinstance(self.targets, str) and self.targets, "targets", self.targets, "a non-empty string")
        for name in ("beta1", "beta2", "running_decay"):
            value = getattr(self, name)
            _require(0.0 < value < 1.0, name, value, "in the open interval (0, 1)")
        for name in ("t_init", "t_final"):
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            ok = ok or (isinstance(value, float) and 0.0 <= value < 1.0)
            _require(ok, name, value, "a whole number of steps >= 0, or a fraction of the run in [0, 1)")
        _require(self.delta_t >= 1, "delta_t", self.delta_t, ">= 1")
        _require(self.orth_reg_weight >= 0, "orth_reg_weight", self.orth_reg_weight, ">= 0")
        named = isinstance(self.score, str) and bool(self.score.strip())
        _require(named or hasattr(self.score, "reads"), "score", self.score, "a score name or a Score")
        _require(self.statistics in STATISTICS, "statistics", self.statistics, f"one of {STATISTICS}")
        _require(self.smoothing in SMOOTHINGS, "smoothing", self.smoothing, f"one of {SMOOTHINGS}")
        _require(self.gsnr_eps > 0, "gsnr_eps", self.gsnr_eps, "> 0")
        _require(self.init_std > 0, "init_std", self.init_std, "> 0")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r_init

    def replace(self, **overrides) -> AdaLoRAConfig:
        return dataclasses.replace(self, **overrides)

    def for_run(self, total_steps: int) -> AdaLoRAConfig:
        """The config with ``t_init`` and ``t_final`` in steps of a ``total_steps``-step run, checked.

        A fraction ``f`` becomes ``ceil(f * total_steps)`` steps: 0.1 and 0.2 of 297 steps are 30 and 60.
        """
        self.validate_schedule(total_steps)
        return self.replace(t_init=_steps(self.t_init, total_steps), t_final=_steps(self.t_final, total_steps))

    def validate_schedule(self, total_steps: int) -> None:
        """Checks the schedule fields against the run length; raises ``ValueError`` naming the field."""
        _require(isinstance(total_steps, int) and total_steps >= 1, "total_steps", total_steps, "an integer >= 1")
        t_init, t_final = _steps(self.t_init, total_steps), _steps(self.t_final, total_steps)
        if t_init >= total_steps - t_final:
            shown = lambda v, steps: f"{v}" if isinstance(v, int) else f"{v} ({steps} steps)"
            # A suggestion in the paper's proportions (warm-up ~10 %, final phase ~20 % of the run).
            raise ValueError(
                f"AdaLoRAConfig.t_init={shown(self.t_init, t_init)} must be < total_steps - AdaLoRAConfig.t_final "
                f"({total_steps} - {shown(self.t_final, t_final)} = {total_steps - t_final}): no steps are left "
                f"for the budget to decrease in this {total_steps}-step run; lower them (e.g. the fractions "
                "AdaLoRAConfig.t_init=0.1 and AdaLoRAConfig.t_final=0.2) or train longer"
            )


def _steps(value: int | float, total_steps: int) -> int:
    """Steps of a schedule field: an int as it is, a fraction of ``total_steps`` rounded up."""
    if isinstance(value, int):
        return value
    return math.ceil(round(value * total_steps, 6))


def _require(ok: bool, field: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"AdaLoRAConfig.{field}={value!r}: expected {rule}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings: AdamW with linear warm-up and linear decay, global-norm clipping
    (:func:`jax_adalora.training.adalora_optimizer`). Every field is checked when the config is built, so that a
    learning rate of NaN stops before a step is taken; each error names the field and the rule it broke."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        rules = (
            ("learning_rate", lambda v: v > 0, "a finite number > 0, e.g. 1e-3"),
            ("weight_decay", lambda v: v >= 0, "a finite number >= 0 (0: no decay)"),
            ("warmup_ratio", lambda v: 0 <= v < 1, "a fraction of the run in [0, 1), e.g. 0.06"),
            ("max_grad_norm", lambda v: v > 0, "a finite number > 0, e.g. 1.0"),
            ("b1", lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.9"),
            ("b2", lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.999"),
            ("eps", lambda v: v > 0, "a finite number > 0, e.g. 1e-8"),
        )
        for name, rule, expected in rules:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and rule(value)):
                raise ValueError(f"OptimConfig.{name}={value!r}: expected {expected}")

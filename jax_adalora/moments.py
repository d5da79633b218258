"""The statistics entry point: loss, gradient and gradient moments of any Flax NNX model with adapters.

:func:`value_grad_and_moments` is the one way to get what the rank allocator reads. It takes per-example
losses ``losses_fn(model, batch) -> (B,)`` and returns the mean loss over real examples, its gradient
over the ``wrt`` variables (an ``nnx.State``, as ``nnx.grad`` gives it, ready for
``nnx.Optimizer.update``) and :class:`jax_adalora.stats.Moments` of that gradient:

* ``statistics="per_example"``: exact ``E[g]``, ``E[g²]``, ``Var[g]`` over the batch's examples for the
  adapter factors (:class:`jax_adalora.adapters.AdaLoRAParam`), from ONE batch backward pass through
  zero-valued per-example probes (:func:`jax_adalora.adapters.probed_adapter`). Where an adapted layer
  does not see the batch as its input's leading axis, the probes cannot tell examples apart: the
  function logs one line and differentiates each example with ``jax.vmap`` instead (same moments,
  more time and memory).
* ``statistics="running"``: the batch gradient and EMA estimates over steps (:class:`RunningMoments`,
  :func:`jax_adalora.stats.running_moments`), ``ready`` from the second step on.
* ``statistics="batch"``: the batch gradient only (all that sensitivity and movement read); ``sq_mean`` and
  ``var`` are ``None``.

Passing the score (``score="gsnr"``, or a :class:`jax_adalora.scores.Score`) lets the score decide: the batch
gradient alone for a score that reads nothing else, ``statistics`` for one that reads second moments.

Variables in ``wrt`` that are not adapter factors (a task head, say) get their batch gradient as the
mean, with placeholder second moments (its square, and zero variance) in the per-example mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.adapters import (
    AdaLoRAParam,
    ProbeBatchAxisError,
    find_triplets,
    probes_to_triplet_layout,
    set_probes,
    zero_probes,
)
from jax_adalora.microbatch import batch_size_of, check_microbatch_size, value_and_grad_in_microbatches
from jax_adalora.scores import Score, statistics_for
from jax_adalora.stats import (
    STATISTICS,
    Moments,
    RunningMomentsState,
    batch_gradient_moments,
    float_dtype,
    moments_of_per_example_gradients,
    moments_of_probe_gradients,
    running_moments,
    running_moments_init,
)

PyTree = Any
# Running estimates give Var[g] = 0 after one step (no spread yet); the scores wait for the second step.
RUNNING_WARMUP_STEPS = 2

log = logging.getLogger(__name__)


class RunningStatistic(nnx.Variable):
    """EMA state of :class:`RunningMoments` (not trained, not an optimizer state)."""


class RunningMoments(nnx.Pytree):
    """EMAs over steps of the batch gradient and its square, for ``statistics="running"``.

    Args:
      model: the model whose ``wrt`` variables the estimates follow.
      wrt: the same filter as passed to :func:`value_grad_and_moments`.
      decay: EMA decay (``AdaLoRAConfig.running_decay``).

    :func:`value_grad_and_moments` updates it in place, inside ``nnx.jit`` as outside.
    """

    def __init__(self, model: nnx.Module, *, wrt: Any = AdaLoRAParam, decay: float = 0.9):
        init = running_moments_init(nnx.to_pure_dict(nnx.state(model, wrt)))
        self.decay = decay
        self.count = RunningStatistic(init.count)
        self.grad_ema = nnx.data(jax.tree.map(RunningStatistic, init.grad_ema))
        self.grad_sq_ema = nnx.data(jax.tree.map(RunningStatistic, init.grad_sq_ema))

    def update(self, batch_grad: PyTree, batch_size: jax.Array) -> Moments:
        """Takes this step's batch gradient (pure arrays, in ``nnx.to_pure_dict`` layout); returns the estimates."""
        state = RunningMomentsState(self.count.get_value(), _values(self.grad_ema), _values(self.grad_sq_ema))
        moments, state = running_moments(state, batch_grad, batch_size=batch_size, decay=self.decay)
        self.count.set_value(state.count)
        _set_values(self.grad_ema, state.grad_ema)
        _set_values(self.grad_sq_ema, state.grad_sq_ema)
        return moments._replace(ready=state.count >= RUNNING_WARMUP_STEPS)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _values(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda v: v.get_value(), tree, is_leaf=_is_variable)


def _set_values(tree: PyTree, values: PyTree) -> None:
    jax.tree.map(lambda v, x: v.set_value(x), tree, values, is_leaf=_is_variable)


def value_grad_and_moments(
    losses_fn: Callable[[nnx.Module, PyTree], jax.Array],
    model: nnx.Module,
    batch: PyTree,
    *,
    statistics: str = "per_example",
    score: str | Score | None = None,
    wrt: Any = AdaLoRAParam,
    mask: jax.Array | None = None,
    microbatch_size: int | None = None,
    running: RunningMoments | None = None,
    penalty_fn: Callable[[nnx.Module], jax.Array] | None = None,
    check_per_example: bool = False,
) -> tuple[jax.Array, nnx.State, Moments]:
    """``(loss, grads, moments)`` of the mean per-example loss over the real examples of ``batch``.

    Args:
      losses_fn: ``losses_fn(model, batch) -> (B,)`` per-example losses. It is called on a copy of
        ``model``, whose state it mutates is not written back: a model holding state that training mutates is
        refused with one line naming the module (an ``nnx.BatchNorm`` with ``use_running_average=False``, an
        ``nnx.Dropout`` holding its own ``rngs``, not deterministic), since its running statistics would never
        move and its dropout mask would repeat every step. Pass randomness in ``batch`` instead (per-example
        keys make dropout the same on every path: ``Dropout(rate, rngs=None)``, called with ``rngs=`` a key from
        the batch) and use ``use_running_average=True`` (or ``nnx.LayerNorm``). Any other state ``losses_fn``
        mutates is not written back either.
      model: a Flax NNX model with adapters (:func:`jax_adalora.adapters.inject_adapters`).
      batch: a pytree whose leaves share the leading example axis B.
      statistics: ``"per_example"``, ``"running"`` or ``"batch"`` (see the module docstring).
      score: the score the moments are for (a name or a :class:`jax_adalora.scores.Score`): when given, a score
        that reads only the gradient gets ``"batch"`` whatever ``statistics`` says
        (:func:`jax_adalora.scores.statistics_for`).
      wrt: filter of the variables to differentiate (e.g. ``nnx.Any(AdaLoRAParam, nnx.PathContains("head"))``),
        or the ``nnx.Optimizer`` the gradient is for (its own ``wrt``): the two must agree, since an optimizer whose
        ``wrt`` holds more than the gradient fails inside optax, before any of this library's code can say so.
      mask: (B,) weights, 1 for real examples and 0 for padding rows; ``None`` means all real.
      microbatch_size: differentiate in microbatches of this many examples (a divisor of B; ``None`` or 0
        for the whole batch): same results, smaller working set.
      running: the :class:`RunningMoments` to update, with ``statistics="running"`` only.
      penalty_fn: ``penalty_fn(model) -> scalar`` added to the loss and the gradient, e.g. AdaLoRA's
        orthogonal regularisation (:func:`jax_adalora.regularization.orthogonal_regularization_of_model`). It
        enters ``moments.mean`` only with ``statistics="batch"`` (sensitivity and movement score the training
        gradient, as AdaLoRA does); exact and running moments are the task loss's, since a term without
        sampling noise is no gradient statistic.

      check_per_example: with ``statistics="per_example"``, also differentiate each example alone (``jax.vmap``)
        and raise one line when its moments differ from the batch pass's (relative difference above 1e-3). Off
        by default: it costs a second, per-example differentiation. Outside ``jit`` it raises a ``ValueError``;
        inside, a host callback does (the error then reaches you as a ``JaxRuntimeError`` carrying the line).

    Per-example statistics assume that each example's loss depends on that example alone, and that the leading
    axis of every batch leaf is the example axis. A loss that couples examples (in-batch negatives, InfoNCE, a
    loss normalised over the batch) or a time-major ``(T, B, ...)`` batch gives ``E[g²]`` and ``Var[g]`` of
    something else, without any error; ``check_per_example=True`` tells, once, on a real batch.

    Returns:
      ``loss`` (scalar), ``grads`` (``nnx.State`` of the ``wrt`` variables) and ``moments``
      (:class:`jax_adalora.stats.Moments` with pure-array trees in the layout of ``nnx.to_pure_dict(grads)``).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import jax_adalora as jal
      >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
      >>> _ = jal.inject(model, jal.AdaLoRAConfig(r_init=4, r_target=2), targets=r"layers\\.0", rngs=nnx.Rngs(2))
      >>> batch = {"x": jnp.ones((5, 4)), "y": jnp.arange(5) % 3}
      >>> losses = lambda m, b: optax.softmax_cross_entropy_with_integer_labels(m(b["x"]), b["y"])
      >>> loss, grads, moments = jal.value_grad_and_moments(losses, model, batch)
      >>> moments.var["layers"][0]["lam"].shape
      (4,)
    """
    if statistics not in STATISTICS:
        raise ValueError(f"statistics={statistics!r}: expected one of {STATISTICS}")
    if isinstance(wrt, nnx.Optimizer):
        wrt = wrt.wrt
    _refuse_mutable_state(model)
    if score is not None:
        statistics = statistics_for(score, statistics)
    if check_per_example and statistics != "per_example":
        raise ValueError(f"check_per_example=True checks statistics='per_example', not {statistics!r}")
    if (statistics == "running") != (running is not None):
        raise ValueError("statistics='running' takes running=RunningMoments(model, wrt=...), and only it does")
    batch_size = batch_size_of(batch)
    check_microbatch_size(microbatch_size, batch_size)
    weights = jnp.ones((batch_size,), float_dtype()) if mask is None else jnp.asarray(mask).astype(float_dtype())
    count = jnp.maximum(jnp.sum(weights), 1.0)
    graphdef, adapters, others, rest = nnx.split(model, nnx.All(wrt, AdaLoRAParam), wrt, ...)
    parts = _Parts(graphdef, rest, losses_fn, count)
    data = {"batch": batch, "weights": weights}

    if statistics == "per_example" and adapters:
        try:
            loss, adapter_moments, other_grads = _probe_pass(parts, adapters, others, data, microbatch_size)
            if check_per_example:
                alone = _vmap_pass(parts, adapters, others, data, microbatch_size)[1]
                _check_agreement(adapter_moments[:3], alone[:3], ("E[g]", "E[g²]", "Var[g]"))
        except ProbeBatchAxisError as err:
            log.warning("value_grad_and_moments: %s; differentiating each example with jax.vmap instead", err)
            loss, adapter_moments, other_grads = _vmap_pass(parts, adapters, others, data, microbatch_size)
            if check_per_example:
                batch_grads = find_triplets(_batch_pass(parts, adapters, others, data, microbatch_size)[1])
                _check_agreement((adapter_moments.mean,), (batch_grads,), ("E[g]",))
        grads = _merged(_with_values(adapters, adapter_moments.mean), other_grads)
        other_moments = _placeholder_moments(nnx.to_pure_dict(other_grads))
        moments = Moments(
            *(
                _deep_merge(nnx.to_pure_dict(_with_values(adapters, a)), o)
                for a, o in zip(adapter_moments[:3], other_moments, strict=True)
            ),
            count=jnp.sum(weights),
        )
        return _with_penalty(parts, penalty_fn, adapters, others, loss, grads, moments, mean_too=False)

    loss, task_grads = _batch_pass(parts, adapters, others, data, microbatch_size)
    if statistics == "running":
        moments = running.update(nnx.to_pure_dict(task_grads), jnp.sum(weights))
        return _with_penalty(parts, penalty_fn, adapters, others, loss, task_grads, moments, mean_too=False)
    moments = batch_gradient_moments(nnx.to_pure_dict(task_grads), jnp.sum(weights))
    return _with_penalty(parts, penalty_fn, adapters, others, loss, task_grads, moments, mean_too=True)


PER_EXAMPLE_TOLERANCE = 1e-3


def _check_agreement(got: tuple, alone: tuple, names: tuple) -> None:
    """One line when two computations of the per-example moments differ (see ``check_per_example``)."""
    labels, diffs = [], []
    for name, a_tree, b_tree in zip(names, got, alone, strict=True):
        for path in a_tree:
            for leaf in a_tree[path]:
                a, b = a_tree[path][leaf], b_tree[path][leaf]
                scale = jnp.maximum(jnp.max(jnp.abs(a)), jnp.max(jnp.abs(b)))
                diffs.append(jnp.max(jnp.abs(a - b)) / jnp.maximum(scale, jnp.finfo(scale.dtype).tiny))
                labels.append(f"{name} of {path}.{leaf}")
    diffs = jnp.stack(diffs)

    def report(diffs):
        worst = int(np.argmax(diffs))
        if diffs[worst] > PER_EXAMPLE_TOLERANCE:
            raise ValueError(
                "value_grad_and_moments(check_per_example=True): the batch pass's per-example gradients differ "
                f"from each example differentiated alone (relative difference {float(diffs[worst]):.3g} in "
                f"{labels[worst]}): an example's loss depends on other examples (in-batch negatives, InfoNCE, batch "
                "normalisation) or the batch's leading axis is not the example axis (time-major?); per-example "
                "statistics assume neither: use statistics='batch' (a score that reads the gradient alone) or "
                "put the example axis first"
            )

    if isinstance(diffs, jax.core.Tracer):
        jax.debug.callback(report, diffs)
    else:
        report(np.asarray(diffs))


def _refuse_mutable_state(model: nnx.Module) -> None:
    """One line naming the first module whose state the differentiation would mutate on a copy and drop."""
    for path, module in nnx.iter_modules(model):
        name = ".".join(str(part) for part in path) or "the model"
        if isinstance(module, nnx.BatchNorm) and not module.use_running_average:
            raise ValueError(
                f"value_grad_and_moments: {name} is an nnx.BatchNorm with use_running_average=False, whose batch "
                "statistics it would update on a copy and drop: set use_running_average=True (or use nnx.LayerNorm)"
            )
        if isinstance(module, nnx.Dropout) and module.rngs is not None and not module.deterministic and module.rate:
            raise ValueError(
                f"value_grad_and_moments: {name} is an nnx.Dropout holding its own rngs, whose counter it would "
                "advance on a copy and drop (the same mask every step): build it with rngs=None and pass a key "
                "from the batch, dropout(x, rngs=batch_key)"
            )


def _placeholder_moments(grad: PyTree) -> tuple[PyTree, PyTree, PyTree]:
    """(mean, sq_mean, var) of variables without per-example gradients: the batch gradient, its square, zero."""
    return grad, jax.tree.map(jnp.square, grad), jax.tree.map(jnp.zeros_like, grad)


class _Parts:
    """What every pass needs to rebuild the model and weigh its losses."""

    def __init__(self, graphdef, rest, losses_fn, count):
        self.graphdef, self.rest, self.losses_fn, self.count = graphdef, rest, losses_fn, count

    def model(self, adapters, others) -> nnx.Module:
        # Fresh variables at the caller's trace level: an NNX transform inside the model (nnx.scan over layers
        # stacked with nnx.vmap) refuses variables created outside the function being differentiated.
        return nnx.merge(self.graphdef, adapters, others, self.rest, copy=True)

    def losses(self, model, batch, weights) -> jax.Array:
        losses = self.losses_fn(model, batch)
        if losses.shape != weights.shape:
            raise ValueError(
                f"losses_fn returned shape {losses.shape}: expected per-example losses of shape {weights.shape}"
            )
        return losses

    def total(self, model, data) -> jax.Array:
        """``sum_b w_b · loss_b / count``: the mean over real examples when ``data`` is the whole batch."""
        weights = data["weights"]
        losses = self.losses(model, data["batch"], weights)
        return jnp.sum(losses * weights.astype(losses.dtype)) / self.count.astype(losses.dtype)


def _batch_pass(parts: _Parts, adapters, others, data, microbatch_size):
    def total(trained, _, chunk):
        return parts.total(parts.model(*trained), chunk)

    loss, (grads, _) = value_and_grad_in_microbatches(total, (adapters, others), None, data, microbatch_size)
    return loss, _merged(*grads)


def _probe_pass(parts: _Parts, adapters, others, data, microbatch_size):
    """One batch backward pass; the probes' gradients hold each example's adapter gradient."""
    triplets = find_triplets(adapters)
    probes = zero_probes(triplets, data["weights"].shape[0])

    def total(others, probes, chunk):
        model = parts.model(adapters, others)
        set_probes(model, probes, every=False)
        return parts.total(model, chunk)

    loss, (other_grads, probe_grads) = value_and_grad_in_microbatches(total, others, probes, data, microbatch_size)
    moments = moments_of_probe_gradients(probe_grads, data["weights"])
    in_triplet_layout = Moments(*(probes_to_triplet_layout(tree) for tree in moments[:3]), count=moments.count)
    return loss, in_triplet_layout, other_grads


def _vmap_pass(parts: _Parts, adapters, others, data, microbatch_size):
    """Each example differentiated alone (``jax.vmap``, or ``jax.lax.map`` over microbatches)."""

    def example_loss(trained, example):
        one = jax.tree.map(lambda leaf: leaf[None], example)
        return parts.losses(parts.model(*trained), one, jnp.ones((1,), float_dtype()))[0]

    per_example = jax.value_and_grad(example_loss)
    size = check_microbatch_size(microbatch_size, data["weights"].shape[0])
    losses, (adapter_grads, other_grads) = jax.lax.map(
        lambda example: per_example((adapters, others), example), data["batch"], batch_size=size
    )
    weights = data["weights"]
    loss = jnp.sum(losses * weights.astype(losses.dtype)) / parts.count.astype(losses.dtype)
    moments = moments_of_per_example_gradients(find_triplets(adapter_grads), weights)
    other_mean = moments_of_per_example_gradients(other_grads, weights).mean  # XLA drops the unused moments
    return loss, moments, other_mean


def _with_penalty(parts: _Parts, penalty_fn, adapters, others, loss, grads, moments, *, mean_too: bool):
    if penalty_fn is None:
        return loss, grads, moments
    penalty, (adapter_grads, other_grads) = jax.value_and_grad(lambda a, o: penalty_fn(parts.model(a, o)), (0, 1))(
        adapters, others
    )
    penalty_grads = _merged(adapter_grads, other_grads)
    grads = jax.tree.map(jnp.add, grads, penalty_grads)
    if mean_too:
        moments = moments._replace(mean=jax.tree.map(jnp.add, moments.mean, nnx.to_pure_dict(penalty_grads)))
    return loss + penalty, grads, moments


# ---- between nnx.State and the triplet layout {module_path: {"P", "lam", "Q"}} ----------------------


def _module_path(path: tuple) -> str:
    return ".".join(str(part) for part in path[:-1])


def _with_values(state: nnx.State, triplets: dict[str, dict[str, jax.Array]]) -> nnx.State:
    """``state`` with each factor's value taken from ``triplets`` (same variable types)."""
    flat = [(path, variable.replace(triplets[_module_path(path)][str(path[-1])])) for path, variable in
            nnx.to_flat_state(state)]  # fmt: skip
    return nnx.from_flat_state(flat)


def _merged(*states: nnx.State) -> nnx.State:
    return nnx.merge_state(*states)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if key in out and isinstance(value, dict) else value
    return out

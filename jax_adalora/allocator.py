r"""The rank budget schedule, the masking rule, and the rank allocator as an optax transform.

Step numbering follows the reference (AdaLoRA's code and PEFT's ``update_and_allocate``): the
allocator sees ``t = 1, 2, ..., T``, the number of optimizer steps taken *including* the current
one, so the budget reaches its target exactly at ``t = T - t_final``.

Example:
  >>> import optax
  >>> from flax import nnx
  >>> import jax_adalora as jal
  >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.Linear(8, 4, rngs=nnx.Rngs(1)))
  >>> config = jal.AdaLoRAConfig(r_init=4, r_target=2, t_init=2, t_final=2)
  >>> jal.inject(model, config, targets=r"layers\.\d", rngs=nnx.Rngs(2))
  {'layers.0': 4, 'layers.1': 4}
  >>> tx = optax.chain(optax.adamw(1e-3), jal.rank_allocator(config, total_steps=10))  # last: it reads params
  >>> optimizer = nnx.Optimizer(model, tx, wrt=jal.AdaLoRAParam)
  >>> sum(len(kept) for kept in jal.rank_pattern(optimizer).values())  # r_init per matrix until masking
  8
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_adalora import scores as scores_lib
from jax_adalora.adapters import find_triplets, matrix_count, per_layer, split_key_path
from jax_adalora.config import AdaLoRAConfig
from jax_adalora.stats import Moments

PyTree = Any


# ---- budget schedule -----------------------------------------------------------------------------


class BudgetSchedule:
    """``schedule(step) -> (budget, mask_now)``, equal to PEFT's ``RankAllocator.budget_schedule``.

    The whole schedule is tabulated on the host once, with the reference's own float64 formula, so the
    integer budget matches PEFT's at every step (an fp32 evaluation of ``(1 - s)^3`` could truncate to
    a different integer). Inside ``jit`` a call is one table look-up; it also takes Python ints.
    """

    def __init__(self, init_budget: int, target_budget: int, t_init: int, t_final: int, total_steps: int, delta_t: int):
        self.init_budget, self.target_budget = int(init_budget), int(target_budget)
        self.t_init, self.t_final, self.total_steps = int(t_init), int(t_final), int(total_steps)
        self.delta_t = int(delta_t)
        if self.t_init >= self.total_steps - self.t_final:
            raise ValueError(
                f"t_init={t_init} must be < total_steps - t_final = {total_steps} - {t_final}: "
                "no steps are left for the budget to decrease"
            )
        steps = range(self.total_steps + 2)  # the last entry stands for every step past the end
        table = [self.reference(s) for s in steps]
        self.budgets = np.array([b for b, _ in table], np.int32)
        self.mask_now = np.array([m for _, m in table], np.bool_)

    def reference(self, step: int) -> tuple[int, bool]:
        """The schedule at one step, in plain Python float64 (the formula the table holds)."""
        if step <= self.t_init:
            return self.init_budget, False
        if step > self.total_steps - self.t_final:
            return self.target_budget, True
        mul_coeff = 1 - (step - self.t_init) / (self.total_steps - self.t_final - self.t_init)
        budget = int((self.init_budget - self.target_budget) * (mul_coeff**3) + self.target_budget)
        return budget, step % self.delta_t == 0

    def __call__(self, step) -> tuple[jax.Array, jax.Array]:
        index = jnp.clip(jnp.asarray(step, jnp.int32), 0, self.total_steps + 1)
        return jnp.asarray(self.budgets)[index], jnp.asarray(self.mask_now)[index]


def budget_schedule(
    init_budget: int, target_budget: int, t_init: int, t_final: int, total_steps: int, delta_t: int
) -> BudgetSchedule:
    """The cubic budget schedule of AdaLoRA: a function of the step returning ``(budget, mask_now)``.

    * ``t <= t_init``: ``budget = init_budget``, no masking (warm-up).
    * ``t > total_steps - t_final``: ``budget = target_budget``, mask every step (final phase).
    * otherwise ``budget = int(target + (init - target) * (1 - (t - t_init)/(T - t_final - t_init))^3)``,
      masking when ``t % delta_t == 0``.
    """
    return BudgetSchedule(init_budget, target_budget, t_init, t_final, total_steps, delta_t)


def reallocation_steps(*, t_init: int, t_final: int, total_steps: int, delta_t: int) -> list[int]:
    """Steps (1-based) on which :func:`rank_allocator` recomputes the rank pattern (when its scores are ready).

    Masking steps of the schedule before the freeze (``t_init < t < T - t_final``, ``t % delta_t == 0``),
    plus the freeze step ``T - t_final`` itself; after it the frozen pattern is only re-applied.
    """
    freeze = total_steps - t_final
    return [t for t in range(t_init + 1, freeze) if t % delta_t == 0] + [freeze]


# ---- masking -------------------------------------------------------------------------------------


def mask_to_budget(triplet_scores: dict[str, jax.Array], budget) -> dict[str, jax.Array]:
    """Keeps the ``budget`` highest-scoring triplets across all layers: ``{path: bool (r,)}`` (``(*stack, r)`` for a
    stacked adapter, each of whose layers competes in the same budget).

    PEFT's rule: with ``k = total - budget``, the threshold is the k-th smallest score and every
    triplet scoring ``<= threshold`` is masked (so ties at the threshold are all masked). ``k <= 0``
    keeps everything (where PEFT's ``kthvalue`` would raise).
    """
    flat = jnp.concatenate([jnp.ravel(s) for s in triplet_scores.values()])
    k = flat.shape[0] - jnp.asarray(budget, jnp.int32)
    ordered = jnp.sort(flat)
    threshold = jnp.where(k > 0, ordered[jnp.clip(k - 1, 0, flat.shape[0] - 1)], -jnp.inf)
    return {path: s > threshold for path, s in triplet_scores.items()}


# ---- the optax transform -------------------------------------------------------------------------


class RankAllocatorState(NamedTuple):
    """State of :func:`rank_allocator`."""

    count: jax.Array  # shape=(), int32: updates applied so far (the next step is count + 1)
    smoothing: Any  # scores_lib.SmoothingState (smoothed element scores) or, "pooled", scores_lib.PooledMoments
    keep: dict[str, jax.Array]  # the current rank pattern {path: bool (r,)}; frozen after T - t_final
    budget: jax.Array  # shape=(), int32: the budget of the latest mask; NON_FINITE_SCORES after NaN/inf scores


# RankAllocatorState.budget once a re-allocation met NaN or infinite triplet scores (the pattern is left as it was).
NON_FINITE_SCORES = -1


def check_score_output(name: str, element_scores: PyTree, weights: PyTree) -> None:
    """Raises ``ValueError`` naming the score when its output is not a tree of the weights' structure and shapes
    (one score per element of P, λ and Q); runs on abstract values, at tracing."""
    got, want = jax.tree.structure(element_scores), jax.tree.structure(weights)
    if got != want:
        raise ValueError(
            f"the score {name!r} returned a tree of another structure than the adapter weights it was given "
            f"({got.num_leaves} leaves, expected {want.num_leaves}: one per P, lam and Q of each adapted matrix); "
            "return a tree of the same structure and shapes, e.g. with jax.tree.map"
        )
    for (key_path, out), w in zip(
        jax.tree_util.tree_leaves_with_path(element_scores), jax.tree.leaves(weights), strict=True
    ):
        if jnp.shape(out) != jnp.shape(w):
            raise ValueError(
                f"the score {name!r} returned shape {tuple(jnp.shape(out))} for {jax.tree_util.keystr(key_path)}, "
                f"expected {tuple(jnp.shape(w))} (one score per element of the weight)"
            )


def rank_allocator(
    config: AdaLoRAConfig, total_steps: int, *, check_order: bool | None = None
) -> optax.GradientTransformationExtraArgs:
    """AdaLoRA's rank allocator, to be placed last in an ``optax.chain``.

    Each update: (1) forms the post-step adapter weights ``w = params + updates`` (the reference scores
    the weights after the optimizer step, with the gradient of that step); (2) until ``T - t_final``,
    updates the smoothed element scores ``s(w, moments)``; (3) on masking steps of the schedule, keeps
    the ``budget`` most important triplets and emits ``-λ`` for the others, so that their λ becomes 0;
    at ``t = T - t_final`` the rank pattern freezes and is re-applied every later step. Optimizer
    moments are left alone, so a masked triplet can regrow before the next masking step, as in the
    reference. Everything runs inside the jitted update: no host round trip.

    The triplets are found by name in ``params``: every node with the three children ``P``, ``lam`` and
    ``Q`` (the factors of an adapter, :class:`jax_adalora.adapters.SVDAdapter`) is one adapted matrix, named by
    its '.'-joined path, or, with leading layer axes (a stacked layer: ``lam`` (L, r)), L adapted matrices,
    each ranked in the one global budget as if it were a layer of its own; every other leaf (e.g. a task head)
    passes through. So it works on the
    ``nnx.State`` that ``nnx.Optimizer(model, tx, wrt=...)`` hands to optax, and on plain nested dicts.

    Placed anywhere but last (``optax.chain(rank_allocator(...), optax.adamw(...))``), the ``-λ`` it emits would
    be rescaled by the optimizer after it: the pattern it reports would keep triplets whose λ is not 0. It checks
    this from what it sees: at the first update, updates for λ that are the raw gradient (``moments.mean``) mean
    that no optimizer ran before it; from ``T - t_final`` on, a λ it masked at the previous update that is not
    exactly 0 in ``params`` means that something after it changed its update. Either is an error, one line.

    Args:
      config: the AdaLoRA config (score, smoothing, β1, β2, r_target, schedule fields, gsnr_eps).
      total_steps: T, the total number of optimizer steps of the run.
      check_order: ``None`` (default): the check above raises when ``update`` runs outside ``jit`` (concrete
        values, free); inside ``jit`` nothing is checked. ``True``: inside ``jit`` too, through a host callback
        (a host round trip each step; the error then reaches you as a ``JaxRuntimeError`` carrying the line).
        ``False``: never.

    Raises:
      ValueError: the score reads second moments and ``config.statistics`` is ``"batch"`` (here), or the
        moments passed to ``update`` carry none (at the first update), or the allocator is not last in the chain
        (see ``check_order``).

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update(updates, state, params, *, moments,
      update_scores=True)`` needs ``params`` and the gradient ``moments`` (a
      :class:`jax_adalora.stats.Moments` over a tree with the same triplet paths, e.g. from
      :func:`jax_adalora.moments.value_grad_and_moments`). Scores are left as they are on a step whose
      ``moments.ready`` or ``update_scores`` (bools or traced bools) is false, e.g. while running estimates
      warm up.
    """
    config = config.for_run(total_steps)  # t_init / t_final given as fractions become steps
    score = scores_lib.get(config.score, gsnr_eps=config.gsnr_eps)
    if score.reads_moments and config.statistics == "batch":
        raise ValueError(
            f"AdaLoRAConfig.score={score.name!r} reads E[g²] or Var[g], which AdaLoRAConfig.statistics='batch' does "
            "not compute: use statistics='per_example' (exact) or 'running' (estimates)"
        )
    freeze_step = total_steps - config.t_final

    def init_fn(params):
        triplets = find_triplets(params)
        if not triplets:
            raise ValueError("rank_allocator found no adapter triplets (nodes with P, lam and Q) in params")
        keep = {path: jnp.ones(t["lam"].shape, jnp.bool_) for path, t in triplets.items()}
        init_budget = sum(int(t["lam"].size) for t in triplets.values())
        pooled = config.smoothing == "pooled"
        return RankAllocatorState(
            count=jnp.zeros((), jnp.int32),
            smoothing=scores_lib.pooled_init(triplets) if pooled else scores_lib.smoothing_init(triplets),
            keep=keep,
            budget=jnp.asarray(init_budget, jnp.int32),
        )

    def update_fn(updates, state, params=None, *, moments: Moments, update_scores=True, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("rank_allocator needs params: call tx.update(updates, state, params, moments=...)")
        triplets, triplet_updates = find_triplets(params), find_triplets(updates)
        schedule = _schedule_for(config, triplets, total_steps)
        step = state.count + 1
        if score.reads_moments and (moments.sq_mean is None or moments.var is None):
            raise ValueError(
                f"rank_allocator: the score {score.name!r} reads E[g²] or Var[g], but the moments carry the batch "
                "gradient alone (statistics='batch'): compute them with value_grad_and_moments(..., "
                "statistics='per_example' or 'running'), or pass score= and it chooses"
            )
        grads = Moments(*(None if tree is None else find_triplets(tree) for tree in moments[:3]), count=moments.count)
        if check_order is not False:
            _check_last_in_chain(triplets, triplet_updates, grads.mean, state, freeze_step, traced_too=check_order)
        new_weights = optax.apply_updates(triplets, triplet_updates)

        scorable = jnp.asarray(update_scores) & jnp.asarray(moments.ready)
        scoring = (step < freeze_step) & scorable
        if config.smoothing == "pooled":  # pool the moments, then score the pool (see jax_adalora.scores)
            # The freeze step's re-allocation pools its own batch too: the pool it would otherwise rank is empty
            # when the previous re-allocation was the step before, and an empty pool scores every triplet 0.
            pooling = (step <= freeze_step) & scorable
            pooled = scores_lib.pool(state.smoothing, grads)
            smoothing = jax.tree.map(lambda a, b: jnp.where(pooling, a, b), pooled, state.smoothing)
            element_scores = score(new_weights, scores_lib.pooled_moments(smoothing, with_second=score.reads_moments))
            check_score_output(score.name, element_scores, new_weights)  # at tracing: once per compilation
            ranked = element_scores
        else:
            element_scores = score(new_weights, grads)
            check_score_output(score.name, element_scores, new_weights)  # before anything else reads it
            smoothed = scores_lib.smooth(
                config.smoothing,
                state.smoothing,
                element_scores,
                beta1=config.beta1,
                beta2=config.beta2,
            )
            smoothing = jax.tree.map(lambda a, b: jnp.where(scoring, a, b), smoothed, state.smoothing)
            ranked = scores_lib.smoothed_score(config.smoothing, smoothing)

        budget, mask_now = schedule(step)
        reallocate = (mask_now & scoring) | (step == freeze_step)
        if config.smoothing == "pooled":  # an empty pool (no scored step since the last) has nothing to rank
            reallocate = reallocate & (smoothing.count > 0)
        importance = scores_lib.triplet_importance(ranked)
        fresh_keep = mask_to_budget(importance, budget)
        # NaN or inf importance would mask every triplet: the pattern is kept instead and the state's budget
        # becomes NON_FINITE_SCORES for good, for the caller to stop on (see RankAllocatorState.budget).
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in importance.values()]))
        failed = (state.budget == NON_FINITE_SCORES) | (reallocate & ~finite)
        reallocate = reallocate & ~failed
        keep = {path: jnp.where(reallocate, fresh_keep[path], state.keep[path]) for path in state.keep}
        if config.smoothing == "pooled":  # a re-allocation empties the pool
            smoothing = jax.tree.map(lambda x: jnp.where(reallocate, jnp.zeros_like(x), x), smoothing)
        apply_mask = reallocate | (step > freeze_step)

        def masked(key_path, update, param):
            path, leaf = split_key_path(key_path)
            if leaf != "lam" or path not in keep:
                return update
            return jnp.where(apply_mask & ~keep[path], -param, update)

        updates = jax.tree_util.tree_map_with_path(masked, updates, params)
        new_state = RankAllocatorState(
            count=step,
            smoothing=smoothing,
            keep=keep,
            budget=jnp.where(failed, NON_FINITE_SCORES, jnp.where(reallocate, budget, state.budget)).astype(jnp.int32),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


ORDER_MESSAGE = (
    "rank_allocator must be the last transform of the optax chain (e.g. optax.chain(optax.adamw(...), "
    "jal.rank_allocator(...))): {why}, so the rank pattern it reports is not the model's"
)


def _check_last_in_chain(triplets, triplet_updates, grad_mean, state, freeze_step, *, traced_too) -> None:
    """Raises one line when the updates show that the allocator is not last in the chain (see rank_allocator)."""
    first = state.count == 0
    raw = [
        jnp.all(triplet_updates[p]["lam"] == grad_mean[p]["lam"]) & jnp.any(grad_mean[p]["lam"] != 0)
        for p in triplets
        if p in grad_mean and p in triplet_updates
    ]
    raw_gradient = first & (jnp.all(jnp.stack(raw)) if raw else False)
    masked_left = [jnp.any(~state.keep[p] & (triplets[p]["lam"] != 0)) for p in triplets if p in state.keep]
    regrown = (state.count >= freeze_step) & jnp.any(jnp.stack(masked_left))

    def report(raw_gradient, regrown):
        if raw_gradient:
            raise ValueError(ORDER_MESSAGE.format(why="its first update received the raw gradient of λ"))
        if regrown:
            raise ValueError(
                ORDER_MESSAGE.format(why="λ of triplets it masked at the previous update are not 0 in params")
            )

    if isinstance(raw_gradient, jax.core.Tracer) or isinstance(regrown, jax.core.Tracer):
        if traced_too:
            jax.debug.callback(report, raw_gradient, regrown)
        return
    report(bool(raw_gradient), bool(regrown))


def _schedule_for(config: AdaLoRAConfig, triplets: PyTree, total_steps: int) -> BudgetSchedule:
    # A stacked adapter (λ of shape (L, r)) is L adapted matrices, each r_target triplets of the target budget.
    init_budget = sum(int(t["lam"].size) for t in triplets.values())
    target_budget = config.r_target * sum(matrix_count(t["lam"].shape) for t in triplets.values())
    return budget_schedule(init_budget, target_budget, config.t_init, config.t_final, total_steps, config.delta_t)


def find_allocator_state(opt_state) -> RankAllocatorState:
    """The :class:`RankAllocatorState` inside a (possibly nested) optax state, or inside an ``nnx.Optimizer``."""
    if isinstance(opt_state, nnx.Optimizer):
        opt_state = nnx.as_pure(opt_state.opt_state)
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, RankAllocatorState))
        if isinstance(s, RankAllocatorState)
    ]
    if len(found) != 1:
        raise ValueError(f"expected exactly one RankAllocatorState in the optimizer state, found {len(found)}")
    return found[0]


def rank_pattern(state) -> dict[str, list[bool]]:
    """The current rank pattern ``{module_path: [kept, ...]}`` as plain Python lists (PEFT's ``rank_pattern``
    format), from a :class:`RankAllocatorState`, an optax state holding one, or an ``nnx.Optimizer``.

    Each layer of a stacked adapter (created under ``nnx.vmap``) has its own entry, ``"<module path>[i]"``
    (:func:`jax_adalora.adapters.layer_name`), e.g. ``"layers.attn.q_proj[3]"``.

    Before ``T - t_final`` the pattern is an intermediate one, above the target budget: see
    :func:`allocation_status`."""
    if not isinstance(state, RankAllocatorState):
        state = find_allocator_state(state)
    return {path: [bool(v) for v in np.asarray(keep)] for path, keep in per_layer(state.keep).items()}


class AllocationStatus(NamedTuple):
    """Where the rank allocation of a run stands (:func:`allocation_status`)."""

    step: int  # updates applied so far
    final_step: int  # T - t_final: the step from which the pattern is frozen at the target budget
    kept: int  # triplets kept by the current pattern
    target: int  # the target budget, r_target x adapted matrices
    done: bool  # step >= final_step: the pattern is final and holds the target budget

    def __str__(self) -> str:
        if self.done:
            return (
                f"rank allocation done: {self.kept} triplets kept (target {self.target}) since step {self.final_step}"
            )
        return (
            f"rank allocation not done: step {self.step} of the schedule's {self.final_step}, {self.kept} triplets "
            f"kept, target {self.target}; the pattern is final from step {self.final_step} on"
        )


def allocation_status(state, config: AdaLoRAConfig, total_steps: int) -> AllocationStatus:
    """Whether the allocator has reached its target budget: a run stopped before ``T - t_final`` keeps more
    triplets than the budget, and :func:`rank_pattern` (which says what the pattern *is*) does not tell.

    Args:
      state: an ``nnx.Optimizer``, an optax state holding a :class:`RankAllocatorState`, or that state.
      config, total_steps: the two arguments given to :func:`rank_allocator` (the optimizer state holds no
        schedule).
    """
    if not isinstance(state, RankAllocatorState):
        state = find_allocator_state(state)
    final_step = total_steps - config.for_run(total_steps).t_final
    step = int(state.count)
    kept = int(sum(int(np.sum(np.asarray(keep))) for keep in state.keep.values()))
    target = config.r_target * sum(matrix_count(keep.shape) for keep in state.keep.values())
    return AllocationStatus(step, final_step, kept, target, step >= final_step)


def ranks(state) -> dict[str, int]:
    """Kept triplets per adapted matrix (same arguments as :func:`rank_pattern`)."""
    return {path: sum(keep) for path, keep in rank_pattern(state).items()}

"""Gradient statistics over examples: exact per-example moments and cheap running estimates.

Both return :class:`Moments` for the same quantities, so scores take either:

* ``mean``    ``E[g]``  — the mean of the per-example gradients (= the batch gradient of a mean loss).
* ``sq_mean`` ``E[g²]`` — the mean of the element-wise squared per-example gradients.
* ``var``     ``Var[g] = E[(g - E[g])²]`` — the *biased* (population, divide-by-n) variance over
  examples. The exact moments compute it in two passes (deviations from the mean), not as
  ``E[g²] - E[g]²``, which cancels catastrophically in float32 where ``|E[g]|`` dominates the spread.

Expectations are over the examples of the current mini-batch for :func:`moments_of_probe_gradients` and
over a window of recent steps for :func:`running_moments`. The entry point that computes them for a model
is :func:`jax_adalora.moments.value_grad_and_moments`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


# How the gradient statistics are computed: exact over the batch's examples, EMA estimates over steps, or the
# batch gradient alone (no second moments). The one list of modes; AdaLoRAConfig.statistics takes these.
STATISTICS = ("per_example", "running", "batch")


class Moments(NamedTuple):
    """First and second moments of the gradient over examples, one leaf per parameter leaf."""

    mean: PyTree  # E[g]
    sq_mean: PyTree  # E[g^2]; None with statistics="batch"
    var: PyTree  # E[g^2] - E[g]^2 (population variance), >= 0; None with statistics="batch"
    count: jax.Array  # shape=(), float: examples averaged over (per-example) or steps seen (running)
    ready: Any = True  # bool, or shape=() bool: False while running estimates warm up (scores wait)


def float_dtype() -> jnp.dtype:
    """float64 under ``jax_enable_x64``, else float32: the dtype of example weights and normalisers."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _per_row(weights: jax.Array, x: jax.Array) -> jax.Array:
    """``weights`` (B,) shaped to broadcast against ``x`` (B, ...), in ``x``'s dtype."""
    return weights.reshape(weights.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def moments_of_per_example_gradients(grads: PyTree, weights: jax.Array) -> Moments:
    """``Moments`` over the leading (example) axis of ``grads``, each example weighted by ``weights`` (B,),
    1 for real examples and 0 for padding; ``E[(g - E[g])²]`` in two passes."""
    count = jnp.maximum(jnp.sum(weights), 1.0)

    def mean(g):
        return jnp.sum(_per_row(weights, g) * g, axis=0) / count.astype(g.dtype)

    first = jax.tree.map(mean, grads)
    return Moments(
        mean=first,
        sq_mean=jax.tree.map(lambda g: mean(g * g), grads),
        var=jax.tree.map(lambda g, m: mean(jnp.square(g - m)), grads, first),
        count=jnp.sum(weights),
    )


def moments_of_probe_gradients(probe_grads: PyTree, weights: jax.Array) -> Moments:
    """``Moments`` from the probes' gradients of ``sum_b weights[b] · loss_b / count``, where
    ``count = max(sum(weights), 1)``.

    That gradient holds ``weights[b] / count · g_b`` in row b of each leaf (see
    :func:`jax_adalora.adapters.probed_adapter`), however the sum was differentiated: in one pass or in
    microbatches whose probe gradients were stacked back into (B, ...).
    """
    count = jnp.maximum(jnp.sum(weights), 1.0)
    # sum_i probe_grad_i = mean of g and count * probe_grad_i = w_i g_i.
    # With 0/1 weights, w_i (g_i - m)² = (w_i g_i - w_i m)²: the two-pass variance over real examples.
    mean = jax.tree.map(lambda g: jnp.sum(g, axis=0), probe_grads)
    sq_mean = jax.tree.map(lambda g: jnp.sum(jnp.square(g * count), axis=0) / count, probe_grads)
    var = jax.tree.map(
        lambda g, m: jnp.sum(jnp.square(g * count - _per_row(weights, g) * m), axis=0) / count, probe_grads, mean
    )
    return Moments(mean=mean, sq_mean=sq_mean, var=var, count=jnp.sum(weights))


def batch_gradient_moments(grad: PyTree, count: jax.Array | float) -> Moments:
    """``Moments`` carrying only a batch gradient (what sensitivity, movement and magnitude read).

    ``sq_mean`` and ``var`` are ``None``: one batch gradient has no spread to estimate, and a score that reads
    them is refused by the allocator rather than fed a placeholder.
    """
    return Moments(mean=grad, sq_mean=None, var=None, count=jnp.asarray(count, float_dtype()))


class RunningMomentsState(NamedTuple):
    """EMAs over steps of the batch-mean gradient ``ḡ`` and of its square ``ḡ²``."""

    count: jax.Array  # shape=(), int32: steps accumulated
    grad_ema: PyTree  # EMA of ḡ_t
    grad_sq_ema: PyTree  # EMA of ḡ_t²


def running_moments_init(params: PyTree) -> RunningMomentsState:
    def zeros():  # distinct buffers, so that a donated state holds no buffer twice
        return jax.tree.map(lambda p: jnp.zeros_like(p, jnp.promote_types(p.dtype, jnp.float32)), params)

    return RunningMomentsState(count=jnp.zeros((), jnp.int32), grad_ema=zeros(), grad_sq_ema=zeros())


def running_moments(
    state: RunningMomentsState,
    batch_grad: PyTree,
    *,
    batch_size: int | jax.Array,
    decay: float = 0.9,
) -> tuple[Moments, RunningMomentsState]:
    """Estimates ``Moments`` from batch-mean gradients alone, by EMAs over steps.

    For a batch of B examples drawn from a gradient distribution with mean μ and variance σ²,
    ``E[ḡ] = μ`` and ``E[ḡ²] = μ² + σ²/B``. With bias-corrected EMAs ``m ≈ E[ḡ]`` and
    ``u ≈ E[ḡ²]`` over recent steps the estimators are

    * ``E[g]   ≈ m``
    * ``Var[g] ≈ B · max(u - m², 0)``   (the spread of batch means, scaled up by B)
    * ``E[g²]  ≈ m² + Var[g]``          (= ``u + (B - 1)(u - m²)``)

    They assume μ and σ² drift slowly over the EMA window (``1 / (1 - decay)`` steps); drift inflates
    the variance. After one step ``Var[g]`` is 0: the estimator needs a few steps to warm up.

    Args:
      state: from :func:`running_moments_init` or the previous call.
      batch_grad: this step's gradient of the mean loss.
      batch_size: B, the number of examples the gradient averages over.
      decay: EMA decay.

    Returns:
      ``(Moments, new_state)``; ``Moments.count`` is the number of steps seen.
    """
    count = state.count + 1
    grad_ema = jax.tree.map(lambda e, g: decay * e + (1 - decay) * g, state.grad_ema, batch_grad)
    grad_sq_ema = jax.tree.map(lambda e, g: decay * e + (1 - decay) * g * g, state.grad_sq_ema, batch_grad)
    correction = 1.0 / (1.0 - decay ** count.astype(float_dtype()))
    mean = jax.tree.map(lambda e: e * correction, grad_ema)
    batch_size = jnp.asarray(batch_size, float_dtype())
    var = jax.tree.map(lambda u, m: batch_size * jnp.maximum(u * correction - m * m, 0.0), grad_sq_ema, mean)
    sq_mean = jax.tree.map(lambda m, v: m * m + v, mean, var)
    new_state = RunningMomentsState(count=count, grad_ema=grad_ema, grad_sq_ema=grad_sq_ema)
    return Moments(mean=mean, sq_mean=sq_mean, var=var, count=count.astype(float_dtype())), new_state

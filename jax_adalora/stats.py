"""Gradient statistics over examples: exact per-example moments and cheap running estimates.

Both return :class:`Moments` for the same quantities, so scores take either:

* ``mean``    ``E[g]``  — the mean of the per-example gradients (= the batch gradient of a mean loss).
* ``sq_mean`` ``E[g²]`` — the mean of the element-wise squared per-example gradients.
* ``var``     ``Var[g] = E[(g - E[g])²]`` — the *biased* (population, divide-by-n) variance over
  examples. The exact moments compute it in two passes (deviations from the mean), not as
  ``E[g²] - E[g]²``, which cancels catastrophically in float32 where ``|E[g]|`` dominates the spread.

Expectations are over the examples of the current mini-batch for :func:`per_example_moments` (any
per-example loss, through ``jax.vmap``) and :func:`per_example_moments_of_probes` (one batch backward pass,
what the training step uses), and over a window of recent steps for :func:`running_moments`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class Moments(NamedTuple):
    """First and second moments of the gradient over examples, one leaf per parameter leaf."""

    mean: PyTree  # E[g]
    sq_mean: PyTree  # E[g^2]
    var: PyTree  # E[g^2] - E[g]^2 (population variance), >= 0
    count: jax.Array  # shape=(), float32: examples averaged over (per-example) or steps seen (running)


def _per_row(weights: jax.Array, x: jax.Array) -> jax.Array:
    """``weights`` (B,) shaped to broadcast against ``x`` (B, ...), in ``x``'s dtype."""
    return weights.reshape(weights.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def per_example_moments(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    batch: PyTree,
    *args,
    mask: jax.Array | None = None,
) -> Moments:
    """Exact ``E[g]``, ``E[g²]``, ``Var[g]`` over the examples of ``batch``.

    Per-example gradients come from ``jax.vmap(jax.grad(loss_fn))``; only their mean and mean of
    squares are kept, so under ``jax.jit`` XLA fuses the reduction. With ``batch`` sharded over
    devices along its leading axis, the means become cross-device reductions inside the same program.

    Args:
      loss_fn: ``loss_fn(params, example, *args) -> scalar`` for ONE example (no batch axis).
      params: the parameters to differentiate (e.g. the triplet pytree).
      batch: a pytree whose leaves have a leading batch axis B.
      *args: passed unchanged (not vmapped) to ``loss_fn``, e.g. frozen weights or a step key.
      mask: optional (B,) weights, 1 for real examples and 0 for padding rows; moments average over
        real examples only.

    Returns:
      ``Moments`` with ``count`` the number of (real) examples.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda w, ex: 0.5 * (ex["x"] @ w - ex["y"]) ** 2
      >>> batch = {"x": jnp.ones((4, 3)), "y": jnp.arange(4.0)}
      >>> m = per_example_moments(loss, jnp.zeros(3), batch)
      >>> m.mean.shape, float(m.count)
      ((3,), 4.0)
    """
    return per_example_value_and_moments(loss_fn, params, batch, *args, mask=mask)[1]


def per_example_value_and_moments(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    batch: PyTree,
    *args,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, Moments]:
    """Like :func:`per_example_moments`, also returning the mean loss over (real) examples."""
    losses, grads = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0) + (None,) * len(args))(params, batch, *args)
    batch_size = losses.shape[0]
    weights = jnp.ones((batch_size,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    count = jnp.sum(weights)
    inv = 1.0 / jnp.maximum(count, 1.0)

    def weighted_mean(x):
        return jnp.sum(_per_row(weights, x) * x, axis=0) * inv.astype(x.dtype)

    mean = jax.tree.map(weighted_mean, grads)
    sq_mean = jax.tree.map(lambda g: weighted_mean(g * g), grads)
    var = jax.tree.map(lambda g, m: weighted_mean(jnp.square(g - m)), grads, mean)
    return weighted_mean(losses), Moments(mean=mean, sq_mean=sq_mean, var=var, count=count)


def per_example_moments_of_probes(
    losses_fn: Callable[..., jax.Array],
    probes: PyTree,
    shared: PyTree,
    *args,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, Moments, PyTree]:
    """Exact per-example moments from ONE batch backward pass, through zero-valued per-example probes.

    ``probes`` has one zero perturbation per example (a leading batch axis B) of the parameters whose
    moments are wanted, and example b's loss depends on them only as ``params + probes[b]``. The gradient
    of the summed losses with respect to ``probes[b]`` is then example b's own gradient, so the loss is
    differentiated once for the batch, without ``vmap``. (The adapters compute these gradients in their
    backward pass without forming per-example copies: :func:`jax_adalora.adapters.probed_adapter`.)
    ``shared`` (e.g. a task head) gets only its batch gradient, from the same pass.

    Args:
      losses_fn: ``losses_fn(probes, shared, *args) -> (B,)`` per-example losses of the batch.
      probes: zero arrays with a leading batch axis B (the moments come back in their layout, without it).
      shared: parameters that get their batch gradient only.
      *args: passed unchanged to ``losses_fn`` (the parameters themselves, the batch, frozen weights, a key).
      mask: optional (B,) weights, 1 for real examples and 0 for padding rows; everything averages over
        real examples only.

    Returns:
      ``(mean loss, Moments in the probes' layout, batch gradient of shared)``, averaged over real examples.
    """
    batch_size = jax.tree.leaves(probes)[0].shape[0]
    weights = jnp.ones((batch_size,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)

    def total(probes, shared):
        return jnp.sum(losses_fn(probes, shared, *args) * weights) / count

    loss, (probe_grads, shared_grad) = jax.value_and_grad(total, argnums=(0, 1))(probes, shared)
    return loss, moments_of_probe_gradients(probe_grads, weights), shared_grad


def moments_of_probe_gradients(probe_grads: PyTree, weights: jax.Array) -> Moments:
    """``Moments`` from the probes' gradients of ``sum_b weights[b] · loss_b / count``, where
    ``count = max(sum(weights), 1)``.

    That gradient holds ``weights[b] / count · g_b`` in row b of each leaf (see
    :func:`per_example_moments_of_probes`), however the sum was differentiated: in one pass or in
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
    """``Moments`` carrying only a batch gradient (what sensitivity and movement read).

    ``sq_mean`` is the square of the batch gradient and ``var`` is zero: placeholders of the right
    shape, not estimates; use :func:`per_example_moments` or :func:`running_moments` when a score needs
    second moments.
    """
    return Moments(
        mean=grad,
        sq_mean=jax.tree.map(jnp.square, grad),
        var=jax.tree.map(jnp.zeros_like, grad),
        count=jnp.asarray(count, jnp.float32),
    )


class RunningMomentsState(NamedTuple):
    """EMAs over steps of the batch-mean gradient ``ḡ`` and of its square ``ḡ²``."""

    count: jax.Array  # shape=(), int32: steps accumulated
    grad_ema: PyTree  # EMA of ḡ_t
    grad_sq_ema: PyTree  # EMA of ḡ_t²


def running_moments_init(params: PyTree) -> RunningMomentsState:
    def zeros():  # distinct buffers, so that a donated state holds no buffer twice
        return jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params)

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
    correction = 1.0 / (1.0 - decay ** count.astype(jnp.float32))
    mean = jax.tree.map(lambda e: e * correction, grad_ema)
    batch_size = jnp.asarray(batch_size, jnp.float32)
    var = jax.tree.map(lambda u, m: batch_size * jnp.maximum(u * correction - m * m, 0.0), grad_sq_ema, mean)
    sq_mean = jax.tree.map(lambda m, v: m * m + v, mean, var)
    new_state = RunningMomentsState(count=count, grad_ema=grad_ema, grad_sq_ema=grad_sq_ema)
    return Moments(mean=mean, sq_mean=sq_mean, var=var, count=count.astype(jnp.float32)), new_state

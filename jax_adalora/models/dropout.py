"""Dropout with one key per example.

Each example in a batch draws its own mask from its own key, and each dropout site folds in a
fixed site id. A batch forward and a per-example forward (batch of one inside ``jax.vmap``) with the
same per-example keys therefore see the same masks, so per-example gradients average exactly to the
batch gradient, dropout on.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def example_keys(step_key: jax.Array, example_index: jax.Array) -> jax.Array:
    """Per-example keys folded from the step key and each example's index in the batch. (B,) -> (B, key)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, example_index)


# Masks come from a keyed counter hash rather than ``jax.random.bernoulli``. On CPU, threefry costs about
# 13 ns per element (XLA splits it into four full-size passes), which made dropout a third of the MiniLM
# training step (docs/PERFORMANCE.md); the hash costs under 1 ns (scripts/bench_dropout.py). Each (example, site)
# mask draws a 64-bit seed from threefry, then element ``i`` gets ``mix(mix(i ^ s0) + s1)``: ``mix`` is a
# bijection on uint32 (the "lowbias32" xorshift-multiply finaliser), so the words of one mask are distinct
# and every bit depends on every bit of ``i`` and of both seed words.
_MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)


def _mix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_MIX_MULTIPLIERS[0])
    h = h ^ (h >> 15)
    h = h * jnp.uint32(_MIX_MULTIPLIERS[1])
    return h ^ (h >> 16)


def hashed_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 words of ``shape`` from one key: a threefry seed, then a counter hash per element."""
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"a dropout mask holds at most 2**32 - 1 elements per example, got shape {shape}")
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _mix32(_mix32(counter ^ seed[0]) + seed[1])


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask, each element kept with probability ``1 - rate`` (to within 2**-32)."""
    threshold = min(round(rate * 2**32), 2**32 - 1)
    return hashed_bits(key, shape) >= jnp.uint32(threshold)


def dropout(x: jax.Array, rate: float, keys: jax.Array | None, site: int) -> jax.Array:
    """Inverted dropout on ``x`` (B, ...), one mask per example from ``keys`` (B, key).

    ``keys=None`` or ``rate == 0`` means deterministic (evaluation).
    """
    if keys is None or rate == 0.0:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    keep = 1.0 - rate

    def one(key, xi):
        mask = keep_mask(jax.random.fold_in(key, site), rate, xi.shape)
        return jnp.where(mask, xi / keep, jnp.zeros_like(xi))

    return jax.vmap(one)(keys, x)

"""Dropout with one key per example, and one key per step for tensors the whole batch shares.

Each example in a batch draws its own mask from its own key, and each dropout site folds in a
fixed site id. A batch forward and a per-example forward (batch of one inside ``jax.vmap``) with the
same per-example keys therefore see the same masks, so per-example gradients average exactly to the
batch gradient, dropout on.

A few dropout sites act on a tensor with no batch axis: DeBERTa's relative-position table, which
transformers drops out once per forward pass for the whole batch. :func:`shared_dropout` draws that
mask from the step key (:class:`DropoutKeys` carries it next to the per-example keys); inside a
per-example ``jax.vmap`` the step key stays unbatched, so every example sees the batch's mask, and
the table's projections run once per step instead of once per example.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# ``fold_in`` data for the shared key: example indices are batch positions, far below it.
_SHARED_KEY_TAG = 2**32 - 1


def example_keys(step_key: jax.Array, example_index: jax.Array) -> jax.Array:
    """Per-example keys folded from the step key and each example's index in the batch. (B,) -> (B, key)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, example_index)


class DropoutKeys(NamedTuple):
    """What a model's ``dropout_keys`` argument holds: ``examples`` (B,) keys and one ``shared`` key."""

    examples: jax.Array
    shared: jax.Array


def dropout_keys(step_key: jax.Array, example_index: jax.Array) -> DropoutKeys:
    """The keys of one training step: one per example (:func:`example_keys`) and one for the batch.

    ``step_key`` must be unbatched; ``example_index`` (B,) holds each example's index in the batch, so
    a per-example forward inside ``jax.vmap`` (index of shape (1,)) gets the batch forward's keys.
    """
    shared = jax.random.fold_in(step_key, _SHARED_KEY_TAG)
    return DropoutKeys(example_keys(step_key, example_index), shared)


# Masks come from a keyed counter hash rather than ``jax.random.bernoulli``. On CPU, threefry costs about
# 13 ns per element (XLA splits it into four full-size passes), which made dropout a third of the MiniLM
# training step; the hash costs under 1 ns (one 32 x 12 x 128 x 128 attention-probability site: 74.1 -> 3.6 ms
# forward; docs/performance.md, "What changed the numbers"). Each (example, site) mask draws a 64-bit seed
# from threefry, then element ``i`` gets ``mix(mix(i ^ s0) + s1)``: ``mix`` is a bijection on uint32 (the
# "lowbias32" xorshift-multiply finaliser), so the words of one mask are distinct and every bit depends on
# every bit of ``i`` and of both seed words.
_MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)


def _mix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_MIX_MULTIPLIERS[0])
    h = h ^ (h >> 15)
    h = h * jnp.uint32(_MIX_MULTIPLIERS[1])
    return h ^ (h >> 16)


def _block_counter(shape: tuple[int, ...], full_shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index, within ``full_shape``, of every element of its leading block of ``shape``."""
    if len(full_shape) != len(shape) or any(n > full for n, full in zip(shape, full_shape, strict=True)):
        raise ValueError(f"dropout block of shape {shape} does not fit in the full shape {full_shape}")
    if shape == full_shape:
        return jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    strides = [math.prod(full_shape[axis + 1 :]) for axis in range(len(full_shape))]
    counter = jnp.zeros(shape, jnp.uint32)
    for axis, stride in enumerate(strides):
        counter = counter + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    return counter


def hashed_bits(key: jax.Array, shape: tuple[int, ...], full_shape: tuple[int, ...] | None = None) -> jax.Array:
    """Uniform uint32 words of ``shape`` from one key: a threefry seed, then a counter hash per element.

    With ``full_shape``, the words are those of the leading block ``[:shape[0], :shape[1], ...]`` of the
    words ``full_shape`` would get, so a computation that needs only part of a tensor gets its masks.
    """
    shape = tuple(shape)
    full_shape = shape if full_shape is None else tuple(full_shape)
    if math.prod(full_shape) >= 2**32:
        raise ValueError(f"a dropout mask holds at most 2**32 - 1 elements per example, got shape {full_shape}")
    seed = jax.random.bits(key, (2,), jnp.uint32)
    return _mix32(_mix32(_block_counter(shape, full_shape) ^ seed[0]) + seed[1])


def keep_mask(
    key: jax.Array, rate: float, shape: tuple[int, ...], full_shape: tuple[int, ...] | None = None
) -> jax.Array:
    """Boolean mask, each element kept with probability ``1 - rate`` (to within 2**-32); ``full_shape`` as in
    :func:`hashed_bits`."""
    threshold = min(round(rate * 2**32), 2**32 - 1)
    return hashed_bits(key, shape, full_shape) >= jnp.uint32(threshold)


def _masked(x: jax.Array, key: jax.Array, rate: float, full_shape: tuple[int, ...] | None = None) -> jax.Array:
    keep = 1.0 - rate
    mask = keep_mask(key, rate, x.shape, full_shape)
    # The scale is applied in float32 (at least) and rounded once: a bf16 ``x / keep`` would divide by bf16(0.9) =
    # 0.8984, a 0.17 % bias at every site. For float32 ``x`` the casts vanish and the program is unchanged.
    wide = jnp.promote_types(x.dtype, jnp.float32)
    scaled = (x.astype(wide) / keep).astype(x.dtype)
    return jnp.where(mask, scaled, jnp.zeros_like(x))


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")


def dropout(
    x: jax.Array,
    rate: float,
    keys: DropoutKeys | jax.Array | None,
    site: int,
    *,
    full_shape: tuple[int, ...] | None = None,
) -> jax.Array:
    """Inverted dropout on ``x`` (B, ...), one mask per example from ``keys``: :class:`DropoutKeys`
    or its per-example keys (B, key) alone.

    ``full_shape`` (per example, without B): ``x`` is the leading block of a tensor of that shape, and
    gets that tensor's masks on the block (e.g. the first query rows of attention probabilities).
    ``keys=None`` or ``rate == 0`` means deterministic (evaluation).
    """
    if keys is None or rate == 0.0:
        return x
    _check_rate(rate)
    if isinstance(keys, DropoutKeys):
        keys = keys.examples
    return jax.vmap(lambda key, xi: _masked(xi, jax.random.fold_in(key, site), rate, full_shape))(keys, x)


def shared_dropout(x: jax.Array, rate: float, keys: DropoutKeys | None, site: int) -> jax.Array:
    """Inverted dropout on ``x`` (any shape, no batch axis) with one mask for the whole batch, drawn
    from ``keys.shared``. ``keys=None`` or ``rate == 0`` means deterministic (evaluation)."""
    if keys is None or rate == 0.0:
        return x
    _check_rate(rate)
    if not isinstance(keys, DropoutKeys):
        raise TypeError(
            "this model drops out a tensor the batch shares (e.g. DeBERTa's relative-position table), so its "
            "dropout_keys must be DropoutKeys with a shared step key (jax_adalora.models.dropout_keys), not "
            "per-example keys alone"
        )
    return _masked(x, jax.random.fold_in(keys.shared, site), rate)

"""Dropout with one key per example.

Each example in a batch draws its own mask from its own key, and each dropout site folds in a
fixed site id. A batch forward and a per-example forward (batch of one inside ``jax.vmap``) with the
same per-example keys therefore see the same masks, so per-example gradients average exactly to the
batch gradient, dropout on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def example_keys(step_key: jax.Array, example_index: jax.Array) -> jax.Array:
    """Per-example keys folded from the step key and each example's index in the batch. (B,) -> (B, key)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, example_index)


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
        mask = jax.random.bernoulli(jax.random.fold_in(key, site), keep, xi.shape)
        return jnp.where(mask, xi / keep, jnp.zeros_like(xi))

    return jax.vmap(one)(keys, x)

"""Differentiating a sum over a batch's examples in microbatches, inside one jitted step.

A loss that is a sum of per-example terms has a gradient that is the sum of its microbatches'
gradients. :func:`value_and_grad_in_microbatches` computes it with ``jax.lax.scan`` over equal
microbatches, so that one compiled body runs several times on smaller tensors: the gradient is the same
(up to float rounding) and the step's temporary memory shrinks with the microbatch (DeBERTa-v3-base at
32 x 128: 4.7 GB of XLA temp buffers, 1.25 GB in microbatches of 8). On the project's CPU the step time
did not change (``docs/performance.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def batch_size_of(batch: PyTree) -> int:
    """The leading axis that every leaf of ``batch`` shares; one line naming the leaf that has none or differs."""
    sizes: dict[int, list[str]] = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        key = jax.tree_util.keystr(key_path) or "(the batch itself)"
        if isinstance(leaf, (str, bytes)) or not (
            hasattr(leaf, "shape") or isinstance(leaf, (bool, int, float, complex))
        ):
            raise ValueError(
                f"batch leaf {key} is a {type(leaf).__name__} ({str(leaf)[:40]!r}), not an array: every batch leaf "
                "needs the leading example axis B; keep other values out of the batch (e.g. in losses_fn's closure)"
            )
        if jnp.ndim(leaf) == 0:
            raise ValueError(
                f"batch leaf {key} is a scalar: every batch leaf needs the leading example axis B (shape (B, ...)); "
                "keep values shared by the batch out of it (e.g. in losses_fn's closure)"
            )
        sizes.setdefault(int(jnp.shape(leaf)[0]), []).append(key)
    if len(sizes) != 1:
        where = "; ".join(f"{size}: {', '.join(keys[:3])}" for size, keys in sorted(sizes.items()))
        raise ValueError(
            "every batch (and per-example) leaf needs the same leading (example) axis; got leading sizes "
            f"{sorted(map(str, sizes))}" + (f" ({where})" if where else " (the batch has no leaves)")
        )
    return next(iter(sizes))


def check_microbatch_size(microbatch_size: int | None, batch_size: int) -> int:
    """``microbatch_size`` as a whole number of examples that divides ``batch_size``; ``None`` or 0 mean the batch."""
    if microbatch_size is None or microbatch_size == 0:
        return batch_size
    if microbatch_size < 0 or batch_size % microbatch_size:
        raise ValueError(
            f"microbatch_size = {microbatch_size} must be a positive divisor of the batch size {batch_size} "
            "(or 0 for the whole batch)"
        )
    return microbatch_size


def _split(tree: PyTree, count: int) -> PyTree:
    """(B, ...) -> (count, B // count, ...), microbatch k holding examples k, k + count, k + 2·count, ...

    Strided rather than contiguous, so that a batch sharded over devices along B (in contiguous blocks)
    gives microbatches that are sharded the same way: each device keeps working on its own examples.
    """
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // count, count) + x.shape[1:]), 0, 1), tree)


def _merge(tree: PyTree) -> PyTree:
    """The inverse of :func:`_split`: (count, B // count, ...) -> (B, ...) in the batch's order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)


def value_and_grad_in_microbatches(
    total_fn: Callable[[PyTree, PyTree, PyTree], jax.Array],
    shared: PyTree,
    per_example: PyTree,
    batch: PyTree,
    microbatch_size: int | None = None,
) -> tuple[jax.Array, tuple[PyTree, PyTree]]:
    """``(value, (grad of shared, grad of per_example))`` of ``total_fn(shared, per_example, batch)``.

    ``total_fn`` must be a sum over the examples of ``batch`` (e.g. ``sum_b w_b · loss_b / count`` with a
    ``count`` fixed outside it), each example's term depending on ``per_example`` (leaves with a leading
    example axis, e.g. per-example probes; may be ``None``) only through its own row. With
    ``microbatch_size`` dividing the batch, ``total_fn`` is differentiated on each microbatch in turn
    (``jax.lax.scan``; microbatch k holds examples k, k + B/m, ...): values and ``shared`` gradients add
    up, ``per_example`` gradients are put back into (B, ...) in the batch's order. ``None`` (or the batch
    size) differentiates the whole batch in one pass.
    """
    batch_size = batch_size_of((per_example, batch))
    size = check_microbatch_size(microbatch_size, batch_size)
    grad_fn = jax.value_and_grad(total_fn, argnums=(0, 1))
    if size == batch_size:
        return grad_fn(shared, per_example, batch)
    count = batch_size // size

    def body(carry, chunk):
        value, shared_grad = carry
        chunk_per_example, chunk_batch = chunk
        chunk_value, (chunk_shared_grad, chunk_per_example_grad) = grad_fn(shared, chunk_per_example, chunk_batch)
        value = value + chunk_value.astype(value.dtype)
        return (value, jax.tree.map(jnp.add, shared_grad, chunk_shared_grad)), chunk_per_example_grad

    start = (jnp.zeros((), jax.dtypes.canonicalize_dtype(jnp.float64)), jax.tree.map(jnp.zeros_like, shared))
    chunks = (_split(per_example, count), _split(batch, count))
    (value, shared_grad), per_example_grads = jax.lax.scan(body, start, chunks)
    return value, (shared_grad, _merge(per_example_grads))

"""Stacked layers: one module created under ``nnx.vmap`` holds L layers, its kernel (L, ...) with a leading layer axis.

Their adapters hold factors with the same leading axes (see :class:`jax_adalora.adapters.SVDAdapter`). For the
rank budget every layer of the stack is its own adapted matrix, so rank patterns name each layer:
``"<module path>[i]"`` (``"layers.attn.q_proj[3]"``: layer 3 of the stacked module at ``layers.attn.q_proj``;
``[i,j]`` with two layer axes). The module path alone names the whole stack, where an entry is the (L, r) array.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_adalora.adapters.variables import UnadaptableLayerError


def stack_shape_of(kernel_shape: tuple[int, ...], layer_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The leading layer axes of a kernel whose one-layer shape is ``layer_shape``.

    Raises:
      UnadaptableLayerError: the kernel does not end with ``layer_shape`` (e.g. a layer axis that is not leading).
    """
    kernel_shape, layer_shape = tuple(kernel_shape), tuple(layer_shape)
    extra = len(kernel_shape) - len(layer_shape)
    if extra < 0 or kernel_shape[extra:] != layer_shape:
        raise UnadaptableLayerError(
            f"its kernel has shape {kernel_shape}, not (..., {', '.join(map(str, layer_shape))}): layer axes made "
            "by nnx.vmap must lead (out_axes=0)"
        )
    return kernel_shape[:extra]


def layer_name(path: str, index: tuple[int, ...]) -> str:
    """``"layers.q_proj[3]"``: the name of one layer of the stacked adapter at ``path``."""
    return f"{path}[{','.join(str(i) for i in index)}]"


def matrix_count(lam_shape: tuple[int, ...]) -> int:
    """Adapted matrices behind one λ of shape (*stack, r): one per layer of the stack."""
    return int(np.prod(lam_shape[:-1], dtype=np.int64))


def per_layer(tree: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``{path: (*stack, r)}`` as ``{name: (r,)}``, one entry per layer (:func:`layer_name`); unstacked entries
    keep their path."""
    out = {}
    for path, value in tree.items():
        if np.ndim(value) <= 1:
            out[path] = value
            continue
        for index in np.ndindex(np.shape(value)[:-1]):
            out[layer_name(path, index)] = value[index]
    return out


def stacked_entry(path: str, stack_shape: tuple[int, ...], entries: Mapping) -> jax.Array | None:
    """The (*stack, r) value of the adapter at ``path`` from ``entries`` keyed by its path or by its layers'
    names (:func:`layer_name`); ``None`` when ``entries`` has neither.

    Raises:
      ValueError: ``entries`` names some of the stack's layers but not all.
    """
    if path in entries:
        return jnp.asarray(entries[path])
    if not stack_shape:
        return None
    names = [layer_name(path, index) for index in np.ndindex(stack_shape)]
    missing = [name for name in names if name not in entries]
    if len(missing) == len(names):
        return None
    if missing:
        raise ValueError(
            f"the entries name {len(names) - len(missing)} of the {len(names)} layers of {path}: missing {missing}"
        )
    values = jnp.stack([jnp.asarray(entries[name]) for name in names])
    return values.reshape(tuple(stack_shape) + values.shape[1:])

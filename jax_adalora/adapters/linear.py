"""The adapter of ``nnx.Linear`` and ``nnx.LinearGeneral``: the contracted input axes flattened to d_in, the output
feature axes to d_out."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.adapters.adapter import SVDAdapter
from jax_adalora.adapters.stacked import stack_shape_of
from jax_adalora.adapters.variables import UnadaptableLayerError

AdaptableLinear = nnx.Linear | nnx.LinearGeneral


def linear_layout(base: AdaptableLinear) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(input feature shape, output feature shape, layer axes)`` of an ``nnx.Linear`` or ``nnx.LinearGeneral``
    (the layer axes are those of a layer created under ``nnx.vmap``; ``()`` otherwise).

    Raises:
      UnadaptableLayerError: an ``nnx.LinearGeneral`` with ``batch_axis`` (one kernel per batch index: a set of
        matrices, not one), or a kernel whose shape does not end with the features' shapes.
    """
    if isinstance(base, nnx.LinearGeneral):
        if base.batch_axis:
            raise UnadaptableLayerError(
                "nnx.LinearGeneral with batch_axis holds one matrix per batch index, not one matrix"
            )
        in_shape, out_shape = tuple(base.in_features), tuple(base.out_features)
    else:
        in_shape, out_shape = (base.in_features,), (base.out_features,)
    return in_shape, out_shape, stack_shape_of(base.kernel.shape, in_shape + out_shape)


class AdaLoRALinear(SVDAdapter):
    """An ``nnx.Linear`` (or ``nnx.LinearGeneral``, its feature axes flattened) with an SVD-form adapter beside
    it; same ``__call__`` as the layer it wraps.

    The factors take the wrapped layer's ``param_dtype``: ``P`` (d_out, r), ``λ`` (r,), ``Q`` (r, d_in), with
    ``d_in`` and ``d_out`` the products of the input and output feature shapes; a layer created under
    ``nnx.vmap`` gets the same leading layer axes on each (see :class:`SVDAdapter`).
    """

    def __init__(self, base: AdaptableLinear, *, rank: int, alpha: float, init_std: float = 0.02, rngs: nnx.Rngs):
        self.in_shape, self.out_shape, stack_shape = linear_layout(base)
        # LinearGeneral contracts the input axes `axis` (in the kernel's order): they move last, then flatten.
        self.axis = tuple(base.axis) if isinstance(base, nnx.LinearGeneral) else (-1,)
        super().__init__(
            base,
            d_in=math.prod(self.in_shape),
            d_out=math.prod(self.out_shape),
            stack_shape=stack_shape,
            rank=rank,
            alpha=alpha,
            init_std=init_std,
            rngs=rngs,
        )

    def _flat_input(self, x: jax.Array) -> jax.Array:
        """(..., *in_shape) -> (..., d_in): the contracted axes last, in the kernel's order, then flattened."""
        if self.axis == (-1,):
            return x
        axes = [a % x.ndim for a in self.axis]
        x = jnp.moveaxis(x, axes, range(x.ndim - len(axes), x.ndim))
        return x.reshape(x.shape[: x.ndim - len(self.in_shape)] + (-1,))

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        """``base(x, **kwargs)`` plus the adapter's output (keyword arguments, e.g. ``out_sharding``, go to the
        wrapped layer)."""
        self._check_one_layer(x.shape)
        y = self.base(x, **kwargs)
        delta = self._adapter_output(self._flat_input(x), y.dtype, x.shape)
        return y + delta.reshape(y.shape)

    def low_rank_parts(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(base(x), (x Qᵀ) ⊙ gate, P)``: ``self(x)`` is the first plus the second times ``Pᵀ``.

        For callers that contract the output with something else and want the adapter's part to stay
        rank r (DeBERTa's relative-position table). With probes set (:func:`jax_adalora.adapters.set_probes`),
        ``x`` is an input the batch shares (no batch axis) and the last two parts are per example, (B, ..., r) and
        (B, d_out, r), with each example's probe added, so that their gradients reach the probes.
        Only for an ``nnx.Linear`` base (one input and one output axis), one layer at a time."""
        y = self.base(x)
        dtype = y.dtype
        x, p, gate, q = x.astype(dtype), self.P[...].astype(dtype), self._gate(dtype), self.Q[...].astype(dtype)
        probe = self._probe()
        if probe is None:
            return y, (x @ q.T) * gate, p
        q = q + probe["Q"].astype(dtype)  # (B, r, d_in)
        gate = gate + self._probe_gate(probe, dtype)  # (B, r)
        p = p + jnp.swapaxes(probe["P"], -1, -2).astype(dtype)  # (B, d_out, r)
        rank_side = jnp.einsum("...i,bri->b...r", x, q) * gate.reshape(gate.shape[:1] + (1,) * (x.ndim - 1) + (-1,))
        return y, rank_side, p

    def delta_kernel(self) -> jax.Array:
        """The dense update ``(P diag(λ·mask·scale) Q)ᵀ`` in the wrapped layer's kernel shape
        (``(d_in, d_out)`` for ``nnx.Linear``, ``in_shape + out_shape`` for ``nnx.LinearGeneral``, after the layer
        axes of a stacked layer), computed at full float32 precision whatever the backend's default matmul
        precision."""
        return self.delta_matrix().reshape(self.stack_shape + self.in_shape + self.out_shape)

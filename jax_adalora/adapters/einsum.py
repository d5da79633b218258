"""The adapter of ``nnx.Einsum``: a kernel that maps a group of contracted input axes to a group of output axes.

From the equation (``"BTD,DNH->BTNH"``: input, kernel, output) each kernel axis is either *contracted* (its
letter is in the input, not in the output: ``D``) or *produced* (in the output, not in the input: ``N``, ``H``).
The contracted axes, in the kernel's order, flatten to d_in, the produced ones to d_out: the kernel is one
(d_in, d_out) matrix, and ``P`` (d_out, r), ``λ`` (r,), ``Q`` (r, d_in) adapt it as they adapt an ``nnx.Linear``.
The adapter moves the input's other axes first (in the input's order: the example axis stays leading), flattens
the contracted ones, and puts its output back in the layer's own output axis order.

Equations without one matrix behind them are refused: a kernel axis in the input and the output (one matrix per
index, e.g. per head), a kernel axis summed on its own, an input axis summed without the kernel, repeated letters,
an ellipsis in the kernel, no contracted axis.
"""

from __future__ import annotations

import dataclasses
import math
import string

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.adapters.adapter import SVDAdapter
from jax_adalora.adapters.stacked import stack_shape_of
from jax_adalora.adapters.variables import ProbeBatchAxisError, UnadaptableLayerError

ELLIPSIS = "..."


@dataclasses.dataclass(frozen=True)
class EinsumLayout:
    """The roles of an einsum equation's axes (see the module docstring); letters are one character each."""

    inputs: str  # the input's letters ("..." kept)
    kernel: str
    output: str
    contracted: str  # kernel letters summed against the input, in the kernel's order: flattened to d_in
    produced: str  # kernel letters of the output, in the kernel's order: flattened to d_out

    def kernel_axes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Kernel positions of the contracted and of the produced axes."""
        return tuple(map(self.kernel.index, self.contracted)), tuple(map(self.kernel.index, self.produced))

    def explicit(self, ndim: int) -> tuple[str, str]:
        """``(input letters, output letters)`` for an input of ``ndim`` axes, "..." replaced by fresh letters."""
        if ELLIPSIS not in self.inputs:
            return self.inputs, self.output
        used = set(self.inputs + self.kernel + self.output)
        count = ndim - (len(self.inputs) - len(ELLIPSIS))
        fresh = "".join([c for c in string.ascii_letters if c not in used][: max(count, 0)])
        return self.inputs.replace(ELLIPSIS, fresh), self.output.replace(ELLIPSIS, fresh)


def einsum_layout(equation: str, kernel_ndim: int) -> EinsumLayout:
    """The :class:`EinsumLayout` of ``equation`` for a kernel of ``kernel_ndim`` axes (one layer's).

    Raises:
      UnadaptableLayerError: the equation has no single (d_in, d_out) matrix behind it; the message says why.
    """

    def refuse(why: str) -> UnadaptableLayerError:
        return UnadaptableLayerError(f"nnx.Einsum {equation!r}: {why}")

    equation = equation.replace(" ", "")
    operands, arrow, output = equation.partition("->")
    inputs, comma, kernel = operands.partition(",")
    if not arrow or not comma or "," in kernel or not kernel:
        raise refuse("expected two operands, input and kernel, and an explicit output ('->')")
    if ELLIPSIS in kernel:
        raise refuse("an ellipsis in the kernel leaves its axes' roles unknown")
    if (ELLIPSIS in inputs) != (ELLIPSIS in output):
        raise refuse("an ellipsis in the input or the output only sums or adds axes the kernel does not map")
    letters = [s.replace(ELLIPSIS, "") for s in (inputs, kernel, output)]
    for part in letters:
        if len(set(part)) != len(part):
            raise refuse(f"the letters of {part!r} repeat (a diagonal, not a matrix)")
    plain_inputs, _, plain_output = letters
    if len(kernel) != kernel_ndim:
        raise refuse(f"the kernel's {len(kernel)} letters do not fit its {kernel_ndim} axes")
    contracted = "".join(c for c in kernel if c in plain_inputs)
    produced = "".join(c for c in kernel if c not in plain_inputs)
    shared = [c for c in contracted if c in plain_output]
    if shared:
        raise refuse(f"the kernel axes {shared} are in the input and the output: one matrix per index, not one")
    summed = [c for c in produced if c not in plain_output]
    if summed:
        raise refuse(f"the kernel axes {summed} are summed on their own")
    dropped = [c for c in plain_inputs if c not in kernel and c not in plain_output]
    if dropped:
        raise refuse(f"the input axes {dropped} are summed without the kernel")
    if not contracted:
        raise refuse("no input axis is contracted with the kernel")
    return EinsumLayout(inputs, kernel, output, contracted, produced)


def einsum_sizes(base: nnx.Einsum) -> tuple[EinsumLayout, int, int, tuple[int, ...]]:
    """``(layout, d_in, d_out, layer axes)`` of an ``nnx.Einsum`` (layer axes: those of a layer made under
    ``nnx.vmap``)."""
    layer_shape = tuple(base.kernel_shape)
    layout = einsum_layout(base.einsum_str, len(layer_shape))
    contracted, produced = layout.kernel_axes()
    stack = stack_shape_of(base.kernel.shape, layer_shape)
    return layout, math.prod(layer_shape[i] for i in contracted), math.prod(layer_shape[i] for i in produced), stack


class AdaLoRAEinsum(SVDAdapter):
    """An ``nnx.Einsum`` with an SVD-form adapter beside it; same ``__call__`` as the layer it wraps (its bias
    included, as the wrapped layer adds it).

    ``P`` (d_out, r), ``λ`` (r,), ``Q`` (r, d_in), where d_in multiplies the sizes of the kernel axes contracted with
    the input and d_out those of the kernel axes in the output (module docstring); a layer created under
    ``nnx.vmap`` gets the same leading layer axes on each.
    """

    def __init__(self, base: nnx.Einsum, *, rank: int, alpha: float, init_std: float = 0.02, rngs: nnx.Rngs):
        layout, d_in, d_out, stack_shape = einsum_sizes(base)
        self.equation = layout.inputs + "," + layout.kernel + "->" + layout.output
        self.layer_kernel_shape = tuple(base.kernel_shape)
        super().__init__(
            base, d_in=d_in, d_out=d_out, stack_shape=stack_shape, rank=rank, alpha=alpha, init_std=init_std, rngs=rngs
        )

    def _layout(self, einsum_str: str | None) -> EinsumLayout:
        layout = einsum_layout(self.equation, len(self.layer_kernel_shape))
        if einsum_str is None:
            return layout
        other = einsum_layout(einsum_str, len(self.layer_kernel_shape))
        if other.kernel_axes() != layout.kernel_axes():
            raise ValueError(
                f"AdaLoRAEinsum adapted for {self.equation!r} called with {einsum_str!r}: the kernel axes it "
                "contracts and produces must stay the same"
            )
        return other

    def __call__(self, inputs: jax.Array, einsum_str: str | None = None, **kwargs) -> jax.Array:
        """``base(inputs, einsum_str, **kwargs)`` plus the adapter's output, in the layer's output axis order."""
        self._check_one_layer(inputs.shape)
        y = self.base(inputs, einsum_str, **kwargs)
        layout = self._layout(einsum_str)
        letters, output = layout.explicit(inputs.ndim)
        others = "".join(c for c in letters if c not in layout.kernel)  # batch, tokens...: kept, in input order
        if self._probe() is not None and letters[0] not in others:
            raise ProbeBatchAxisError(
                f"AdaLoRAEinsum {self.equation!r} with probes contracts the input's leading axis: expected a leading "
                "batch axis"
            )
        x = jnp.transpose(inputs, [letters.index(c) for c in others + layout.contracted])
        x_flat = x.reshape(x.shape[: len(others)] + (-1,))
        delta = self._adapter_output(x_flat, y.dtype, inputs.shape)
        produced = tuple(self.layer_kernel_shape[layout.kernel.index(c)] for c in layout.produced)
        delta = delta.reshape(delta.shape[:-1] + produced)
        source = others + layout.produced
        return y + jnp.transpose(delta, [source.index(c) for c in output])

    def delta_kernel(self) -> jax.Array:
        """The dense update ``(P diag(λ·mask·scale) Q)ᵀ`` in the kernel's own axis order (after the layer axes of
        a stacked layer), at full float32 precision."""
        layout = einsum_layout(self.equation, len(self.layer_kernel_shape))
        source = layout.contracted + layout.produced
        sizes = tuple(self.layer_kernel_shape[layout.kernel.index(c)] for c in source)
        stack = len(self.stack_shape)
        delta = self.delta_matrix().reshape(self.stack_shape + sizes)
        return jnp.transpose(delta, list(range(stack)) + [stack + source.index(c) for c in layout.kernel])

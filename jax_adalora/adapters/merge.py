"""Folding adapters into their base kernels."""

from __future__ import annotations

from flax import nnx

from jax_adalora.adapters.surgery import module_uses, replace
from jax_adalora.adapters.triplets import adapter_modules


def merge_adapters(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every adapter folded into its base kernel; the copy has no adapters.

    The merged model's outputs equal the adapted model's (up to float rounding). A layer used at several paths
    stays one (shared) layer; a stacked layer's update is folded into each layer of its kernel.
    """
    merged = nnx.clone(model)
    uses = module_uses(merged)
    for adapter in adapter_modules(merged).values():
        base = adapter.base
        base.kernel.set_value(base.kernel[...] + adapter.delta_kernel().astype(base.kernel.dtype))
        replace(uses[id(adapter)], base)
    return merged

"""SVD-form adapters for Flax NNX models: injection, the triplet pytree, probes and merging.

An adapted layer computes ``y = base(x) + ((x Qᵀ) ⊙ λ ⊙ mask) Pᵀ · alpha / r_init`` with ``P`` (d_out, r), ``λ``
(r,), ``Q`` (r, d_in), where x is the layer's input with the axes its kernel contracts flattened to d_in, and the
kernel's output axes flatten to d_out. The adapter is always applied factored: no d_out × d_in matrix is formed in
the forward, so per-example gradients cost only the adapter's size.

Layers that can be adapted: ``nnx.Linear``, ``nnx.LinearGeneral`` and ``nnx.Einsum`` with one matrix behind its
equation (e.g. ``"BTD,DNH->BTNH"``: d_in = D, d_out = N·H); each also as a stack of layers created under
``nnx.vmap`` and run under ``nnx.scan`` (factors with the kernel's leading layer axes: ``P`` (L, d_out, r)), and
each also when one layer object is used at several paths (one adapter, at every use).

Parameter layout follows Hugging Face PEFT's AdaLoRA: ``Q`` is ``lora_A`` (r, in), ``λ`` is ``lora_E``
(r, 1), ``P`` is ``lora_B`` (out, r). Init as PEFT: λ = 0 (the adapted model starts equal to the base
model), P and Q ~ N(0, 0.02).

The functional core works on the *triplet pytree* ``{module_path: {"P": ..., "lam": ..., "Q": ...}}``
(module paths are '.'-joined, e.g. ``"encoder.layers.0.attention.query"``). The rank spec
``{module_path: r}`` returned by :func:`inject_adapters` is the one source of truth for which matrices
are adapted and at what initial rank.

Example, attention projections written as ``nnx.Einsum``:

  >>> from flax import nnx
  >>> import jax_adalora as jal
  >>> class Attention(nnx.Module):
  ...     def __init__(self, rngs):
  ...         self.q = nnx.Einsum("BTD,DNH->BTNH", (16, 2, 8), rngs=rngs)
  ...         self.o = nnx.Einsum("BTNH,NHD->BTD", (2, 8, 16), rngs=rngs)
  >>> model = Attention(nnx.Rngs(0))
  >>> jal.inject(model, jal.AdaLoRAConfig(r_init=4, r_target=2), targets="q|o", rngs=nnx.Rngs(1))
  {'o': 4, 'q': 4}
  >>> model.q.P.shape, model.q.Q.shape  # d_out = N·H = 16, d_in = D = 16
  ((16, 4), (4, 16))
"""

from jax_adalora.adapters.adapter import SVDAdapter
from jax_adalora.adapters.einsum import AdaLoRAEinsum, EinsumLayout, einsum_layout
from jax_adalora.adapters.factored import factored_adapter, probed_adapter
from jax_adalora.adapters.injection import RankSpec, inject_adapters, linear_paths, model_layers, resolve_targets
from jax_adalora.adapters.linear import AdaLoRALinear, AdaptableLinear
from jax_adalora.adapters.merge import merge_adapters
from jax_adalora.adapters.probes import probes_to_triplet_layout, set_probes, zero_probes
from jax_adalora.adapters.stacked import layer_name, matrix_count, per_layer, stacked_entry
from jax_adalora.adapters.triplets import (
    TRIPLET_LEAVES,
    Triplets,
    adapter_modules,
    find_triplets,
    get_masks,
    get_triplets,
    module_path_str,
    rank_spec,
    set_masks,
    set_triplets,
    split_key_path,
)
from jax_adalora.adapters.variables import (
    AdaLoRAMask,
    AdaLoRAParam,
    AdaLoRAProbe,
    ProbeBatchAxisError,
    UnadaptableLayerError,
    trainable_filter,
)

__all__ = [
    "TRIPLET_LEAVES",
    "AdaLoRAEinsum",
    "AdaLoRALinear",
    "AdaLoRAMask",
    "AdaLoRAParam",
    "AdaLoRAProbe",
    "AdaptableLinear",
    "EinsumLayout",
    "ProbeBatchAxisError",
    "RankSpec",
    "SVDAdapter",
    "Triplets",
    "UnadaptableLayerError",
    "adapter_modules",
    "einsum_layout",
    "factored_adapter",
    "find_triplets",
    "get_masks",
    "get_triplets",
    "inject_adapters",
    "layer_name",
    "linear_paths",
    "matrix_count",
    "merge_adapters",
    "model_layers",
    "module_path_str",
    "per_layer",
    "probed_adapter",
    "probes_to_triplet_layout",
    "rank_spec",
    "resolve_targets",
    "set_masks",
    "set_probes",
    "set_triplets",
    "split_key_path",
    "stacked_entry",
    "trainable_filter",
    "zero_probes",
]

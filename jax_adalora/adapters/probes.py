"""Per-example probes: zero-valued perturbations of the factors whose gradients are each example's gradient.

The probes of an adapter are ``{"P": (B, *stack, r, d_out), "lam": (B, *stack, r), "Q": (B, *stack, r, d_in)}``:
the example axis first, as :mod:`jax_adalora.microbatch` splits it, then a stacked layer's axes. On the model,
:func:`set_probes` puts a stacked adapter's layer axes first, so that ``nnx.scan`` over the layers slices the
probes with the factors and each layer sees ``(B, r, d_out)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.adapters.triplets import Triplets, adapter_modules
from jax_adalora.adapters.variables import AdaLoRAProbe


def zero_probes(triplets: Triplets, batch_size: int) -> Triplets:
    """Zero per-example probes for :func:`set_probes`: ``{path: {"P": (B, *stack, r, d_out), "lam": (B, *stack,
    r), "Q": (B, *stack, r, d_in)}}`` (P's probe is transposed, see :func:`jax_adalora.adapters.probed_adapter`)."""

    def zeros(like):
        return jnp.zeros((batch_size,) + like.shape, like.dtype)

    return {
        path: {"P": zeros(jnp.swapaxes(t["P"], -1, -2)), "lam": zeros(t["lam"]), "Q": zeros(t["Q"])}
        for path, t in triplets.items()
    }


def probes_to_triplet_layout(tree: Triplets) -> Triplets:
    """A pytree in the probes' layout (e.g. their gradients' moments) in the triplets' layout: P transposed."""
    return {path: {**t, "P": jnp.swapaxes(t["P"], -1, -2)} for path, t in tree.items()}


def set_probes(model: nnx.Module, probes: Mapping[str, Mapping[str, jax.Array]], *, every: bool = True) -> None:
    """Gives adapters of ``model`` their per-example probes (from :func:`zero_probes`), as an
    :class:`AdaLoRAProbe` variable.

    The model then computes each example's output as if its adapters were the shared factors plus its
    own probes, and the gradient of a sum of per-example losses with respect to the probes holds each
    example's gradient of the triplets. For a copy of a model made for one differentiation (as
    :func:`jax_adalora.moments.value_grad_and_moments` does). ``every=False`` allows probes for some
    adapters only; a path that is not an adapter is always an error."""
    modules = adapter_modules(model)
    missing = set(modules) - set(probes) if every else set()
    unknown = set(probes) - set(modules)
    if missing or unknown:
        raise ValueError(
            f"probes do not match the model's adapters: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    for path, module in modules.items():
        if path in probes:
            stack = len(module.stack_shape)  # (B, *stack, ...) -> (*stack, B, ...): the layer axes lead
            module.probe = AdaLoRAProbe({name: jnp.moveaxis(p, 0, stack) for name, p in probes[path].items()})

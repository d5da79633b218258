"""The NNX variable types of the adapters, and the filter of what trains."""

from __future__ import annotations

import re

from flax import nnx


class AdaLoRAParam(nnx.Param):
    """Variable type of the trainable adapter factors P, λ, Q: one filter selects them all."""


class AdaLoRAMask(nnx.Variable):
    """Fixed 0/1 rank mask (r,) (``(L, r)`` on a stacked layer): all ones while training; a frozen rank pattern
    after loading."""


class AdaLoRAProbe(nnx.Variable):
    """Zero-valued per-example perturbations of an adapter's factors, ``{"P": (B, r, d_out), "lam": (B, r),
    "Q": (B, r, d_in)}`` (a stacked layer's axes come first: ``(L, B, ...)``, so that ``nnx.scan`` slices them
    with the layer): with them, the gradient of a sum of per-example losses holds each example's own gradient
    of P, λ, Q (see :func:`jax_adalora.adapters.probed_adapter`). Set for one differentiation by
    :func:`jax_adalora.moments.value_grad_and_moments`; a trained model carries none."""


class ProbeBatchAxisError(ValueError):
    """An adapter with per-example probes saw an input without the probes' leading batch axis."""


class UnadaptableLayerError(ValueError):
    """A layer that :func:`jax_adalora.adapters.inject_adapters` cannot adapt; the message says why."""


def trainable_filter(head_pattern: str):
    """The NNX filter of what trains: every adapter factor, and the ``nnx.Param`` whose '.'-joined path fully
    matches ``head_pattern`` (e.g. the classifier)."""
    regex = re.compile(head_pattern)

    def head(path, value) -> bool:
        return isinstance(value, nnx.Param) and bool(regex.fullmatch(".".join(str(part) for part in path)))

    return nnx.Any(AdaLoRAParam, head)

"""Which layers of a model get adapters, and putting them there: :func:`inject_adapters`.

Adaptable: ``nnx.Linear``, ``nnx.LinearGeneral`` (without ``batch_axis``) and ``nnx.Einsum`` whose equation has one
matrix behind it (:mod:`jax_adalora.adapters.einsum`), each also as a stack of layers created under ``nnx.vmap``
(leading layer axes). Layers a pattern matches but that cannot be adapted (``nnx.Conv``, ``nnx.Embed``, an
einsum with one matrix per head, any other module with a ``kernel`` parameter) are left as they are and named
in one warning and in the returned spec's ``skipped``; a pattern that matches only such layers is an error.

A layer object used at several paths (tied or reused) gets one adapter, put at every path: its uses keep sharing
their weights and the adapter's gradient sums over them. It is named by its first path.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence

from flax import nnx

from jax_adalora.adapters.adapter import SVDAdapter
from jax_adalora.adapters.einsum import AdaLoRAEinsum, einsum_sizes
from jax_adalora.adapters.linear import AdaLoRALinear, linear_layout
from jax_adalora.adapters.surgery import Use, module_uses, replace
from jax_adalora.adapters.triplets import module_path_str
from jax_adalora.adapters.variables import UnadaptableLayerError
from jax_adalora.config import AdaLoRAConfig

log = logging.getLogger(__name__)

ALREADY_ADAPTED = "already adapted"
NOT_LINEAR = {
    nnx.Embed: "nnx.Embed is a lookup table: its rows are picked, not multiplied with the input",
    nnx.Conv: "nnx.Conv slides its kernel over the input: not one matrix applied to feature axes",
    nnx.ConvTranspose: "nnx.ConvTranspose slides its kernel over the input: not one matrix applied to feature axes",
}


class RankSpec(dict):
    """``{module_path: r_init}`` of the layers :func:`inject_adapters` adapted, in model order (a stacked
    layer's entry stands for each of its layers), and ``skipped``: ``{module_path: why}`` of the layers the
    targets matched but that were left as they are."""

    def __init__(self, ranks=(), *, skipped=None):
        super().__init__(ranks)
        self.skipped = dict(skipped or {})


@dataclasses.dataclass
class Layer:
    """A module that holds a weight matrix: adaptable (``adapter`` is the class to wrap it in) or not (``reason``)."""

    path: str  # its first path ("" for the model itself)
    module: nnx.Module
    uses: list[Use]
    adapter: type[SVDAdapter] | None = None
    reason: str = ""
    d_in: int = 0
    d_out: int = 0

    @property
    def paths(self) -> list[str]:
        return [use.path for use in self.uses] or [self.path]


def _sizes(module) -> tuple[type[SVDAdapter], int, int]:
    if isinstance(module, nnx.Einsum):
        _, d_in, d_out, _ = einsum_sizes(module)
        return AdaLoRAEinsum, d_in, d_out
    in_shape, out_shape, _ = linear_layout(module)
    return AdaLoRALinear, math.prod(in_shape), math.prod(out_shape)


def _layer(path: str, module: nnx.Module, uses: list[Use]) -> Layer | None:
    """What :func:`inject_adapters` can do with ``module``; ``None`` for a module without a weight matrix of its own
    (containers, norms, dropout)."""
    layer = Layer(path, module, uses)
    if isinstance(module, SVDAdapter):
        layer.reason = ALREADY_ADAPTED
    elif isinstance(module, nnx.Einsum | nnx.LinearGeneral | nnx.Linear):
        try:
            layer.adapter, layer.d_in, layer.d_out = _sizes(module)
        except UnadaptableLayerError as err:
            layer.reason = str(err)
        if layer.adapter is not None and not uses:
            layer.adapter = None
            layer.reason = (
                "the model itself: adapters go on layers inside a model"
                if not path
                else "not an attribute or list item of a module, so it cannot be swapped"
            )
    elif kind := next((k for k in NOT_LINEAR if isinstance(module, k)), None):
        layer.reason = NOT_LINEAR[kind]
    elif isinstance(vars(module).get("kernel"), nnx.Param):
        layer.reason = f"{type(module).__name__} is not an nnx.Linear, nnx.LinearGeneral or nnx.Einsum"
    else:
        return None
    return layer


def model_layers(model: nnx.Module) -> list[Layer]:
    """Every module of ``model`` that holds a weight matrix, in model order, adaptable or not; the layers inside
    adapters are left out (their adapter stands for them)."""
    uses = module_uses(model)
    adapters = [module for _, module in nnx.iter_modules(model) if isinstance(module, SVDAdapter)]
    inside = {id(m) for adapter in adapters for _, m in nnx.iter_modules(adapter) if m is not adapter}
    layers = []
    for path, module in nnx.iter_modules(model):
        if id(module) not in inside:
            layer = _layer(module_path_str(path), module, uses.get(id(module), []))
            if layer is not None:
                layers.append(layer)
    return layers


def linear_paths(model: nnx.Module) -> list[str]:
    """'.'-joined paths of every layer of ``model`` that :func:`inject_adapters` can adapt and has not yet
    (``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum``; a layer used at several paths by its first)."""
    return [layer.path for layer in model_layers(model) if layer.adapter is not None]


def inject_adapters(
    model: nnx.Module,
    config: AdaLoRAConfig,
    *,
    targets: str | Sequence[str] | None = None,
    rngs: nnx.Rngs,
) -> RankSpec:
    """Wraps the chosen layers of ``model`` in adapters: :class:`AdaLoRALinear` on ``nnx.Linear`` /
    ``nnx.LinearGeneral``, :class:`AdaLoRAEinsum` on ``nnx.Einsum``, with leading layer axes on a stack of layers
    created under ``nnx.vmap``.

    Args:
      model: any Flax NNX module; changed in place.
      config: supplies ``r_init``, ``alpha``, ``init_std`` and, unless ``targets`` is given, ``targets``.
      targets: a regular expression over '.'-joined module paths (full match, e.g. ``r".*(query|value)"``),
        a list of exact module paths, or the name of a preset the model offers in its ``target_presets`` mapping
        (the zoo's encoders offer ``"paper"``, ``"attention"`` and ``"qv"``). A layer used at several paths is
        chosen when one of them matches, and gets one adapter at all of them.
      rngs: randomness for the P and Q init.

    Returns:
      The rank spec ``{module_path: r_init}``, in model order (a :class:`RankSpec`: a dict whose ``skipped``
      names the matched layers that could not be adapted, and why; they are also logged, in one warning).

    Raises:
      ValueError: the targets match no layer left to adapt (the message says what they matched instead: layers
        already adapted, layers that cannot be adapted, or nothing, then with the adaptable paths; for a preset,
        what to pass instead); a listed path is not a layer of the model, or cannot be adapted; ``r_init`` is
        above ``min(d_in, d_out)`` of a chosen layer (the message names each such layer and its sizes).

    Examples:
      >>> from flax import nnx
      >>> import jax_adalora as jal
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.hidden = nnx.Linear(8, 16, rngs=rngs)
      ...         self.out = nnx.Linear(16, 2, rngs=rngs)
      >>> jal.inject(Net(nnx.Rngs(0)), jal.AdaLoRAConfig(r_init=4, r_target=2), targets="hidden", rngs=nnx.Rngs(1))
      {'hidden': 4}
    """
    spec = targets if targets is not None else config.targets
    layers = model_layers(model)
    matched = _matched(layers, spec if not isinstance(spec, str) else resolve_targets(model, spec))
    chosen = [layer for layer in matched if layer.adapter is not None]
    skipped = {layer.path: layer.reason for layer in matched if layer.adapter is None}
    if not chosen:
        raise ValueError(_nothing_to_adapt(spec, layers, skipped, presets=_presets(model)))
    _check_ranks(chosen, config.r_init)
    for layer in chosen:
        adapter = layer.adapter(
            layer.module, rank=config.r_init, alpha=config.alpha, init_std=config.init_std, rngs=rngs
        )
        replace(layer.uses, adapter)
        if len(layer.uses) > 1:
            log.info("inject: %s is one layer used at %s: one adapter at every use", layer.path, layer.paths)
    if skipped:
        log.warning(
            "inject: targets=%r matched layers left without adapters: %s",
            spec,
            "; ".join(f"{path} ({why})" for path, why in skipped.items()),
        )
    return RankSpec({layer.path: config.r_init for layer in chosen}, skipped=skipped)


def _presets(model: nnx.Module) -> dict[str, str]:
    return dict(getattr(model, "target_presets", None) or {})


def resolve_targets(model: nnx.Module, spec: str) -> str:
    """The regex for ``spec``: a preset of the model (its ``target_presets`` mapping, if it has one), or else
    ``spec`` itself as a regex.

    Raises:
      ValueError: ``spec`` is empty or not a valid regular expression.
    """
    presets = _presets(model)
    if not spec:
        raise ValueError(f"targets={spec!r}: expected a regex over module paths or a preset {sorted(presets)}")
    if spec in presets:
        return presets[spec]
    try:
        re.compile(spec)
    except re.error as err:
        raise ValueError(f"targets={spec!r} is neither a preset {sorted(presets)} nor a valid regex ({err})") from None
    return spec


def _matched(layers: list[Layer], spec: str | Sequence[str]) -> list[Layer]:
    if isinstance(spec, str):
        pattern = re.compile(spec)
        return [layer for layer in layers if any(pattern.fullmatch(path) for path in layer.paths)]
    by_path = {path: layer for layer in layers for path in layer.paths}
    unknown = [path for path in spec if path not in by_path]
    if unknown or not spec:
        raise ValueError(
            f"targets lists {unknown or 'nothing'}, not linear layers of the model; available: {_shown(layers)}"
        )
    listed = {id(by_path[path]) for path in spec}
    chosen = [layer for layer in layers if id(layer) in listed]
    refused = [f"{layer.path} ({layer.reason})" for layer in chosen if layer.adapter is None]
    if refused:
        raise UnadaptableLayerError(f"targets lists layers that cannot be adapted: {'; '.join(refused)}")
    return chosen


def _check_ranks(chosen: list[Layer], rank: int) -> None:
    too_big = [
        f"{layer.path} (d_in={layer.d_in}, d_out={layer.d_out})"
        for layer in chosen
        if rank > min(layer.d_in, layer.d_out)
    ]
    if too_big:
        raise ValueError(
            f"AdaLoRAConfig.r_init={rank} is above the size of {'; '.join(too_big)}: an SVD-form adapter of a "
            "d_in x d_out matrix has at most min(d_in, d_out) triplets; lower r_init or leave these layers out of "
            "targets"
        )


def _shown(layers: list[Layer]) -> str:
    paths = [layer.path for layer in layers if layer.adapter is not None]
    return (", ".join(paths[:12]) + (" ..." if len(paths) > 12 else "")) or "none"


def _nothing_to_adapt(spec, layers: list[Layer], skipped: dict[str, str], *, presets: dict[str, str]) -> str:
    already = [path for path, why in skipped.items() if why == ALREADY_ADAPTED]
    refused = [f"{path} ({why})" for path, why in skipped.items() if why != ALREADY_ADAPTED]
    if skipped:
        parts = []
        if already:
            parts.append(f"already adapted: {', '.join(already)} (inject once; rank_spec(model) lists the adapters)")
        if refused:
            parts.append(f"cannot be adapted: {'; '.join(refused)}")
        return f"targets={spec!r} matched no layer left to adapt: " + "; ".join(parts)
    adaptable = [layer.path for layer in layers if layer.adapter is not None]
    if isinstance(spec, str) and re.fullmatch(r"[A-Za-z_]\w*", spec) and spec not in presets:
        # A bare word such as the default "paper": a preset name of another model (the zoo's encoders), not this one's.
        offered = f"its presets: {sorted(presets)}" if presets else "it offers no presets (target_presets)"
        if not adaptable:
            return (
                f"targets={spec!r} is not a preset of this model ({offered}), and it has no nnx.Linear, "
                "nnx.LinearGeneral or nnx.Einsum layer to adapt"
            )
        return (
            f"targets={spec!r} is not a preset of this model ({offered}; 'paper' is the zoo encoders' six "
            "matrices per layer) and matched no module path: pass targets= a regular expression over its "
            f"'.'-joined module paths (full match), e.g. targets=r\"{_example_pattern(adaptable)}\" (its adaptable "
            f"layers: {_shown(layers)})"
        )
    return (
        f"targets={spec!r} matched no nnx.Linear, nnx.LinearGeneral or nnx.Einsum layer (full match over "
        f"'.'-joined module paths); available: {_shown(layers)}"
    )


def _example_pattern(paths: list[str], limit: int = 4) -> str:
    """A regex over some of ``paths``, each layer index generalised: ``layers\\.\\d+\\.attn\\.q_proj|lm_head``."""
    patterns: list[str] = []
    for path in paths:
        pattern = r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in path.split("."))
        if pattern not in patterns:
            patterns.append(pattern)
    return "|".join(patterns[:limit])

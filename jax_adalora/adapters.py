"""SVD-form adapters for Flax NNX models: injection, the triplet pytree, and merging.

An adapted linear layer computes ``y = x W + b + ((x Qᵀ) ⊙ λ ⊙ mask) Pᵀ · alpha / r_init`` with
``P`` (d_out, r), ``λ`` (r,), ``Q`` (r, d_in). The adapter is always applied factored: no d_out × d_in
matrix is formed in the forward, so per-example gradients cost only the adapter's size.

Parameter layout follows Hugging Face PEFT's AdaLoRA: ``Q`` is ``lora_A`` (r, in), ``λ`` is ``lora_E``
(r, 1), ``P`` is ``lora_B`` (out, r). Init as PEFT: λ = 0 (the adapted model starts equal to the base
model), P and Q ~ N(0, 0.02).

The functional core works on the *triplet pytree* ``{module_path: {"P": ..., "lam": ..., "Q": ...}}``
(module paths are '.'-joined, e.g. ``"encoder.layers.0.attention.query"``). The rank spec
``{module_path: r}`` returned by :func:`inject_adapters` is the one source of truth for which matrices
are adapted and at what initial rank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.config import AdaLoRAConfig

Triplets = dict[str, dict[str, jax.Array]]
RankSpec = dict[str, int]


class AdaLoRAParam(nnx.Param):
    """Variable type of the trainable adapter factors P, λ, Q: one filter selects them all."""


class AdaLoRAMask(nnx.Variable):
    """Fixed 0/1 rank mask (r,): all ones while training; a frozen rank pattern after loading."""


class AdaLoRAProbe(nnx.Variable):
    """Zero-valued per-example perturbations of an adapter's factors, ``{"P": (B, r, d_out), "lam": (B, r),
    "Q": (B, r, d_in)}``: with them, the gradient of a sum of per-example losses holds each example's own
    gradient of P, λ, Q (see :func:`probed_adapter`). Set for one differentiation by
    :func:`jax_adalora.stats.value_grad_and_moments`; a trained model carries none."""


class ProbeBatchAxisError(ValueError):
    """An adapter with per-example probes saw an input without the probes' leading batch axis."""


AdaptableLinear = nnx.Linear | nnx.LinearGeneral


def _linear_shapes(base: AdaptableLinear) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(input feature shape, output feature shape)`` of an ``nnx.Linear`` or a plain ``nnx.LinearGeneral``
    (no batch axes; the contracted axes are the input's last ones)."""
    if isinstance(base, nnx.LinearGeneral):
        if base.batch_axis:
            raise ValueError("nnx.LinearGeneral with batch_axis cannot be adapted: expected batch_axis={}")
        return tuple(base.in_features), tuple(base.out_features)
    return (base.in_features,), (base.out_features,)


class AdaLoRALinear(nnx.Module):
    """An ``nnx.Linear`` (or ``nnx.LinearGeneral``, its feature axes flattened) with an SVD-form adapter beside
    it; same ``__call__`` as the layer it wraps.

    The factors take the wrapped layer's ``param_dtype``: ``P`` (d_out, r), ``λ`` (r,), ``Q`` (r, d_in), with
    ``d_in`` and ``d_out`` the products of the input and output feature shapes.
    """

    def __init__(self, base: AdaptableLinear, *, rank: int, alpha: float, init_std: float = 0.02, rngs: nnx.Rngs):
        self.in_shape, self.out_shape = _linear_shapes(base)
        d_in, d_out = math.prod(self.in_shape), math.prod(self.out_shape)
        dtype = base.param_dtype
        key_p, key_q = jax.random.split(rngs.params())
        self.base = base
        self.P = AdaLoRAParam((init_std * jax.random.normal(key_p, (d_out, rank))).astype(dtype))
        self.lam = AdaLoRAParam(jnp.zeros((rank,), dtype))
        self.Q = AdaLoRAParam((init_std * jax.random.normal(key_q, (rank, d_in))).astype(dtype))
        self.mask = AdaLoRAMask(jnp.ones((rank,), dtype))
        # ranknum stays r_init even as ranks shrink: changing it hurt results in the reference.
        self.scaling = alpha / rank
        self.probe = nnx.data(None)  # an AdaLoRAProbe while per-example gradients are taken (set_probes)

    @property
    def rank(self) -> int:
        return self.lam.shape[0]

    def _gate(self, dtype) -> jax.Array:
        return (self.lam[...] * self.mask[...] * self.scaling).astype(dtype)

    def _probe(self) -> dict[str, jax.Array] | None:
        """The per-example probes set by :func:`set_probes`, if any (see :func:`probed_adapter`)."""
        return self.probe.get_value() if isinstance(self.probe, AdaLoRAProbe) else None

    def has_probes(self) -> bool:
        """Whether :func:`set_probes` gave this adapter per-example probes: an input the batch shares (no
        batch axis) must then go through :meth:`low_rank_parts`, not ``__call__``. Models that apply an
        adapted projection to such an input (DeBERTa's relative-position table) ask this."""
        return self._probe() is not None

    def _probe_gate(self, probe: dict[str, jax.Array], dtype) -> jax.Array:
        return (probe["lam"] * self.mask[...] * self.scaling).astype(dtype)  # (B, r)

    def _flat_input(self, x: jax.Array) -> jax.Array:
        """(..., *in_shape) -> (..., d_in)."""
        if len(self.in_shape) == 1:
            return x
        return x.reshape(x.shape[: x.ndim - len(self.in_shape)] + (-1,))

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        """``base(x, **kwargs)`` plus the adapter's output (keyword arguments, e.g. ``out_sharding``, go to the
        wrapped layer)."""
        y = self.base(x, **kwargs)
        dtype = y.dtype
        x_flat = self._flat_input(x).astype(dtype)
        parts = (x_flat, self.P[...].astype(dtype), self._gate(dtype), self.Q[...].astype(dtype))
        probe = self._probe()
        if probe is None:
            delta = factored_adapter(*parts)
        else:
            if x_flat.ndim < 2 or x_flat.shape[0] != probe["P"].shape[0]:
                raise ProbeBatchAxisError(
                    f"AdaLoRALinear with probes for {probe['P'].shape[0]} examples got an input of shape {x.shape}: "
                    "expected a leading batch axis of that size (an input the batch shares goes through "
                    "low_rank_parts)"
                )
            delta = probed_adapter(*parts, probe["P"], self._probe_gate(probe, dtype), probe["Q"])
        return y + delta.reshape(y.shape)

    def low_rank_parts(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(base(x), (x Qᵀ) ⊙ gate, P)``: ``self(x)`` is the first plus the second times ``Pᵀ``.

        For callers that contract the output with something else and want the adapter's part to stay
        rank r (DeBERTa's relative-position table). With probes set (:func:`set_probes`), ``x`` is an
        input the batch shares (no batch axis) and the last two parts are per example, (B, ..., r) and
        (B, d_out, r), with each example's probe added, so that their gradients reach the probes.
        Only for an ``nnx.Linear`` base (one input and one output axis)."""
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
        (``(d_in, d_out)`` for ``nnx.Linear``, ``in_shape + out_shape`` for ``nnx.LinearGeneral``), computed
        at full float32 precision whatever the backend's default matmul precision."""
        gate = self.lam[...] * self.mask[...] * self.scaling
        delta = jnp.matmul(self.Q[...].T * gate, self.P[...].T, precision=jax.lax.Precision.HIGHEST)
        return delta.reshape(self.in_shape + self.out_shape)


@jax.custom_vjp
def factored_adapter(x: jax.Array, p: jax.Array, gate: jax.Array, q: jax.Array) -> jax.Array:
    """``((x Qᵀ) ⊙ gate) Pᵀ`` for x (..., d_in), P (d_out, r), gate (r,), Q (r, d_in) -> (..., d_out).

    The hand-written backward computes the same gradients as autodiff, but contracts the tokens of
    ``dy`` against the rank-r activations directly (``dPᵀ = hᵀ dy``, a small (r, d_out) result). Left to
    autodiff, XLA on CPU materialises ``dy`` transposed (tokens × d_out) for every adapted layer,
    which cost about 40% of the adapter's backward in our measurements (one adapted FFN layer's gradient:
    0.195 s with autodiff, 0.120 s with this backward; docs/performance.md).
    """
    return ((x @ q.T) * gate) @ p.T


def _factored_adapter_fwd(x, p, gate, q):
    z = x @ q.T  # (..., r)
    h = z * gate
    return h @ p.T, (x, z, h, p, gate, q)


def _factored_adapter_bwd(residuals, dy):
    x, z, h, p, gate, q = residuals
    rank = z.shape[-1]
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])  # (N, d_in), (N, d_out)
    z2, h2 = z.reshape(-1, rank), h.reshape(-1, rank)  # (N, r)
    dp = jnp.einsum("nr,no->ro", h2, dy2).T  # (d_out, r)
    dh = dy2 @ p  # (N, r)
    dgate = jnp.sum(dh * z2, axis=0)  # (r,)
    dz = dh * gate
    dq = jnp.einsum("nr,ni->ri", dz, x2)  # (r, d_in)
    dx = (dz @ q).reshape(x.shape)
    return dx, dp, dgate, dq


factored_adapter.defvjp(_factored_adapter_fwd, _factored_adapter_bwd)


@jax.custom_vjp
def probed_adapter(
    x: jax.Array,
    p: jax.Array,
    gate: jax.Array,
    q: jax.Array,
    probe_pt: jax.Array,
    probe_gate: jax.Array,
    probe_q: jax.Array,
) -> jax.Array:
    """:func:`factored_adapter` of a batch, whose VJP also gives each example's own gradient.

    ``x`` is (B, ..., d_in). The probes are zero-valued per-example perturbations of the factors:
    ``probe_pt`` (B, r, d_out) of ``Pᵀ``, ``probe_gate`` (B, r) of the gate, ``probe_q`` (B, r, d_in) of ``Q``.
    Example b's output is that of the factors plus its probes; since the probes are zero, the forward
    ignores them and runs on the shared factors, and the cotangent of example b's probe is example b's
    gradient of the factors. So one batch forward and backward, as for the batch gradient, yields the
    per-example gradients: only the weight gradients keep the example axis, contracting each example's
    tokens alone. ``Pᵀ``'s probe is (B, r, d_out) because XLA on CPU writes (B, r, d_out) about 3x
    faster than (B, d_out, r) (32 x 128 tokens, d_out 1536: 2.98 against 10.0 ms). The probes must be zero:
    their values are not read.
    """
    return factored_adapter(x, p, gate, q)


def _probed_adapter_fwd(x, p, gate, q, probe_pt, probe_gate, probe_q):
    y, residuals = _factored_adapter_fwd(x, p, gate, q)
    return y, (residuals, (probe_pt, probe_gate, probe_q))  # the probes for their dtypes only


def _probed_adapter_bwd(saved, dy):
    (x, z, h, p, gate, q), probes = saved
    batch, rank = x.shape[0], z.shape[-1]
    x3, dy3 = x.reshape(batch, -1, x.shape[-1]), dy.reshape(batch, -1, dy.shape[-1])  # (B, N, d_in), (B, N, d_out)
    z3, h3 = z.reshape(batch, -1, rank), h.reshape(batch, -1, rank)  # (B, N, r)
    # Per-example gradients feed E[g²] and Var[g]: accumulate them in at least float32 (bf16 activations
    # would otherwise round each example's gradient to bf16); float32 inputs compile to the same program.
    acc = jnp.promote_types(x.dtype, jnp.float32)
    dpt = jnp.einsum("bnr,bno->bro", h3, dy3, preferred_element_type=acc)  # (B, r, d_out): each example's tokens
    dh = dy3 @ p  # (B, N, r)
    dgate = jnp.sum(dh.astype(acc) * z3.astype(acc), axis=1)  # (B, r)
    dz = dh * gate
    dq = jnp.einsum("bnr,bni->bri", dz, x3, preferred_element_type=acc)  # (B, r, d_in)
    dx = (dz @ q).reshape(x.shape)
    per_example = tuple(g.astype(probe.dtype) for g, probe in zip((dpt, dgate, dq), probes, strict=True))
    shared = (jnp.sum(dpt, axis=0).T, jnp.sum(dgate, axis=0), jnp.sum(dq, axis=0))
    shared = tuple(g.astype(like.dtype) for g, like in zip(shared, (p, gate, q), strict=True))
    return dx, *shared, *per_example


probed_adapter.defvjp(_probed_adapter_fwd, _probed_adapter_bwd)


def zero_probes(triplets: Triplets, batch_size: int) -> Triplets:
    """Zero per-example probes for :func:`set_probes`: ``{path: {"P": (B, r, d_out), "lam": (B, r),
    "Q": (B, r, d_in)}}`` (P's probe is transposed, see :func:`probed_adapter`)."""

    def zeros(like):
        return jnp.zeros((batch_size,) + like.shape, like.dtype)

    return {path: {"P": zeros(t["P"].T), "lam": zeros(t["lam"]), "Q": zeros(t["Q"])} for path, t in triplets.items()}


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
            module.probe = AdaLoRAProbe(dict(probes[path]))


def trainable_filter(head_pattern: str):
    """The NNX filter of what trains: every adapter factor, and the ``nnx.Param`` whose '.'-joined path fully
    matches ``head_pattern`` (e.g. the classifier)."""
    regex = re.compile(head_pattern)

    def head(path, value) -> bool:
        return isinstance(value, nnx.Param) and bool(regex.fullmatch(".".join(str(part) for part in path)))

    return nnx.Any(AdaLoRAParam, head)


TRIPLET_LEAVES = ("P", "lam", "Q")


def _key_name(key) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def split_key_path(key_path) -> tuple[str, str]:
    """``("a.b.0.query", "lam")`` for the key path of the leaf ``a/b/0/query/lam``."""
    names = [_key_name(k) for k in key_path]
    return ".".join(names[:-1]), (names[-1] if names else "")


def find_triplets(tree) -> Triplets:
    """``{path: {"P", "lam", "Q"}}`` of every node of ``tree`` that has those three leaves, in tree order.

    Paths are '.'-joined keys: an ``nnx.State`` of a model gives module paths
    (``"encoder.layers.0.attention.query"``); a dict already keyed by module path gives those keys.
    """
    groups: dict[str, dict[str, jax.Array]] = {}
    is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731  (an nnx.State that is not pure)
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]:
        path, name = split_key_path(key_path)
        if name in TRIPLET_LEAVES:
            groups.setdefault(path, {})[name] = leaf.get_value() if is_variable(leaf) else leaf
    return {path: group for path, group in groups.items() if len(group) == len(TRIPLET_LEAVES)}


def module_path_str(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def linear_paths(model: nnx.Module) -> list[str]:
    """'.'-joined paths of every ``nnx.Linear`` and ``nnx.LinearGeneral`` in ``model`` not yet adapted."""
    return [
        module_path_str(path)
        for path, module in nnx.iter_modules(model)
        if isinstance(module, AdaptableLinear) and not _inside_adapter(model, path)
    ]


def resolve_targets(model: nnx.Module, spec: str) -> str:
    """The regex for ``spec``: a preset of the model (its ``target_presets`` mapping, if it has one), or else
    ``spec`` itself as a regex.

    Raises:
      ValueError: ``spec`` is empty or not a valid regular expression.
    """
    presets = dict(getattr(model, "target_presets", None) or {})
    if not spec:
        raise ValueError(f"targets={spec!r}: expected a regex over module paths or a preset {sorted(presets)}")
    if spec in presets:
        return presets[spec]
    try:
        re.compile(spec)
    except re.error as err:
        raise ValueError(f"targets={spec!r} is neither a preset {sorted(presets)} nor a valid regex ({err})") from None
    return spec


def inject_adapters(
    model: nnx.Module,
    config: AdaLoRAConfig,
    *,
    targets: str | Sequence[str] | None = None,
    rngs: nnx.Rngs,
) -> RankSpec:
    """Wraps the chosen ``nnx.Linear`` / ``nnx.LinearGeneral`` layers of ``model`` in :class:`AdaLoRALinear`.

    Args:
      model: any Flax NNX module; changed in place.
      config: supplies ``r_init``, ``alpha``, ``init_std`` and, unless ``targets`` is given, ``targets``.
      targets: a regular expression over '.'-joined module paths (full match, e.g. ``r".*(query|value)"``),
        a list of exact module paths, or the name of a preset the model offers in its ``target_presets``
        mapping (the zoo's encoders offer ``"paper"``, ``"attention"`` and ``"qv"``).
      rngs: randomness for the P and Q init.

    Returns:
      The rank spec ``{module_path: r_init}``, in model order.

    Raises:
      ValueError: the targets match no linear layer, or a listed path is not a linear layer of the model
        (the message lists the available paths).

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
    candidates = linear_paths(model)
    shown = ", ".join(candidates[:12]) + (" ..." if len(candidates) > 12 else "")
    if isinstance(spec, str):
        pattern = re.compile(resolve_targets(model, spec))
        chosen = [path for path in candidates if pattern.fullmatch(path)]
        if not chosen:
            raise ValueError(
                f"targets={spec!r} matched no nnx.Linear or nnx.LinearGeneral layer (full match over '.'-joined "
                f"module paths); available: {shown or 'none'}"
            )
    else:
        unknown = [path for path in spec if path not in candidates]
        if unknown or not spec:
            raise ValueError(
                f"targets lists {unknown or 'nothing'}, not linear layers of the model; available: {shown or 'none'}"
            )
        chosen = [path for path in candidates if path in set(spec)]
    for path in chosen:
        parent, leaf = _parent_and_leaf(model, path)
        base = _get_child(parent, leaf)
        adapter = AdaLoRALinear(base, rank=config.r_init, alpha=config.alpha, init_std=config.init_std, rngs=rngs)
        _set_child(parent, leaf, adapter)
    return {path: config.r_init for path in chosen}


def adapter_modules(model: nnx.Module) -> dict[str, AdaLoRALinear]:
    """``{module_path: AdaLoRALinear}`` in model order."""
    return {
        module_path_str(path): module for path, module in nnx.iter_modules(model) if isinstance(module, AdaLoRALinear)
    }


def rank_spec(model: nnx.Module) -> RankSpec:
    """``{module_path: r}`` of every adapter of ``model``: its rank as injected (masked triplets included)."""
    return {path: module.rank for path, module in adapter_modules(model).items()}


def get_triplets(model: nnx.Module) -> Triplets:
    """The triplet pytree ``{path: {"P", "lam", "Q"}}`` of the model's current adapter values."""
    return {path: {"P": m.P[...], "lam": m.lam[...], "Q": m.Q[...]} for path, m in adapter_modules(model).items()}


def set_triplets(model: nnx.Module, triplets: Mapping[str, Mapping[str, jax.Array]]) -> None:
    """Writes triplet values into the model's adapters (in place; works on a model merged inside ``jit``)."""
    modules = adapter_modules(model)
    missing = set(modules) - set(triplets)
    unknown = set(triplets) - set(modules)
    if missing or unknown:
        raise ValueError(
            f"triplets do not match the model's adapters: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    for path, module in modules.items():
        for name in ("P", "lam", "Q"):
            getattr(module, name).set_value(triplets[path][name])


def get_masks(model: nnx.Module) -> dict[str, jax.Array]:
    return {path: m.mask[...] for path, m in adapter_modules(model).items()}


def set_masks(model: nnx.Module, masks: Mapping[str, jax.Array]) -> None:
    """Sets each adapter's fixed rank mask, e.g. from a rank pattern ``{path: bool (r,)}``."""
    for path, module in adapter_modules(model).items():
        if path in masks:
            module.mask.set_value(jnp.asarray(masks[path], jnp.float32))


def merge_adapters(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every adapter folded into its base kernel; the copy has no adapters.

    The merged model's outputs equal the adapted model's (up to float rounding).
    """
    merged = nnx.clone(model)
    for path, adapter in adapter_modules(merged).items():
        base = adapter.base
        base.kernel.set_value(base.kernel[...] + adapter.delta_kernel().astype(base.kernel.dtype))
        parent, leaf = _parent_and_leaf(merged, path)
        _set_child(parent, leaf, base)
    return merged


# ---- module surgery ------------------------------------------------------------------------------


def _inside_adapter(model: nnx.Module, path: tuple) -> bool:
    node = model
    for part in path[:-1]:
        node = _get_child(node, part)
        if isinstance(node, AdaLoRALinear):
            return True
    return False


def _parent_and_leaf(model: nnx.Module, path: str):
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = model
    for part in parts[:-1]:
        node = _get_child(node, part)
    return node, parts[-1]


def _get_child(node, key):
    return node[key] if isinstance(key, int) else getattr(node, key)


def _set_child(node, key, value) -> None:
    if isinstance(key, int):
        node[key] = value
    else:
        setattr(node, key, value)

"""The triplet pytree ``{module_path: {"P", "lam", "Q"}}``: finding it in any tree, reading and writing a model's.

Module paths are '.'-joined, e.g. ``"encoder.layers.0.attention.query"``. A module reachable at several paths (one
layer used twice) is named by the first, the path ``nnx.iter_modules`` and ``nnx.state`` give it. A stacked layer
(created under ``nnx.vmap``) is one entry whose arrays carry the leading layer axes.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.adapters.adapter import SVDAdapter
from jax_adalora.adapters.stacked import stacked_entry

Triplets = dict[str, dict[str, jax.Array]]
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


def adapter_modules(model: nnx.Module) -> dict[str, SVDAdapter]:
    """``{module_path: adapter}`` (every :class:`SVDAdapter`: ``AdaLoRALinear``, ``AdaLoRAEinsum``) in model order."""
    return {module_path_str(path): module for path, module in nnx.iter_modules(model) if isinstance(module, SVDAdapter)}


def rank_spec(model: nnx.Module) -> dict[str, int]:
    """``{module_path: r}`` of every adapter of ``model``: its rank as injected (masked triplets included); a
    stacked adapter's entry stands for each of its layers."""
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
        for name in TRIPLET_LEAVES:
            getattr(module, name).set_value(triplets[path][name])


def get_masks(model: nnx.Module) -> dict[str, jax.Array]:
    return {path: m.mask[...] for path, m in adapter_modules(model).items()}


def set_masks(model: nnx.Module, masks: Mapping[str, jax.Array]) -> None:
    """Sets each adapter's fixed rank mask, e.g. from a rank pattern ``{path: bool (r,)}``; a stacked adapter's
    from its path ((*stack, r)) or from its layers' entries (``"path[i]"``, as :func:`jax_adalora.rank_pattern`
    names them). Adapters without an entry keep their mask."""
    for path, module in adapter_modules(model).items():
        value = stacked_entry(path, module.stack_shape, masks)
        if value is not None:
            module.mask.set_value(jnp.asarray(value, jnp.float32).reshape(module.mask.shape))

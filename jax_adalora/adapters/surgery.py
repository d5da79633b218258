"""Module surgery: where a module is used in a model graph, and putting another module in its place everywhere.

NNX graphs keep shared references: one layer object can be the child of several parents (tied or reused layers).
``nnx.iter_modules`` visits it once, at its first path; replacing it there alone would leave the other uses on
the old object. :func:`module_uses` lists every (parent, key) that holds a module, so that :func:`replace` swaps
all of them and the new module stays shared.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from jax_adalora.adapters.triplets import module_path_str


@dataclasses.dataclass(frozen=True)
class Use:
    """One place that holds a module: ``parent``'s child ``key``, at '.'-joined ``path``."""

    path: str
    parent: object
    key: object


def module_uses(model: nnx.Module) -> dict[int, list[Use]]:
    """``{id(module): [Use, ...]}`` of every module under ``model`` (the root has none), each list starting with
    the module's first path (the one ``nnx.iter_modules`` gives) and going on in path order."""
    first_paths = {id(node): module_path_str(path) for path, node in nnx.iter_graph(model)}
    uses: dict[int, list[Use]] = {}
    for path, parent in nnx.iter_graph(model):
        for key, child in _children(parent):
            if isinstance(child, nnx.Module):
                child_path = module_path_str(path + (key,))
                uses.setdefault(id(child), []).append(Use(child_path, parent, key))
    for child_id, found in uses.items():
        found.sort(key=lambda use: (use.path != first_paths.get(child_id), use.path))
    return uses


def _children(node):
    """The (key, child) pairs of a node whose children can be replaced: modules, ``nnx.List`` / ``nnx.Dict``, and
    plain lists and dicts held with ``nnx.data``."""
    if isinstance(node, list):
        return enumerate(node)
    if isinstance(node, dict):
        return node.items()
    if nnx.graph.is_graph_node(node) and not isinstance(node, nnx.Variable):
        return nnx.iter_children(node)
    return ()


def replace(uses: list[Use], new: nnx.Module) -> None:
    """Puts ``new`` at each of ``uses`` (the same object at each: it stays shared)."""
    for use in uses:
        if isinstance(use.key, int) or isinstance(use.parent, dict):
            use.parent[use.key] = new
        else:
            setattr(use.parent, use.key, new)

"""Hugging Face checkpoint key maps: which torch tensor fills which NNX variable, for loading and export.

A family's map (``models/<family>/weights.py``) lists ``(hf_key, path, kind)``: ``hf_key`` relative to the
checkpoint's model prefix, ``path`` the attribute path of the variable (ints index lists), ``kind``
``"linear"`` (torch ``(out, in)`` weight <-> NNX ``(in, out)`` kernel, transposed) or ``"copy"``.
"""

from __future__ import annotations

from flax import nnx

WeightMap = list[tuple[str, tuple, str]]  # (hf_key, attribute path of the variable, "linear" | "copy")


def linear_entries(hf: str, path: tuple) -> WeightMap:
    return [(f"{hf}.weight", (*path, "kernel"), "linear"), (f"{hf}.bias", (*path, "bias"), "copy")]


def norm_entries(hf: str, path: tuple) -> WeightMap:
    return [(f"{hf}.weight", (*path, "scale"), "copy"), (f"{hf}.bias", (*path, "bias"), "copy")]


def variable_at(model, path: tuple) -> nnx.Variable:
    """The NNX variable at ``path`` (attribute names; ints index lists) of ``model``: a ``ValueError`` when the
    path runs into an adapter (merge it first), a ``TypeError`` when it ends on something else."""
    node = model
    for depth, part in enumerate(path):
        if isinstance(part, str) and not hasattr(node, part) and hasattr(node, "base"):
            where = ".".join(map(str, path[:depth]))
            raise ValueError(
                f"{where} holds an adapter; merge it first (jax_adalora.adapters.merge_adapters) "
                "to export plain weights"
            )
        node = node[part] if isinstance(part, int) else getattr(node, part)
    if not isinstance(node, nnx.Variable):
        raise TypeError(f"{'.'.join(map(str, path))} is a {type(node).__name__}, not a variable")
    return node

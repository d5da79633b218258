"""Hugging Face checkpoint key maps: which torch tensor fills which NNX variable, for loading and export.

A family's map (``models/<family>/weights.py``) lists ``(hf_key, path, kind)``: ``hf_key`` relative to the
checkpoint's model prefix, ``path`` the attribute path of the variable (ints index lists), ``kind``
``"linear"`` (torch ``(out, in)`` weight <-> NNX ``(in, out)`` kernel, transposed) or ``"copy"``.
"""

from __future__ import annotations

WeightMap = list[tuple[str, tuple, str]]  # (hf_key, attribute path of the variable, "linear" | "copy")


def linear_entries(hf: str, path: tuple) -> WeightMap:
    return [(f"{hf}.weight", (*path, "kernel"), "linear"), (f"{hf}.bias", (*path, "bias"), "copy")]


def norm_entries(hf: str, path: tuple) -> WeightMap:
    return [(f"{hf}.weight", (*path, "scale"), "copy"), (f"{hf}.bias", (*path, "bias"), "copy")]

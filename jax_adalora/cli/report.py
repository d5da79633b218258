"""Run outputs: the rank pattern JSON and heatmap PNG, atomic file writes, and the machine a result came from."""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
from pathlib import Path

import numpy as np

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
# The AdaLoRA paper's column order (W_q, W_k, W_v, W_o, W_f1, W_f2); other matrix types follow, first seen first.
PAPER_MATRIX_ORDER = (
    "attention.query",
    "attention.key",
    "attention.value",
    "attention.output",
    "intermediate",
    "output",
)


DISPLAY_DIGITS = 6  # significant digits of the figures a command prints (float32 holds about 7)


def for_display(tree):
    """``tree`` (dicts, lists, numbers) with every float rounded to :data:`DISPLAY_DIGITS` significant digits,
    for the JSON summary a command prints: ``0.8266666666666667`` -> ``0.826667``. The files keep full
    precision."""
    if isinstance(tree, dict):
        return {k: for_display(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [for_display(v) for v in tree]
    if isinstance(tree, float):
        return float(f"{tree:.{DISPLAY_DIGITS}g}")
    return tree


def rank_table(ranks: dict[str, int]) -> tuple[list[int], list[str], np.ndarray]:
    """Arranges ``{module_path: rank}`` as a (layers × matrix types) array.

    Layers ascend; matrix types follow :data:`PAPER_MATRIX_ORDER`, then any others in first-seen order
    (pytrees hand dicts back with sorted keys, so first-seen alone would be alphabetical)."""
    layers: list[int] = []
    kinds: list[str] = []
    cells = {}
    for path, rank in ranks.items():
        match = _LAYER.search(path)
        layer, kind = (int(match.group(1)), match.group(2)) if match else (0, path)
        if layer not in layers:
            layers.append(layer)
        if kind not in kinds:
            kinds.append(kind)
        cells[(layer, kind)] = rank
    layers.sort()
    kinds.sort(key=lambda k: PAPER_MATRIX_ORDER.index(k) if k in PAPER_MATRIX_ORDER else len(PAPER_MATRIX_ORDER))
    table = np.full((len(layers), len(kinds)), np.nan)
    for (layer, kind), rank in cells.items():
        table[layers.index(layer), kinds.index(kind)] = rank
    return layers, kinds, table


def save_rank_heatmap(ranks: dict[str, int], path: str | Path, *, title: str = "") -> None:
    """A heatmap of kept ranks: rows = layers, columns = adapted matrix types (the AdaLoRA paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, kinds, table = rank_table(ranks)
    fig, ax = plt.subplots(figsize=(1.2 * len(kinds) + 2.0, 0.45 * len(layers) + 1.6))
    image = ax.imshow(table, cmap="YlGn", aspect="auto", vmin=0)
    ax.set_xticks(range(len(kinds)), [k.replace("attention.", "attn.") for k in kinds], rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [f"layer {i}" for i in layers])
    for i in range(len(layers)):
        for j in range(len(kinds)):
            if not np.isnan(table[i, j]):
                ax.text(j, i, f"{table[i, j]:g}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="kept rank")
    ax.set_title(title or f"rank allocation (total {int(np.nansum(table))})")
    fig.tight_layout()
    atomic_write_bytes(path, _figure_png(fig))
    plt.close(fig)


def _figure_png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not the
    0600 of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def machine_summary() -> dict[str, str]:
    """The platform, JAX version and JAX backend, for the ``machine`` field of a result file."""
    import jax

    return {"platform": platform.platform(), "jax": jax.__version__, "backend": jax.default_backend()}

"""Sentence(-pair) examples with labels, checked against a task's label set, from files with named columns.

Shared by GLUE and the movie tasks: text columns are the task's ``text_keys``, the target column is
``label`` (class ids, class names, or numbers for regression), as in the hub's ``nyu-mll/glue``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError, read_records


@dataclasses.dataclass(frozen=True)
class LabelledTexts:
    """One split before tokenisation: the first texts, the optional second texts, the labels (N,)."""

    first: list[str]
    second: list[str] | None
    labels: np.ndarray  # int32 class ids, or float32 targets for regression
    origin: str  # where it came from, for messages

    def __len__(self) -> int:
        return len(self.first)

    def take(self, rows: Sequence[int]) -> LabelledTexts:
        rows = list(rows)
        second = None if self.second is None else [self.second[i] for i in rows]
        return LabelledTexts([self.first[i] for i in rows], second, self.labels[rows], self.origin)


def label_to_id(raw, spec: TaskSpec, where: str) -> int | float:
    """A raw label (class id, class name or number) as the task's label id or regression target.

    Raises ``TaskDataError`` naming ``where`` and the allowed set for anything else.
    """
    if spec.kind == "regression":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        low, high = spec.label_range or (-math.inf, math.inf)
        if not (math.isfinite(value) and low <= value <= high):
            raise TaskDataError(f"{where}: label {raw!r} is not a number in [{low:g}, {high:g}] for task {spec.name}")
        return value
    names = spec.label_names
    if isinstance(raw, str):
        text = raw.strip()
        if text in names:
            return names.index(text)
        if text.lstrip("-").isdigit():
            raw = int(text)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, int | np.integer) and not isinstance(raw, bool) and 0 <= raw < len(names):
        return int(raw)
    allowed = ", ".join(f"{i} / {name}" for i, name in enumerate(names))
    raise TaskDataError(f"{where}: label {raw!r} is not in the label set of task {spec.name} ({allowed})")


def text_field(value, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise TaskDataError(f"{where}: column {column!r} must be text, got {value!r:.80}")
    return value


def build(spec: TaskSpec, rows: list[tuple[str, Sequence, object]], origin: str) -> LabelledTexts:
    """From ``(where, texts, raw_label)`` rows: converts labels, checks there is at least one row."""
    if not rows:
        raise TaskDataError(f"{origin}: no examples")
    labels = [label_to_id(raw, spec, where) for where, _, raw in rows]
    dtype = np.float32 if spec.kind == "regression" else np.int32
    first = [texts[0] for _, texts, _ in rows]
    second = [texts[1] for _, texts, _ in rows] if spec.is_pair else None
    return LabelledTexts(first, second, np.asarray(labels, dtype), origin)


def read_named_split(spec: TaskSpec, path: str | os.PathLike) -> LabelledTexts:
    """A split from a JSON / JSON lines / CSV / TSV / parquet file with the task's columns and ``label``."""
    columns = (*spec.text_keys, "label")
    rows = []
    for where, record in read_records(path, required=columns):
        texts = [text_field(record[key], where, key) for key in spec.text_keys]
        rows.append((where, texts, record["label"]))
    return build(spec, rows, str(path))

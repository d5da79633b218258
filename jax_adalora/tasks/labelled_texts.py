"""A named task's split as Arrow rows with checked labels, from files with the task's columns.

Shared by GLUE and the movie and subjectivity tasks: text columns are the task's ``text_keys``, the target
column is ``label`` (class ids, class names, or numbers for regression), as in the hub's ``nyu-mll/glue``.
Files are read by ``datasets`` (:func:`jax_adalora.tasks.data_files.read_file`); each complaint names the
file and the line (csv, tsv, JSON lines) or the row (JSON, parquet; counted from 0) it is about.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from jax_adalora.tasks.data_files import read_file
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError

LABEL_COLUMN = "label"
# Named tasks' csv and tsv files as they were written: an empty cell is an empty text (not a missing value), and
# tsv cells are unquoted (a quote is text), as in GLUE's own TSVs.
_EMPTY_IS_TEXT = {"keep_default_na": False}
NAMED_CSV_OPTIONS = {".csv": _EMPTY_IS_TEXT, ".tsv": {"sep": "\t", "quoting": csv.QUOTE_NONE, **_EMPTY_IS_TEXT}}
_CHUNK = 8192


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledRows:
    """One split before tokenisation.

    Attributes:
      rows: a ``datasets.Dataset`` with (at least) the task's text columns, one row per example.
      labels: (N,) int32 class ids, or float32 targets for regression.
      origin: where the rows came from, for messages.
    """

    rows: object
    labels: np.ndarray
    origin: str

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> LabelledRows:
        """The rows ``keep`` (in that order); all rows give the split itself, so its tokenisation cache is shared."""
        if len(keep) == len(self) and np.array_equal(keep, np.arange(len(self))):
            return self
        return LabelledRows(self.rows.select(keep), self.labels[keep], self.origin)


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


def row_locator(path: str | os.PathLike, *, header: bool = True) -> Callable[[int], str]:
    """``row -> "path, line 7"`` (csv and tsv, where row 0 follows the header line; JSON lines) or
    ``"path, row 3"`` (JSON, parquet). Lines assume one line per row, as pandas counts rows without blank lines."""
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        first_line = 2 if header else 1
        return lambda row: f"{path}, line {row + first_line}"
    if suffix == ".jsonl":
        return lambda row: f"{path}, line {row + 1}"
    return lambda row: f"{path}, row {row}"


def labelled_rows(
    spec: TaskSpec, rows, origin: str, locate: Callable[[int], str], *, columns_where: str = ""
) -> LabelledRows:
    """Checks ``rows`` (a ``Dataset``) for the task's text columns and ``label`` and converts the labels.

    Args:
      spec: the named task.
      rows: its split, with columns named as the hub's (the task's ``text_keys`` and ``label``).
      origin: the file(s), for messages.
      locate: row -> its place in the file (:func:`row_locator`).
      columns_where: where a missing column is reported (a csv's header line); default the first row's place.

    Raises:
      TaskDataError: a missing column, a text that is not text, or a label outside the task's set or range,
        naming the file and the line or row.
    """
    if len(rows) == 0:
        raise TaskDataError(f"{origin}: no examples")
    required = (*spec.text_keys, LABEL_COLUMN)
    missing = [c for c in required if c not in rows.column_names]
    if missing:
        raise TaskDataError(
            f"{columns_where or locate(0)}: missing column(s) {', '.join(missing)} "
            f"(present: {', '.join(rows.column_names) or 'none'})"
        )
    out = np.empty(len(rows), np.float32 if spec.kind == "regression" else np.int32)
    needed = rows.select_columns(list(required))
    for start in range(0, len(rows), _CHUNK):
        chunk = needed[start : start + _CHUNK]
        for offset, raw in enumerate(chunk[LABEL_COLUMN]):
            for column in spec.text_keys:
                _check_text(chunk[column][offset], column, locate(start + offset))
            out[start + offset] = label_to_id(raw, spec, locate(start + offset))
    return LabelledRows(rows, out, origin)


def _check_text(value, column: str, where: str) -> None:
    if value is None:
        raise TaskDataError(f"{where}: missing column(s) {column}")
    if not isinstance(value, str):
        raise TaskDataError(f"{where}: column {column!r} must be text, got {value!r:.80}")


def read_named_split(
    spec: TaskSpec, path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> LabelledRows:
    """A split from a JSON / JSON lines / CSV / TSV / parquet file with the task's columns and ``label``."""
    suffix = Path(path).suffix.lower()
    rows = read_file(path, cache_dir=cache_dir, options=NAMED_CSV_OPTIONS.get(suffix), as_text=True)
    header = f"{path}, line 1" if suffix in NAMED_CSV_OPTIONS else ""
    return labelled_rows(spec, rows, str(path), row_locator(path), columns_where=header)


def read_train_and_validation(
    spec: TaskSpec,
    train_file: str | os.PathLike | None,
    validation_file: str | os.PathLike | None,
    task_files: Callable[[], Mapping[str, Path]],
    *,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[LabelledRows, dict[str, LabelledRows]]:
    """Train and ``{"validation": dev}`` from the user's two files when given, else from ``task_files()``
    (``{"train": path, "validation": path}``, the task's own split files)."""
    if train_file or validation_file:
        if not (train_file and validation_file):
            raise TaskDataError("--train-file and --validation-file go together: pass both")
        paths = {"train": train_file, "validation": validation_file}
    else:
        paths = task_files()
    splits = {name: read_named_split(spec, paths[name], cache_dir=cache_dir) for name in ("train", "validation")}
    return splits["train"], {"validation": splits["validation"]}


def concatenate(parts: Sequence[LabelledRows]) -> LabelledRows:
    """One split from several (the hub's shards of one split)."""
    import datasets

    if len(parts) == 1:
        return parts[0]
    return LabelledRows(
        datasets.concatenate_datasets([p.rows for p in parts]),
        np.concatenate([p.labels for p in parts]),
        ", ".join(p.origin for p in parts),
    )

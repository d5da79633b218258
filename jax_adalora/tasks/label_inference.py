"""The task of labelled text data, inferred from its columns and labels as transformers' ``run_glue.py`` does.

* text: the ``text_columns`` given, else ``sentence1`` + ``sentence2`` (a pair), else ``sentence``, else
  ``text``;
* label: the ``label_column`` (``label`` by default); integer, boolean or string labels make a
  classification task (the label list is the train split's distinct values, sorted), float labels a
  regression task; ``task_type`` forces either;
* metrics: accuracy and macro-F1 (plus Matthews correlation for two classes), accuracy selects
  checkpoints; Pearson and Spearman for regression, Pearson selects.

Every complaint is a ``TaskDataError`` naming the file, the row (counted from 1, the header not included) and
the column.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError

TASK_TYPES = ("auto", "classification", "regression")
DEFAULT_LABEL_COLUMN = "label"
COLUMN_CHUNK = 8192  # rows read from Arrow into Python at a time


def classification_metrics(num_labels: int) -> tuple[str, ...]:
    return ("accuracy", "macro_f1", "matthews_correlation") if num_labels == 2 else ("accuracy", "macro_f1")


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where the inputs and the target are: one or two text columns and the label column."""

    text: tuple[str, ...]
    label: str


def find_columns(dataset, origin: str, *, text_columns: Sequence[str] = (), label_column: str = "") -> Columns:
    """The text and label columns of a split (see the module docstring); a ``TaskDataError`` naming ``origin``
    and the columns present when they are not there."""
    present = list(dataset.column_names)
    label = label_column or DEFAULT_LABEL_COLUMN
    if text_columns:
        text = tuple(text_columns)
        if not 1 <= len(text) <= 2:
            raise TaskDataError(f"--text-columns {','.join(text)}: expected one or two column names")
        missing = [c for c in text if c not in present]
        if missing:
            raise TaskDataError(
                f"{origin}: no column(s) {', '.join(map(repr, missing))} (--text-columns); "
                f"columns: {', '.join(present)}"
            )
    elif "sentence1" in present and "sentence2" in present:
        text = ("sentence1", "sentence2")
    elif "sentence" in present:
        text = ("sentence",)
    elif "text" in present:
        text = ("text",)
    else:
        raise TaskDataError(
            f"{origin}: no text column: expected 'sentence' or 'text', or 'sentence1' and 'sentence2', or name "
            f"them with --text-columns; columns: {', '.join(present)}"
        )
    if label in text:
        raise TaskDataError(f"{origin}: the label column {label!r} is also a text column")
    return Columns(text, label)


def check_texts(dataset, columns: Columns, origin: str) -> None:
    """Every text cell is a string with something besides whitespace: a ``TaskDataError`` naming the file, row
    and column otherwise (an empty or blank text is a row to fix, not an example to train on)."""
    for column in columns.text:
        start = 0
        for chunk in column_chunks(dataset, column):
            for offset, value in enumerate(chunk):
                if isinstance(value, str) and value.strip():
                    continue
                if value is None or value == "":
                    what = "is empty"
                elif isinstance(value, str):
                    what = "holds only whitespace"
                else:
                    what = f"holds {value!r:.60}, not text"
                raise TaskDataError(f"{origin}, row {start + offset + 1}: column {column!r} {what}")
            start += len(chunk)


def infer_label_kind(values: Sequence, column: str, origin: str, task_type: str = "auto") -> str:
    """``classification`` or ``regression`` from the type of a label column's ``values`` (or ``task_type``)."""
    if task_type not in TASK_TYPES:
        raise TaskDataError(f"--task-type {task_type!r}: expected one of {', '.join(TASK_TYPES)}")
    kinds = {_value_kind(v) for v in values}
    if len(kinds) > 1:
        first = _value_kind(values[0])
        row = next(i for i, v in enumerate(values) if _value_kind(v) != first)
        raise TaskDataError(
            f"{origin}, row {row + 1}: label {values[row]!r} is {_value_kind(values[row])}, but row 1's label "
            f"{values[0]!r} is {first}; use one type for the whole {column!r} column"
        )
    (kind,) = kinds
    if task_type != "auto":
        return task_type
    return "regression" if kind == "a number with a fraction" else "classification"


_MISSING_TEXTS = frozenset({"nan", "na", "n/a", "null", "none", "-"})
_SHOWN_ROWS = 3


def _is_number_text(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def check_number_column(values: Sequence, column: str, origin: str) -> None:
    """A label column read as text in which most values are numbers and a few are not (``nan``, ``good`` in a
    column of 0 and 1) is refused: one line naming the rows and values, instead of a task with a class per
    distinct number. A column that is mostly text with a few numbers is refused the same way."""
    if not values or not all(isinstance(v, str) for v in values):
        return
    numbers = [_is_number_text(v) for v in values]
    count = sum(numbers)
    if count == 0 or count == len(values):
        return
    odd_is_number = count < len(values) - count
    rows = [row for row, is_number in enumerate(numbers) if is_number == odd_is_number]
    shown = ", ".join(str(row + 1) for row in rows[:_SHOWN_ROWS])
    shown += f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else ""
    texts = ", ".join(repr(values[row]) for row in rows[:_SHOWN_ROWS])
    others = len(values) - len(rows)
    plural = len(rows) > 1
    where = f"{origin}, row{'s' if plural else ''} {shown}"
    if not odd_is_number and all(values[row].strip().lower() in _MISSING_TEXTS for row in rows):
        raise TaskDataError(
            f"{where}: no label in column {column!r} ({texts}), whose other {others} rows hold numbers; "
            "give every row its label"
        )
    if odd_is_number:
        what, others_are = ("are numbers" if plural else "is a number"), "text"
    else:
        what, others_are = ("are not numbers" if plural else "is not a number"), "numbers"
    raise TaskDataError(
        f"{where}: label{'s' if plural else ''} {texts} {what}, but the other {others} labels in column {column!r} "
        f"are {others_are}; use one type for the whole column"
    )


def _value_kind(value) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, float) and not float(value).is_integer():
        return "a number with a fraction"
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return "a number"
    return type(value).__name__


def _label_values(dataset, column: str, origin: str) -> list:
    if column not in dataset.column_names:
        raise TaskDataError(
            f"{origin}: no label column {column!r} (--label-column); columns: {', '.join(dataset.column_names)}"
        )
    values = []
    for chunk in column_chunks(dataset, column):
        values.extend(chunk)
    for row, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise TaskDataError(f"{origin}, row {row + 1}: no label in column {column!r}")
    return values


def column_chunks(dataset, column: str):
    for start in range(0, len(dataset), COLUMN_CHUNK):
        yield dataset[start : start + COLUMN_CHUNK][column]


def label_name(value) -> str:
    """A label as its name: ``'sports'``, ``'3'`` (an integer-valued number), ``'True'``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def label_list(values: Sequence) -> tuple[str, ...]:
    """The distinct labels of the train split's ``values`` as names, sorted (numerically when they are numbers)."""
    distinct = set(values)
    if all(isinstance(v, bool | int | float | np.integer | np.floating) for v in distinct):
        return tuple(label_name(v) for v in sorted(distinct, key=float))
    return tuple(sorted({label_name(v) for v in distinct}))


def label_ids(dataset, column: str, origin: str, spec: TaskSpec) -> np.ndarray:
    """The split's labels as class ids (int32) or targets (float32); a ``TaskDataError`` naming the file,
    row and value for a class not in the train split's label list, or a non-number for regression."""
    values = _label_values(dataset, column, origin)
    if spec.kind == "regression":
        out = np.empty(len(values), np.float32)
        for row, value in enumerate(values):
            try:
                out[row] = float(value)
            except (TypeError, ValueError):
                raise TaskDataError(f"{origin}, row {row + 1}: label {value!r} is not a number") from None
            if not math.isfinite(out[row]):
                raise TaskDataError(f"{origin}, row {row + 1}: label {value!r} is not a finite number")
        return out
    index = {name: i for i, name in enumerate(spec.label_names)}
    out = np.empty(len(values), np.int32)
    for row, value in enumerate(values):
        name = label_name(value)
        if name not in index and spec.source != "files" and name.lstrip("-").isdigit():
            name = spec.label_names[int(name)] if 0 <= int(name) < len(spec.label_names) else name  # a class id
        if name not in index:
            raise TaskDataError(
                f"{origin}, row {row + 1}: label {value!r} is not among the train split's labels "
                f"({', '.join(spec.label_names)})"
            )
        out[row] = index[name]
    return out


def infer_spec(train, origin: str, *, name: str, columns: Columns, task_type: str = "auto") -> TaskSpec:
    """The task of a dataset from its train split: kind, labels, metrics."""
    values = _label_values(train, columns.label, origin)
    check_number_column(values, columns.label, origin)
    kind = infer_label_kind(values, columns.label, origin, task_type)
    if kind == "regression":
        return TaskSpec(
            name=name,
            kind="regression",
            source="files",
            text_keys=columns.text,
            metrics=("pearson", "spearman"),
            main_metric="pearson",
        )
    names = label_list(values)
    if len(names) < 2:
        raise TaskDataError(f"{origin}: every label is {names[0]!r}; classification needs at least two classes")
    return TaskSpec(
        name=name,
        kind="classification",
        source="files",
        text_keys=columns.text,
        label_names=names,
        metrics=classification_metrics(len(names)),
    )


def spec_from_dict(saved: dict) -> TaskSpec:
    """A ``TaskSpec`` back from :func:`spec_to_dict` (a run's ``config.json``)."""
    fields = {f.name for f in dataclasses.fields(TaskSpec)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields}
    return TaskSpec(**values)


def spec_to_dict(spec: TaskSpec) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}

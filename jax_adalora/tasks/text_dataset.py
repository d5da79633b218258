"""Any labelled text data as a task: local files or a hub dataset, read and tokenised by Hugging Face ``datasets``.

The task is inferred from the data, in the conventions of transformers' ``run_glue.py``:

* text: the ``text_columns`` given, else ``sentence1`` + ``sentence2`` (a pair), else ``sentence``, else
  ``text``;
* label: the ``label_column`` (``label`` by default); integer, boolean or string labels make a
  classification task (the label list is the train split's distinct values, sorted), float labels a
  regression task; ``task_type`` forces either;
* metrics: accuracy and macro-F1 (plus Matthews correlation for two classes), accuracy selects
  checkpoints; Pearson and Spearman for regression, Pearson selects.

Files (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``) are converted once to Arrow by
``datasets.load_dataset`` and tokenised with ``Dataset.map``; both are cached under ``cache_dir`` and
fingerprinted, so a second run on the same file with the same tokenizer reads the cached token ids. Errors
name the file and the row (rows count from 1, the header not included).

    >>> data = load_text_dataset(tokenizer=tok, train_file="topics.csv", validation_file="dev.csv")
    >>> data.spec.kind, data.spec.label_names, data.spec.metrics
    ('classification', ('business', 'sports', 'tech'), ('accuracy', 'macro_f1'))
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jax_adalora.tasks.batching import EncodedSplit, pad_rows
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import DataUnavailableError, TaskDataError, endpoint_reachable, read_text, require_file

log = logging.getLogger("jax_adalora.tasks")

# Only an empty csv cell is missing: pandas' default would also read the texts "NA", "null" or "nan" as missing.
_CSV_CELLS = {"keep_default_na": False, "na_values": [""]}
# A tsv cell is read as written: a quote is text (a cell that starts with `"` is not a quoted field).
FILE_TYPES = {
    ".csv": ("csv", _CSV_CELLS),
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE, **_CSV_CELLS}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
TASK_TYPES = ("auto", "classification", "regression")
DEFAULT_LABEL_COLUMN = "label"
_TOKENISE_BATCH = 1000
_TO_NUMPY_CHUNK = 8192


def classification_metrics(num_labels: int) -> tuple[str, ...]:
    return ("accuracy", "macro_f1", "matthews_correlation") if num_labels == 2 else ("accuracy", "macro_f1")


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where the inputs and the target are: one or two text columns and the label column."""

    text: tuple[str, ...]
    label: str


def data_name(train_file: str | os.PathLike = "", dataset: str = "", dataset_config: str = "") -> str:
    """A name for the data: a hub dataset's (``imdb``, ``glue-mrpc``), else the train file's stem (``topics`` for
    ``topics.csv``), or its folder's name when the stem only names the split (``movies`` for ``movies/train.csv``)."""
    if dataset:
        return dataset.rsplit("/", 1)[-1] + (f"-{dataset_config}" if dataset_config else "")
    path = Path(train_file)
    generic = path.stem.lower() in ("train", "training", "train_data", "train-data")
    return path.resolve().parent.name if generic and path.resolve().parent.name else path.stem


def local_files_hint() -> str:
    return (
        "Pass local files instead: --train-file and --validation-file (csv, tsv, json, jsonl or parquet with a "
        "text column, 'sentence' or 'text', or 'sentence1' and 'sentence2', and a 'label' column)"
    )


# ---- reading ---------------------------------------------------------------------------------------


def read_file(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    options: dict | None = None,
    as_text: bool = False,
):
    """One file as a ``datasets.Dataset`` (Arrow, memory-mapped from the cache).

    Args:
      path: a ``.csv``, ``.tsv``, ``.json``, ``.jsonl`` or ``.parquet`` file. A ``.json`` file holds a list of
        records, JSON lines, or an object with one list of records (``{"version": .., "data": [..]}``).
      cache_dir: the ``datasets`` cache (None: its default).
      options: the csv builder's options instead of the suffix's own (``FILE_TYPES``), e.g. GLUE's unquoted TSVs.
      as_text: csv/tsv only: every column read as text, not typed by pandas (``'7.5'`` stays as written).

    Raises:
      FileNotFoundError: no such file.
      TaskDataError: an unsupported suffix, a file that cannot be parsed (naming the file and the line: bytes
        that are not UTF-8, a line with too many fields, malformed JSON), or no rows.
    """
    path = require_file(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet")
    builder, defaults = FILE_TYPES[suffix]
    options = dict(defaults if options is None else options)
    if builder == "csv":
        _check_header(path, options)
    _quiet_datasets()
    try:
        if as_text and builder == "csv":
            options["features"] = _text_features(path, options)
        loaded = _load_file(builder, path, cache_dir, options)
        if suffix == ".json":
            loaded = _unwrapped(loaded, path, cache_dir)
    except Exception as err:  # the parsers behind datasets (pandas, pyarrow) raise many types
        raise _read_error(err, path, options) from None
    if len(loaded) == 0:
        raise TaskDataError(f"{path}: no examples in the file")
    return loaded


def _load_file(builder: str, path: Path, cache_dir, options: dict):
    import datasets

    return datasets.load_dataset(
        builder, data_files={"rows": str(path)}, cache_dir=_cache(cache_dir), split="rows", **options
    )


def _text_features(path: Path, options: dict):
    """Every column of a csv as text, the columns named by its header (or by ``options["names"]``)."""
    import datasets
    import pandas

    pandas_options = {k: v for k, v in options.items() if k != "features"}
    names = pandas.read_csv(path, nrows=0, encoding="utf-8", **pandas_options).columns
    return datasets.Features({str(name): datasets.Value("string") for name in names})


def _check_header(path: Path, options: dict) -> None:
    """A header naming one column twice is refused (pandas would read the second as ``name.1``)."""
    if options.get("header", "infer") is None or options.get("names"):
        return
    sep = options.get("sep", ",")
    quoting = options.get("quoting", csv.QUOTE_MINIMAL)
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        header = next(csv.reader(handle, delimiter=sep, quoting=quoting), [])
    seen = set()
    for name in header:
        if name and name in seen:
            raise TaskDataError(f"{path}, line 1: column {name!r} appears twice in the header; rename or drop one")
        seen.add(name)


def _unwrapped(loaded, path: Path, cache_dir):
    """The records of a ``.json`` file that is one object holding one list of records (SQuAD's ``data``)."""
    import datasets

    lists = [k for k, v in loaded.features.items() if isinstance(v, datasets.List | datasets.Sequence)]
    if len(loaded) != 1 or len(lists) != 1 or not isinstance(loaded.features[lists[0]].feature, dict):
        return loaded
    return _load_file("json", path, cache_dir, {"field": lists[0]})


_FIELD_COUNT = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _read_error(err: Exception, path: Path, options: dict) -> TaskDataError:
    """One line naming the file and, where it can be found, the line of a parse failure."""
    if "corresponds to no data" in str(err):
        return TaskDataError(f"{path}: no examples in the file")
    cause = err.__cause__ or err
    if isinstance(cause, UnicodeDecodeError):
        try:
            read_text(path)  # raises with the line and column of the first byte that is not UTF-8
        except TaskDataError as located:
            return located
    text = " ".join(str(cause).split()) or type(cause).__name__
    fields = _FIELD_COUNT.search(text)
    if fields:
        expected, line, seen = fields.groups()
        kind = "tab-separated" if options.get("sep") == "\t" else "comma-separated"
        return TaskDataError(f"{path}, line {line}: {seen} {kind} fields, expected {expected}")
    if path.suffix.lower() in (".json", ".jsonl"):
        located = json_problem(path)
        if located:
            return TaskDataError(located)
    return TaskDataError(f"{path}: cannot be read as {path.suffix[1:].lower()}: {text}")


def json_problem(path: Path) -> str | None:
    """What is wrong with a JSON or JSON lines file: no content, or where it is malformed (``path, line 2,
    column 19: malformed JSON: ..``), found by parsing it again with Python's decoder, which reports lines and
    columns; None when that parses it."""
    text = read_text(path)
    if not text.strip():
        return f"{path}: no examples in the file"
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":
            return f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
    for number, line in enumerate(text.splitlines(), start=1):  # several values: JSON lines
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as err:
            return f"{path}, line {number}, column {err.colno}: malformed JSON: {err.msg}"
    return None


def read_hub_dataset(name: str, config: str | None, *, cache_dir: str | os.PathLike | None = None) -> dict:
    """A hub dataset's splits ``{split: Dataset}``; offline it fails at once, saying which local files to pass."""
    import datasets

    what = f"--dataset {name}" + (f" --dataset-config {config}" if config else "")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline and not endpoint_reachable():
        raise DataUnavailableError(
            f"{what}: the Hugging Face hub is unreachable. {local_files_hint()}; or, for a dataset already in the "
            "datasets cache, set HF_HUB_OFFLINE=1"
        )
    _quiet_datasets()
    try:
        return dict(datasets.load_dataset(name, config or None, cache_dir=_cache(cache_dir)))
    except Exception as err:
        raise DataUnavailableError(
            f"{what}: loading failed ({' '.join(str(err).split())}). {local_files_hint()}"
        ) from None


def _cache(cache_dir) -> str | None:
    return str(Path(cache_dir).expanduser()) if cache_dir else None


def _quiet_datasets() -> None:
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


# ---- inferring the task ----------------------------------------------------------------------------


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
        for chunk in _column_chunks(dataset, column):
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
    for chunk in _column_chunks(dataset, column):
        values.extend(chunk)
    for row, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise TaskDataError(f"{origin}, row {row + 1}: no label in column {column!r}")
    return values


def _column_chunks(dataset, column: str):
    for start in range(0, len(dataset), _TO_NUMPY_CHUNK):
        yield dataset[start : start + _TO_NUMPY_CHUNK][column]


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


# ---- tokenising ------------------------------------------------------------------------------------


def tokenise(dataset, tokenizer, columns: Columns, *, max_seq_length: int, labels: np.ndarray | None) -> EncodedSplit:
    """Token ids of every row (:func:`tokenised_rows`, cached), as an ``EncodedSplit`` padded to the split's
    longest row."""
    return _encoded(tokenised_rows(dataset, tokenizer, columns, max_seq_length=max_seq_length), tokenizer, labels)


def tokenised_rows(dataset, tokenizer, columns: Columns, *, max_seq_length: int):
    """``input_ids`` and ``token_type_ids`` of every row through ``Dataset.map``: ``datasets`` fingerprints
    the rows, this function and the tokenizer, and reads a cached result when all three are unchanged.

    Raises:
      ValueError: ``max_seq_length`` leaves no token for a text beside the tokenizer's special tokens (the
        tokenizer would then return rows longer than asked, or rows of special tokens alone).
    """
    text = columns.text
    check_room_for_text(tokenizer, max_seq_length, len(text))

    def encode(batch):
        enc = tokenizer(
            batch[text[0]],
            batch[text[1]] if len(text) == 2 else None,
            truncation=True,
            max_length=max_seq_length,
            padding=False,
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        ids = enc["input_ids"]
        types = enc.get("token_type_ids") or [[0] * len(r) for r in ids]
        return {"input_ids": ids, "token_type_ids": types}

    _quiet_datasets()
    return dataset.select_columns(list(text)).map(
        encode, batched=True, batch_size=_TOKENISE_BATCH, remove_columns=list(text), desc="tokenising"
    )


def check_room_for_text(tokenizer, max_seq_length: int, texts: int) -> None:
    """``max_seq_length`` holds the special tokens and at least one token of each of the ``texts`` (1 or 2)."""
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    if count is None:
        return
    special = count(pair=texts == 2)
    needed = special + texts
    if max_seq_length < needed:
        what = "each pair of texts" if texts == 2 else "each text"
        raise ValueError(
            f"TrainConfig.max_seq_length={max_seq_length}: too short: the tokenizer adds {special} special tokens "
            f"to {what}, which leaves no room for the text; pass --max-seq-length {needed} or more"
        )


def _encoded(tokens, tokenizer, labels: np.ndarray | None) -> EncodedSplit:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids_parts, type_parts, length_parts = [], [], []
    for start in range(0, len(tokens), _TO_NUMPY_CHUNK):
        chunk = tokens[start : start + _TO_NUMPY_CHUNK]
        length_parts.append(np.array([len(r) for r in chunk["input_ids"]], np.int32))
        ids_parts.append(pad_rows(chunk["input_ids"], pad_id))
        type_parts.append(pad_rows(chunk["token_type_ids"], 0))
    lengths = np.concatenate(length_parts)
    width = int(lengths.max(initial=1))
    widen = lambda parts, fill: np.concatenate(
        [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) for p in parts]
    )
    input_ids = widen(ids_parts, pad_id)
    return EncodedSplit(
        input_ids=input_ids,
        attention_mask=(np.arange(width)[None, :] < lengths[:, None]).astype(np.int32),
        token_type_ids=widen(type_parts, 0),
        lengths=lengths,
        labels=labels,
        pad_token_id=int(pad_id),
    )


# ---- the whole task ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextSplits:
    """Labelled text data before tokenisation: the spec, the columns and the Arrow-backed splits with origins."""

    spec: TaskSpec
    columns: Columns
    train: object
    evals: dict[str, object]
    origins: dict[str, str]


def read_text_splits(
    *,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    dataset: str = "",
    dataset_config: str = "",
    text_columns: Sequence[str] = (),
    label_column: str = "",
    task_type: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    name: str = "",
) -> TextSplits:
    """Reads and checks the train and validation splits and infers the task (nothing tokenised yet).

    Either ``train_file`` and ``validation_file``, or a hub ``dataset`` (its ``train`` and ``validation``
    splits; ``validation_file`` may stand in for a missing validation split).
    """
    if dataset:
        hub = read_hub_dataset(dataset, dataset_config or None, cache_dir=cache_dir)
        if "train" not in hub:
            raise TaskDataError(f"--dataset {dataset}: no 'train' split (splits: {', '.join(hub)})")
        origins = {"train": f"{dataset} train"}
        evals = {}
        if validation_file:
            evals["validation"] = read_file(validation_file, cache_dir=cache_dir)
            origins["validation"] = str(validation_file)
        elif "validation" in hub:
            evals["validation"] = hub["validation"]
            origins["validation"] = f"{dataset} validation"
        else:
            raise TaskDataError(
                f"--dataset {dataset}: no 'validation' split (splits: {', '.join(hub)}); pass --validation-file"
            )
        train = hub["train"]
        name = name or data_name(dataset=dataset, dataset_config=dataset_config)
    else:
        if not (train_file and validation_file):
            raise TaskDataError("--train-file and --validation-file go together: pass both (or --dataset NAME)")
        train = read_file(train_file, cache_dir=cache_dir)
        evals = {"validation": read_file(validation_file, cache_dir=cache_dir)}
        origins = {"train": str(train_file), "validation": str(validation_file)}
        name = name or data_name(train_file)
    columns = find_columns(train, origins["train"], text_columns=text_columns, label_column=label_column)
    for split, data in evals.items():
        find_columns(data, origins[split], text_columns=columns.text, label_column=columns.label)
    spec = infer_spec(train, origins["train"], name=name, columns=columns, task_type=task_type)
    for split, data in {"train": train, **evals}.items():
        check_texts(data, columns, origins[split])
    return TextSplits(spec, columns, train, evals, origins)


def read_unlabelled(
    path: str | os.PathLike, spec: TaskSpec, *, cache_dir=None, text_columns: Sequence[str] = (), label_column: str = ""
):
    """A file to predict on: its rows (``datasets.Dataset``), its columns and, when it has the label column, its
    label ids (checked against the task's label list).

    The text columns are ``text_columns``, else the task's own (``sentence`` for ``movie-sentiment``), else,
    when the file lacks those, the usual ones (``sentence1`` + ``sentence2``, ``sentence``, ``text``) if they are
    as many as the task reads.
    """
    rows = read_file(path, cache_dir=cache_dir)
    label = label_column or DEFAULT_LABEL_COLUMN
    wanted = tuple(text_columns) or tuple(spec.text_keys)
    missing = [c for c in wanted if c not in rows.column_names]
    if missing and not text_columns:
        try:
            inferred = find_columns(rows, str(path), label_column=label).text
        except TaskDataError:
            inferred = ()
        if len(inferred) == len(wanted):
            wanted, missing = inferred, []
    if missing:
        raise TaskDataError(
            f"{path}: no column(s) {', '.join(map(repr, missing))}, the text the run's task {spec.name} reads "
            f"(or pass --text-columns); columns: {', '.join(rows.column_names)}"
        )
    columns = Columns(wanted, label)
    check_texts(rows, columns, str(path))
    labels = label_ids(rows, columns.label, str(path), spec) if columns.label in rows.column_names else None
    return rows, columns, labels

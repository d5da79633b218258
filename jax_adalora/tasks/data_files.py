"""Data files and hub datasets read by Hugging Face ``datasets``: the one reader every task uses.

:func:`read_file` turns a ``.csv``, ``.tsv``, ``.json``, ``.jsonl`` or ``.parquet`` file into a
``datasets.Dataset`` (converted once to Arrow and cached under ``cache_dir``); a file that cannot be parsed
is a ``TaskDataError`` naming the file and, where it can be found, the line. :func:`read_hub_dataset` loads a
hub dataset and, offline, fails at once saying which local files to pass instead.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from jax_adalora.tasks.sources import DataUnavailableError, TaskDataError, endpoint_reachable, read_text, require_file

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
    quiet_datasets()
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
        builder, data_files={"rows": str(path)}, cache_dir=cache_path(cache_dir), split="rows", **options
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
    quiet_datasets()
    try:
        return dict(datasets.load_dataset(name, config or None, cache_dir=cache_path(cache_dir)))
    except Exception as err:
        raise DataUnavailableError(
            f"{what}: loading failed ({' '.join(str(err).split())}). {local_files_hint()}"
        ) from None


def cache_path(cache_dir) -> str | None:
    return str(Path(cache_dir).expanduser()) if cache_dir else None


def quiet_datasets() -> None:
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()

"""Predictions written beside the input rows, in the input's format (csv, tsv, json, jsonl or parquet).

Each input row keeps its columns and gains ``prediction`` (a label name, or a number for regression) and,
for classification, ``probability_<label>`` per class. The file is written whole to a temporary name in
the same directory and renamed, so a reader never sees half a file; an existing file is never replaced.

    >>> write_predictions(rows, "out.csv", predictions=["sports", "tech"], probabilities=probs,
    ...                   label_names=("sports", "tech"))
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jax_adalora.tasks.data_files import FILE_TYPES

PREDICTION_COLUMN = "prediction"


def check_output_file(path: str | os.PathLike, flag: str = "--output-file", *, replace: bool = False) -> Path:
    """The output path, checked before any work: a supported suffix, no existing file (unless ``replace``: the
    run's own output, written again), a directory to write to."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a directory; name a file in it, such as {path / 'predictions.csv'}")
    if suffix not in FILE_TYPES:
        raise ValueError(f"{flag} {path}: unsupported file type {suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet")
    if path.exists() and not replace:
        raise FileExistsError(f"{flag} {path} already exists; refusing to overwrite it: choose another path")
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"{flag} {path}: {path.parent} is not a directory")
    return path


def default_output_file(run_dir: Path, input_file: str | os.PathLike, *, refuse_existing: bool = True) -> Path:
    """``RUN/<input stem>.predictions.<input suffix>``.

    With ``refuse_existing`` (the predict command), an existing file is a ``FileExistsError`` naming it and
    ``--output-file``: a second prediction never replaces the first, nor lands beside it under another name.
    Without (the training command's ``--test-file``), the path is the run's own output, written again when the
    same run finishes again (a resume of a finished run)."""
    source = Path(input_file)
    candidate = run_dir / f"{source.stem}.predictions{source.suffix}"
    if refuse_existing and candidate.exists():
        raise FileExistsError(
            f"{candidate} already exists (the default output for --input-file {input_file}); refusing to overwrite "
            "it: pass --output-file with a new path, or move the old file away"
        )
    return candidate


def with_predictions(rows, predictions: Sequence, probabilities: np.ndarray | None, label_names: Sequence[str]):
    """The rows as a pandas frame, with the prediction columns appended."""
    frame = rows.to_pandas()
    taken = set(frame.columns)
    column = PREDICTION_COLUMN if PREDICTION_COLUMN not in taken else f"{PREDICTION_COLUMN}_jax_adalora"
    frame[column] = list(predictions)
    if probabilities is not None:
        for index, name in enumerate(label_names):
            frame[f"probability_{name}"] = np.asarray(probabilities[:, index], np.float64)
    return frame


def write_predictions(
    rows,
    path: str | os.PathLike,
    *,
    predictions: Sequence,
    probabilities: np.ndarray | None = None,
    label_names: Sequence[str] = (),
    replace: bool = False,
) -> Path:
    """Writes ``rows`` (a ``datasets.Dataset``) with their predictions to ``path``, atomically; an existing file
    only with ``replace`` (the training command's own ``--test-file`` output).

    Args:
      rows: the input rows, in order.
      path: the output; its suffix picks the format.
      predictions: one label name (classification) or number (regression) per row.
      probabilities: (N, num_labels) class probabilities, or None.
      label_names: the class names, in the probabilities' column order.
    """
    path = check_output_file(path, replace=replace)
    frame = with_predictions(rows, predictions, probabilities, label_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            frame.to_csv(staging, sep="," if suffix == ".csv" else "\t", index=False)
        elif suffix == ".jsonl":
            frame.to_json(staging, orient="records", lines=True, force_ascii=False)
        elif suffix == ".json":
            frame.to_json(staging, orient="records", force_ascii=False, indent=1)
        else:
            frame.to_parquet(staging, index=False)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path

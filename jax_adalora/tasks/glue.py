"""GLUE data from three sources: GLUE's own TSVs, files with named columns, or the hub's ``nyu-mll/glue``.

1. ``data_dir``: a task folder as GLUE distributes it (``train.tsv`` and ``dev.tsv``; MNLI has
   ``dev_matched.tsv`` and ``dev_mismatched.tsv``), or the GLUE root holding that folder (``SST-2/``).
   Each task has its own column layout (``GLUE_TSV_LAYOUTS``); GLUE's TSVs are unquoted.
2. ``train_file`` / ``validation_file``: JSON, JSON lines, CSV, TSV or parquet with the hub's column
   names (the task's text keys and ``label``). For MNLI, ``validation_file`` may name two files
   separated by a comma: matched, then mismatched.
3. Neither: the parquet files of ``nyu-mll/glue`` from the hub (or its cache); offline this fails in
   seconds with a message saying how to pass local files.

    >>> train, evals = load_glue_splits(get_task_spec("rte"), data_dir="glue_data")
    >>> evals["validation"].labels[:3]   # entailment 0, not_entailment 1
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jax_adalora.tasks import labelled_texts
from jax_adalora.tasks.labelled_texts import LabelledTexts, read_named_split
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError, hub_parquet_files, read_glue_tsv

# Task -> (text columns, label column) by header name; CoLA's files have no header: by position.
GLUE_TSV_LAYOUTS: dict[str, tuple[tuple, object]] = {
    "cola": ((3,), 1),  # source, label, original label, sentence
    "sst2": (("sentence",), "label"),
    "mrpc": (("#1 String", "#2 String"), "Quality"),
    "qqp": (("question1", "question2"), "is_duplicate"),
    "stsb": (("sentence1", "sentence2"), "score"),
    "mnli": (("sentence1", "sentence2"), "gold_label"),
    "qnli": (("question", "sentence"), "label"),
    "rte": (("sentence1", "sentence2"), "label"),
}
# Eval split -> GLUE's file name for it.
GLUE_DEV_FILES = {
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


def local_files_hint(spec: TaskSpec) -> str:
    columns = ", ".join((*spec.text_keys, "label"))
    return (
        f"Pass local files instead: --data-dir DIR (GLUE's {spec.glue_dir}/ folder with train.tsv and dev TSVs) "
        f"or --train-file/--validation-file (json, jsonl, csv or parquet with columns {columns})."
    )


def read_glue_tsv_split(spec: TaskSpec, path: str | os.PathLike) -> LabelledTexts:
    """One split from a TSV in GLUE's own layout for ``spec``."""
    text_columns, label_column = GLUE_TSV_LAYOUTS[spec.name]
    has_header = spec.name != "cola"
    header, lines = read_glue_tsv(Path(path), header=has_header)
    if has_header:
        missing = [c for c in (*text_columns, label_column) if c not in header]
        if missing:
            raise TaskDataError(
                f"{path}, line 1: missing column(s) {', '.join(missing)} in the header for GLUE {spec.glue_dir} "
                f"(header: {header})"
            )
        text_index = [header.index(c) for c in text_columns]
        label_index = header.index(label_column)
        width = len(header)
    else:
        text_index, label_index = list(text_columns), label_column
        width = 4
    rows = []
    for number, fields in lines:
        where = f"{path}, line {number}"
        if len(fields) != width:
            expected = f"the header's {width}" if has_header else f"{width} (source, label, original label, sentence)"
            raise TaskDataError(f"{where}: {len(fields)} tab-separated fields, expected {expected}")
        rows.append((where, [fields[i] for i in text_index], fields[label_index]))
    return labelled_texts.build(spec, rows, str(path))


def task_folder(spec: TaskSpec, data_dir: str | os.PathLike) -> Path:
    """``data_dir`` itself when it holds ``train.tsv``, else its sub-folder for the task."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data-dir {root} is not a directory")
    for folder in (root, root / spec.glue_dir, root / spec.name, root / spec.name.upper()):
        if (folder / "train.tsv").is_file():
            return folder
    raise FileNotFoundError(
        f"--data-dir {root}: no GLUE {spec.glue_dir} files (expected {root / 'train.tsv'} or "
        f"{root / spec.glue_dir / 'train.tsv'})"
    )


def validation_paths(spec: TaskSpec, validation_file: str) -> dict[str, str]:
    """Eval split name -> file, from a single path or (MNLI) two comma-separated paths."""
    paths = [p.strip() for p in str(validation_file).split(",") if p.strip()]
    if len(paths) == 1:
        return {spec.eval_splits[0]: paths[0]}
    if len(paths) == len(spec.eval_splits):
        return dict(zip(spec.eval_splits, paths, strict=True))
    raise TaskDataError(
        f"--validation-file: {len(paths)} files given; task {spec.name} takes 1 or {len(spec.eval_splits)} "
        f"({', '.join(spec.eval_splits)})"
    )


def load_glue_splits(
    spec: TaskSpec,
    *,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | None = None,
) -> tuple[LabelledTexts, dict[str, LabelledTexts]]:
    """The train split and the eval splits (by name) of a GLUE task, from the first source given."""
    if train_file or validation_file:
        if not (train_file and validation_file):
            raise TaskDataError("--train-file and --validation-file go together: pass both")
        train = read_named_split(spec, train_file)
        return train, {name: read_named_split(spec, p) for name, p in validation_paths(spec, validation_file).items()}
    if data_dir:
        folder = task_folder(spec, data_dir)
        train = read_glue_tsv_split(spec, folder / "train.tsv")
        return train, {name: read_glue_tsv_split(spec, folder / GLUE_DEV_FILES[name]) for name in spec.eval_splits}
    hint = local_files_hint(spec)
    splits = {}
    for name in ("train", *spec.eval_splits):
        parts = [read_named_split(spec, p) for p in hub_parquet_files(spec.hub_id, spec.hub_config, name, hint=hint)]
        splits[name] = _concatenate(parts)
    train = splits.pop("train")
    return train, splits


def _concatenate(parts: list[LabelledTexts]) -> LabelledTexts:
    if len(parts) == 1:
        return parts[0]
    second = None if parts[0].second is None else [t for p in parts for t in p.second]
    return LabelledTexts(
        [t for p in parts for t in p.first],
        second,
        np.concatenate([p.labels for p in parts]),
        ", ".join(p.origin for p in parts),
    )

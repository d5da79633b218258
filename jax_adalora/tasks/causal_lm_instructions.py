"""The built-in labelled tasks in instruction form, for causal LMs: each sentence inside the task's prompt
template, the label word as the completion.

    python -m jax_adalora.train --model smollm2-135m-instruct --task movie-sentiment   # configs/llm.py

The splits are the encoder tasks' own (the same sentences, the same dev split); the main metric is the exact
match of the greedy completion with the label word, which is the dev accuracy of the classifier it replaces.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from jax_adalora.tasks.causal_lm import CausalLMSplit, CausalLMTask, encode_causal_lm

INSTRUCTION_TEMPLATES = {
    "movie-sentiment": "Review: {text}\nSentiment:",
    "subjectivity": "Sentence: {text}\nObjective or subjective:",
}


def instruction_rows(
    task: str, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str]
) -> dict[str, list[str]]:
    """Labelled sentences as ``{"prompt": [...], "completion": [...]}``: the task's prompt template around each
    text, and ``" " + label name`` as the completion (``"Review: <text>\\nSentiment:"`` -> ``" positive"``).

    ``texts`` are a split's ``sentence`` column, ``labels`` its class ids, ``label_names`` the task's
    (``TaskSpec.label_names``), as the movie and subjectivity tasks give them.
    """
    if task not in INSTRUCTION_TEMPLATES:
        raise ValueError(f"no instruction form for task {task!r}; tasks with one: {', '.join(INSTRUCTION_TEMPLATES)}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    template = INSTRUCTION_TEMPLATES[task]
    prompts = [template.format(text=" ".join(str(t).split())) for t in texts]
    completions = []
    for row, label in enumerate(labels):
        if not 0 <= int(label) < len(label_names):
            raise ValueError(f"row {row}: label {label!r} is not a class id of {task} ({', '.join(label_names)})")
        completions.append(" " + label_names[int(label)])
    return {"prompt": prompts, "completion": completions}


BOUNDARY_SLACK = 2  # tokens a cut sentence may gain where it meets the template (merges across the seam)


def fit_sentences(
    task: str, texts: Sequence[str], completions: Sequence[str], tokenizer, max_seq_length: int
) -> tuple[list[str], int]:
    """Each sentence cut at a token boundary, from the right, so that its prompt, the longest completion and EOS
    fit in ``max_seq_length`` tokens (as the encoder tasks truncate their sentences); returns the sentences and how
    many were cut. When the template alone leaves no room, the sentences are returned whole and the encoding
    refuses the row, naming it."""
    prefix, suffix = INSTRUCTION_TEMPLATES[task].split("{text}")
    frame = len(tokenizer(prefix + suffix)["input_ids"])  # with the tokenizer's special tokens (a BOS)
    answer = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in set(completions))
    room = max_seq_length - frame - answer - 1 - BOUNDARY_SLACK
    if room <= 0 or not texts:
        return list(texts), 0
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    fitted, cut = [], 0
    for text, offsets in zip(texts, encoded["offset_mapping"], strict=True):
        if len(offsets) > room:
            text, cut = text[: offsets[room - 1][1]], cut + 1
        fitted.append(text)
    return fitted, cut


def instruction_split(task: str, rows, label_names: Sequence[str], tokenizer, *, max_seq_length: int) -> CausalLMSplit:
    """A built-in task's split (``LabelledRows``: ``rows.rows["sentence"]``, ``rows.labels``) tokenised in its
    instruction form; sentences too long for ``max_seq_length`` are cut (:func:`fit_sentences`) and counted in
    ``truncated``."""
    texts = [" ".join(str(t).split()) for t in rows.rows["sentence"]]
    completions = instruction_rows(task, texts, rows.labels, label_names)["completion"]
    texts, cut = fit_sentences(task, texts, completions, tokenizer, max_seq_length)
    origin = f"{task} ({rows.origin})"
    split = encode_causal_lm(
        instruction_rows(task, texts, rows.labels, label_names),
        "prompt-completion",
        tokenizer,
        max_seq_length=max_seq_length,
        origin=origin,
        locate=lambda row: f"{origin}, row {row}",
    )
    return dataclasses.replace(split, truncated=split.truncated + cut)


def load_instruction_task(
    task: str,
    tokenizer,
    *,
    max_seq_length: int,
    generate: bool = True,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    datasets_cache_dir: str | os.PathLike | None = None,
) -> CausalLMTask:
    """A built-in task (``movie-sentiment``, ``subjectivity``) in instruction form, as the training command reads
    it: the encoder task's splits and subsets (``max_train_examples`` seeded by ``seed``, ``max_eval_examples``
    stratified by class, as :func:`jax_adalora.tasks.load_task` takes them), each row tokenised by
    :func:`instruction_split`. Metrics: loss, perplexity and, with ``generate``, exact match (main metric)."""
    from jax_adalora.tasks.movie import load_movie_splits
    from jax_adalora.tasks.registry import get_task_spec
    from jax_adalora.tasks.subjectivity import load_subjectivity_splits
    from jax_adalora.tasks.task_data import eval_rows, train_rows

    if task not in INSTRUCTION_TEMPLATES:
        raise ValueError(
            f"--task {task}: a causal LM takes the built-in tasks in instruction form "
            f"({', '.join(INSTRUCTION_TEMPLATES)}) or own data as --train-file and --validation-file"
        )
    spec = get_task_spec(task)
    load = load_movie_splits if spec.source == "movie" else load_subjectivity_splits
    train, evals = load(spec, data_dir=data_dir, cache=cache_dir, datasets_cache=datasets_cache_dir)
    train = train.select(train_rows(len(train), max_train_examples, seed))
    dev = evals["validation"]
    dev = dev.select(eval_rows(len(dev), max_eval_examples, dev.labels))

    def encode(rows):
        return instruction_split(task, rows, spec.label_names, tokenizer, max_seq_length=max_seq_length)

    metrics = ("loss", "perplexity", "exact_match") if generate else ("loss", "perplexity")
    lm_spec = dataclasses.replace(
        spec,
        kind="causal_lm",
        text_keys=("prompt", "completion"),
        metrics=metrics,
        main_metric="exact_match" if generate else "loss",
    )
    return CausalLMTask(lm_spec, encode(train), {"validation": encode(dev)}, tokenizer)

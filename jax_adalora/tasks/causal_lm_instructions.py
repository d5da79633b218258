"""The built-in labelled tasks in instruction form, for causal LMs: each sentence inside the task's prompt
template, the label word as the completion."""

from __future__ import annotations

from collections.abc import Sequence

from jax_adalora.tasks.causal_lm import CausalLMSplit, encode_causal_lm

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


def instruction_split(task: str, rows, label_names: Sequence[str], tokenizer, *, max_seq_length: int) -> CausalLMSplit:
    """A built-in task's split (``LabelledRows``: ``rows.rows["sentence"]``, ``rows.labels``) tokenised in its
    instruction form."""
    columns = instruction_rows(task, list(rows.rows["sentence"]), rows.labels, label_names)
    origin = f"{task} ({rows.origin})"
    return encode_causal_lm(
        columns,
        "prompt-completion",
        tokenizer,
        max_seq_length=max_seq_length,
        origin=origin,
        locate=lambda row: f"{origin}, row {row}",
    )

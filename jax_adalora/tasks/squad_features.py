"""SQuAD features (question + one window of the context) and the way back from logits to answer text.

A question with a long context becomes several features: ``[CLS] question [SEP] window [SEP]``, only
the context truncated, consecutive windows overlapping by ``doc_stride`` tokens (the tokenizer's
``stride``). A feature's answer label is the token span of the first gold answer when the window holds
all of it, else the CLS token (index 0), which is also the label of unanswerable questions.

Post-processing scores every pair of the ``n_best_size`` best start and end tokens that lie in the
context, end not before start and at most ``max_answer_length`` tokens long, by start + end logit,
keeps the best over an example's features and cuts its text out of the original context through the
offset mapping. For v2.0 the null score is the smallest CLS start + end logit over the features; the
answer is empty when ``null - best span > null_score_diff_threshold``, and that difference is the
question's null odds for the best-threshold search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jax_adalora.tasks.batching import EncodedSplit, from_token_lists
from jax_adalora.tasks.squad import QAExample

_CHUNK = 2048


def check_window_room(tokenizer, examples: Sequence[QAExample], *, max_seq_length: int, doc_stride: int) -> None:
    """Every question must leave more than ``doc_stride`` context tokens in a window."""
    if doc_stride < 0:
        raise ValueError(f"doc_stride must be >= 0, got {doc_stride}")
    special = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [
        len(ids) for ids in tokenizer([e.question.lstrip() for e in examples], add_special_tokens=False)["input_ids"]
    ]
    worst = int(np.argmax(lengths))
    room = max_seq_length - lengths[worst] - special
    if room <= doc_stride:
        raise ValueError(
            f"doc_stride {doc_stride} must be smaller than the context room of every window: max_seq_length "
            f"{max_seq_length} - {lengths[worst]} question tokens - {special} special tokens = {room} "
            f"(question {examples[worst].id}); lower --doc-stride or raise --max-seq-length"
        )


def encode_squad(tokenizer, examples: Sequence[QAExample], *, max_seq_length: int, doc_stride: int) -> EncodedSplit:
    """Features of ``examples`` with answer labels, offsets (context tokens only) and feature->example."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD features need a fast tokenizer (offset mappings); this one is not")
    check_window_room(tokenizer, examples, max_seq_length=max_seq_length, doc_stride=doc_stride)
    ids, types, offsets, owner, starts, ends = [], [], [], [], [], []
    for first in range(0, len(examples), _CHUNK):
        chunk = examples[first : first + _CHUNK]
        enc = tokenizer(
            [e.question.lstrip() for e in chunk],  # some questions start with long runs of spaces
            [e.context for e in chunk],
            truncation="only_second",
            max_length=max_seq_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=True,
            padding=False,
        )
        for i, example_in_chunk in enumerate(enc["overflow_to_sample_mapping"]):
            example = chunk[example_in_chunk]
            in_context = np.array([s == 1 for s in enc.sequence_ids(i)])
            spans = np.asarray(enc["offset_mapping"][i], np.int32).reshape(-1, 2)
            spans[~in_context] = -1
            start, end = _answer_tokens(example, spans, in_context)
            ids.append(enc["input_ids"][i])
            types.append(enc["token_type_ids"][i] if "token_type_ids" in enc else [0] * len(enc["input_ids"][i]))
            offsets.append(spans)
            owner.append(first + example_in_chunk)
            starts.append(start)
            ends.append(end)
    width = max(len(r) for r in ids)
    offset_array = np.full((len(ids), width, 2), -1, np.int32)
    for row, spans in enumerate(offsets):
        offset_array[row, : len(spans)] = spans
    return from_token_lists(
        tokenizer,
        ids,
        types,
        start_positions=np.asarray(starts, np.int32),
        end_positions=np.asarray(ends, np.int32),
        feature_to_example=np.asarray(owner, np.int32),
        offsets=offset_array,
        fixed_length=True,
    )


def _answer_tokens(example: QAExample, spans: np.ndarray, in_context: np.ndarray) -> tuple[int, int]:
    """Token indices of the first answer inside this window, or (0, 0) (CLS) when it is not all inside."""
    if example.is_impossible:
        return 0, 0
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answers[0])
    context_tokens = np.flatnonzero(in_context)
    if context_tokens.size == 0:
        return 0, 0
    if spans[context_tokens[0], 0] > start_char or spans[context_tokens[-1], 1] < end_char:
        return 0, 0
    start = context_tokens[spans[context_tokens, 0] <= start_char][-1]
    end = context_tokens[spans[context_tokens, 1] >= end_char][0]
    return int(start), int(end)


def postprocess_qa(
    examples: Sequence[QAExample],
    split: EncodedSplit,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    with_negative: bool,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """``(predictions, null_odds)`` by question id from per-feature logits (F, L') in split order.

    ``L'`` may differ from the split's width (padded batches); positions past either are ignored.
    ``null_odds`` is ``null score - best span score`` (+inf without a valid span; 0 for v1.1).
    """
    start_logits, end_logits = np.asarray(start_logits, np.float32), np.asarray(end_logits, np.float32)
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape or len(start_logits) != len(split):
        raise ValueError(
            f"expected start and end logits of shape ({len(split)}, length) for {len(split)} features, got "
            f"{start_logits.shape} and {end_logits.shape}"
        )
    width = min(start_logits.shape[1], split.width)
    best_score = np.full(len(examples), -np.inf)
    best_span = [(0, 0)] * len(examples)
    null_score = np.full(len(examples), np.inf)
    k = min(n_best_size, width)
    for feature in range(len(split)):
        example = int(split.feature_to_example[feature])
        start, end = start_logits[feature, :width], end_logits[feature, :width]
        null_score[example] = min(null_score[example], start[0] + end[0])
        spans = split.offsets[feature, :width]
        starts = np.argsort(-start, kind="stable")[:k]
        ends = np.argsort(-end, kind="stable")[:k]
        s, e = starts[:, None], ends[None, :]
        valid = (spans[s, 0] >= 0) & (spans[e, 0] >= 0) & (e >= s) & (e - s + 1 <= max_answer_length)
        if not valid.any():
            continue
        scores = np.where(valid, start[s] + end[e], -np.inf)
        i, j = np.unravel_index(np.argmax(scores), scores.shape)
        if scores[i, j] > best_score[example]:
            best_score[example] = scores[i, j]
            best_span[example] = (int(spans[starts[i], 0]), int(spans[ends[j], 1]))
    predictions, null_odds = {}, {}
    for index, example in enumerate(examples):
        found = np.isfinite(best_score[index])
        text = example.context[slice(*best_span[index])] if found else ""
        if with_negative:
            diff = float(null_score[index] - best_score[index]) if found else float("inf")
            null_odds[example.id] = diff
            if diff > null_score_diff_threshold:
                text = ""
        else:
            null_odds[example.id] = 0.0
        predictions[example.id] = text
    return predictions, null_odds


def squad_metrics(
    examples: Sequence[QAExample],
    predictions: dict[str, str],
    null_odds: dict[str, float],
    *,
    with_negative: bool,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, float]:
    """The official v1.1 or v2.0 scores of ``predictions`` against the examples' gold answers."""
    from jax_adalora.tasks.metrics import squad_v1_metrics, squad_v2_metrics

    gold = {e.id: list(e.answers) for e in examples}
    if not with_negative:
        return squad_v1_metrics(predictions, gold)
    return squad_v2_metrics(predictions, gold, null_odds, na_prob_thresh=null_score_diff_threshold)

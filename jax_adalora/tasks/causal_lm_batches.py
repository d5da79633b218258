"""Batches of causal-LM data: the bucketed training batches with their loss mask, and left-padded prompts for
generation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jax_adalora.tasks.batching import BatchIterator
from jax_adalora.tasks.causal_lm import CausalLMSplit


class CausalLMBatchIterator(BatchIterator):
    """:class:`BatchIterator` over a :class:`CausalLMSplit`: the same buckets, order and resumption; each batch
    holds ``input_ids``, ``attention_mask``, ``loss_mask`` (B, W) int32, ``example_mask`` and ``example_index``
    (no ``token_type_ids``: a causal LM reads none). Filler rows copy a real row, loss mask included."""

    def __init__(self, data: CausalLMSplit, batch_size: int, **options):
        super().__init__(data.split, batch_size, **options)
        self.loss_mask = data.loss_mask

    def make_batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        batch = super().make_batch(rows)
        del batch["token_type_ids"]
        width = batch["input_ids"].shape[1]
        mask = self.loss_mask[batch["example_index"], :width]
        batch["loss_mask"] = np.pad(mask, ((0, 0), (0, width - mask.shape[1])))
        return batch


def left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int, *, width: int = 0, rows: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts as ``(input_ids, attention_mask)`` (B, T) int32, padded on the left, as generation wants them.

    ``width`` (at least the longest prompt) and ``rows`` (at least ``len(prompts)``; the extra rows are all
    padding) fix the shape, so that every batch of a split compiles to the same program."""
    width = max(width, max(len(p) for p in prompts))
    ids = np.full((max(rows, len(prompts)), width), pad_id, np.int32)
    mask = np.zeros(ids.shape, np.int32)
    for i, prompt in enumerate(prompts):
        if len(prompt):
            ids[i, width - len(prompt) :] = prompt
            mask[i, width - len(prompt) :] = 1
    return ids, mask

"""Causal-LM losses and evaluation: per-sequence next-token cross-entropy, perplexity, exact match of generations.

``causal_lm_losses`` is the per-example loss for the training step: each sequence's mean cross-entropy over its
loss-masked positions (``loss_mask`` as :mod:`jax_adalora.tasks.causal_lm` makes it: aligned with the logits,
``loss_mask[t] = 1`` when predicting token ``t + 1`` counts), so per-example statistics are per sequence.

    >>> losses = causal_lm_losses(model(batch["input_ids"], batch["attention_mask"]), batch)  # (B,) float32
    >>> lm_metrics(losses, loss_tokens)                     # {"loss": 2.31, "perplexity": 9.7}
    >>> exact_match(["positive", " negative"], [" positive", "positive"])    # 0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def causal_lm_losses(logits, batch: dict):
    """Each sequence's mean next-token cross-entropy over its loss-masked positions, float32.

    Args:
      logits: (B, T, V) for the batch's ``input_ids`` (B, T), any float dtype (computed in float32).
      batch: ``input_ids`` (B, T) and ``loss_mask`` (B, T); position ``t`` scores ``logits[:, t]`` against
        ``input_ids[:, t + 1]``, the last position never counts.

    Returns:
      (B,) float32; 0 for a row without any counted position.
    """
    import jax
    import jax.numpy as jnp

    logits = logits[:, :-1].astype(jnp.float32)
    targets = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, :-1].astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum(nll * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def perplexity(mean_loss: float) -> float:
    """``exp(mean_loss)``: the perplexity of a mean next-token cross-entropy in nats (inf when it overflows)."""
    try:
        return math.exp(float(mean_loss))
    except OverflowError:
        return math.inf


def lm_metrics(losses: Sequence[float], loss_tokens: Sequence[int] | None = None) -> dict[str, float]:
    """Evaluation metrics from per-sequence losses (:func:`causal_lm_losses` over a split, filler rows left out).

    Args:
      losses: (N,) per-sequence mean losses.
      loss_tokens: (N,) counted positions per sequence (``loss_mask.sum(1)``); when given, perplexity is over
        tokens (each sequence's loss weighted by its token count), else over sequences.

    Returns:
      ``{"loss": mean of the per-sequence losses (what training minimises), "perplexity": exp(token- or
      sequence-weighted mean loss)}``.
    """
    losses = np.asarray(losses, np.float64)
    if losses.size == 0:
        raise ValueError("no losses to average")
    mean = float(losses.mean())
    if loss_tokens is None:
        return {"loss": mean, "perplexity": perplexity(mean)}
    weights = np.asarray(loss_tokens, np.float64)
    if weights.shape != losses.shape:
        raise ValueError(f"{losses.shape[0]} losses but {weights.shape} token counts")
    return {"loss": mean, "perplexity": perplexity(float((losses * weights).sum() / max(weights.sum(), 1.0)))}


def exact_match(generated: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of generated completions equal to their reference, both stripped of surrounding white space."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated completions but {len(references)} references")
    if not references:
        raise ValueError("no completions to compare")
    return sum(g.strip() == r.strip() for g, r in zip(generated, references, strict=True)) / len(references)


def decode_completions(tokenizer, new_tokens, eos_token_ids: Sequence[int] = ()) -> list[str]:
    """Generated token rows (B, N) as text: each row cut before its first end token (``eos_token_ids``, default
    the tokenizer's EOS), special tokens skipped."""
    stops = set(int(t) for t in eos_token_ids) or {int(tokenizer.eos_token_id)}
    texts = []
    for row in np.asarray(new_tokens).tolist():
        end = next((j for j, token in enumerate(row) if token in stops), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts

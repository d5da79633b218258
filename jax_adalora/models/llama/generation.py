"""Generation with a KV cache: a jitted prefill of the (left-padded) prompts, then one jitted step per new token,
greedy or sampled (temperature, top-p), stopping when every row has produced an end token."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.models.llama.modeling import LlamaForCausalLM, init_cache


def generate(
    model: LlamaForCausalLM,
    input_ids,
    *,
    max_new_tokens: int,
    attention_mask=None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Continues each prompt: prefill the cache with the prompt, then one token per step until every row has
    produced an end-of-sequence token or ``max_new_tokens`` are made.

    Args:
      model: the model (with or without adapters; it is not changed).
      input_ids: (B, T) int prompts, padded on the left when their lengths differ.
      max_new_tokens: at most this many tokens per row.
      attention_mask: (B, T), 0 on the left padding; default all ones.
      temperature: 0 picks the most likely token (greedy); above 0 samples from softmax(logits / temperature).
      top_p: with sampling, only the most likely tokens whose probabilities sum to ``top_p`` (nucleus sampling).
      eos_token_id: a token id or ids that end a row; default ``model.config.eos_token_ids``.
      pad_token_id: what a finished row gets after its end token; default the first end token (as transformers).
      rng: a ``jax.random`` key; required when sampling.

    Returns:
      The new tokens, (B, N) int32, N <= max_new_tokens: generation stops at the step where every row is done.

    Raises:
      ValueError: a prompt padded on the right (its last token would be padding), or sampling without ``rng``.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    batch, length = input_ids.shape
    mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    if not bool(jnp.all(mask[:, -1] == 1)):
        raise ValueError("generate: every prompt must end with a real token (pad on the left, not the right)")
    if temperature > 0 and rng is None:
        raise ValueError("generate: sampling (temperature > 0) needs rng, a jax.random key")
    eos = model.config.eos_token_ids if eos_token_id is None else eos_token_id
    eos = jnp.asarray(np.atleast_1d(np.asarray(eos, np.int32)))  # (E,), E may be 0
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos.size else 0)
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    cache = init_cache(model.config, batch, length + max_new_tokens)
    done = jnp.zeros((batch,), bool)
    tokens, ids, step_mask = [], input_ids, mask
    for _ in range(max_new_tokens):
        rng, key = jax.random.split(rng)
        token, cache, done = _next_token(
            graphdef, state, ids, step_mask, cache, done, key, eos, pad, temperature=temperature, top_p=top_p
        )
        tokens.append(token)
        if bool(jnp.all(done)):
            break
        ids, step_mask = token[:, None], jnp.ones((batch, 1), jnp.int32)
    return jnp.stack(tokens, axis=1) if tokens else jnp.zeros((batch, 0), jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_p"), donate_argnames=("cache",))
def _next_token(graphdef, state, ids, mask, cache, done, key, eos, pad, *, temperature, top_p):
    """One step: the tokens after ``ids`` (B, T) given the cache, ``pad`` for rows already done. Compiled once for
    the prompt's shape and once for the single-token steps."""
    model = nnx.merge(graphdef, state)
    logits, cache = model(ids, mask, cache=cache)
    token = choose_token(logits[:, -1].astype(jnp.float32), key, temperature=temperature, top_p=top_p)  # (B,)
    token = jnp.where(done, pad, token)
    return token, cache, done | jnp.isin(token, eos)


def choose_token(logits: jax.Array, key: jax.Array, *, temperature: float, top_p: float) -> jax.Array:
    """The next token from logits (B, V): the argmax at temperature 0, else a sample from the nucleus ``top_p``
    of softmax(logits / temperature). (B,) int32."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V), most likely first
        probs = jax.nn.softmax(ordered, axis=-1)
        # Keep a token while the more likely ones sum to less than top_p: the most likely one always stays.
        kept = jnp.cumsum(probs, axis=-1) - probs < top_p
        cutoff = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

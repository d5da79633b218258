"""BERT and RoBERTa encoders in Flax NNX, computing what transformers' ``BertModel`` / ``RobertaModel`` compute.

Post-LN transformer: embeddings (word + position + token type, LayerNorm, dropout), then per layer
self-attention -> output dense -> dropout -> residual LayerNorm, and FFN up -> activation -> FFN down
-> dropout -> residual LayerNorm. Padded keys get the float32 minimum added to their scores.

The six matrices AdaLoRA adapts are the ``nnx.Linear`` modules at ``layers[i].attention.query|key|value|output``,
``layers[i].intermediate`` and ``layers[i].output``. They are only ever called, never read, so an adapter
wrapper with the same ``__call__`` can replace them.

``first_token_only=True`` (what the sequence classifiers ask for) runs the last layer for the first
position alone: keys and values still cover every position, but its queries, attention output and FFN
run on one row, which is all a pooled head reads (14 % of the FLOPs of MiniLM's step at 128 tokens). The
dropout masks on that row are the full layer's.

RoBERTa differs only in its position ids: numbered from ``pad_token_id + 1`` over non-pad tokens, with
pad tokens at position ``pad_token_id``, computed from ``input_ids`` as transformers does.

Example::

    config = EncoderConfig.minilm_l6()
    encoder = BertEncoder(config, rngs=nnx.Rngs(0))
    hidden = encoder(input_ids, attention_mask, token_type_ids)  # (B, L, 384)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.models.activations import activation
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.dropout import dropout
from jax_adalora.models.targets import TARGET_PRESETS

_INIT = nnx.initializers.normal(stddev=0.02)  # transformers' initializer_range

# Dropout site ids: the embeddings, then three per layer. Heads use ids far above (see heads.py).
EMBEDDINGS_DROPOUT_SITE = 0
_SITES_PER_LAYER = 3
_ATTENTION_PROBS, _ATTENTION_OUTPUT, _FFN_OUTPUT = range(_SITES_PER_LAYER)


def _layer_site(layer_index: int, slot: int) -> int:
    return 1 + _SITES_PER_LAYER * layer_index + slot


def _linear(d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, dtype=dtype, param_dtype=jnp.float32, kernel_init=_INIT, rngs=rngs)


def _layer_norm(config: EncoderConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2] as torch computes it, for parity in float32.
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        rngs=rngs,
    )


def _embed(num: int, features: int, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, features, dtype=dtype, param_dtype=jnp.float32, embedding_init=_INIT, rngs=rngs)


def roberta_position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """Non-pad tokens numbered ``pad_token_id + 1, ...`` in order; pad tokens get ``pad_token_id``. (B, L) int32."""
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=-1) * not_pad + pad_token_id


class BertEmbeddings(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.roberta_positions = config.model_type == "roberta"
        self.pad_token_id = config.pad_token_id
        self.max_positions = config.max_position_embeddings
        self.dropout_rate = config.hidden_dropout_prob
        self.word_embeddings = _embed(config.vocab_size, config.hidden_size, dtype, rngs)
        self.position_embeddings = _embed(config.max_position_embeddings, config.hidden_size, dtype, rngs)
        self.token_type_embeddings = (
            _embed(config.type_vocab_size, config.hidden_size, dtype, rngs) if config.type_vocab_size > 0 else None
        )
        self.norm = _layer_norm(config, dtype, rngs)

    def __call__(self, input_ids, token_type_ids=None, *, dropout_keys=None) -> jax.Array:
        length = input_ids.shape[-1]
        if self.roberta_positions:
            last = length + self.pad_token_id  # the largest position id a full row can reach
            positions = roberta_position_ids(input_ids, self.pad_token_id)
        else:
            last = length - 1
            positions = jnp.arange(length)[None, :]
        if last >= self.max_positions:
            raise ValueError(
                f"sequence length {length} needs position id {last}, "
                f"beyond max_position_embeddings={self.max_positions}"
            )
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, L, H)
        if self.token_type_embeddings is not None:
            types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.token_type_embeddings(types)
        return dropout(self.norm(x), self.dropout_rate, dropout_keys, EMBEDDINGS_DROPOUT_SITE)


class BertAttention(nnx.Module):
    """Multi-head self-attention, output dense, dropout, residual LayerNorm."""

    def __init__(self, config: EncoderConfig, *, layer_index: int, dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.layer_index = layer_index
        self.probs_dropout = config.attention_probs_dropout_prob
        self.hidden_dropout = config.hidden_dropout_prob
        self.query = _linear(hidden, hidden, dtype, rngs)
        self.key = _linear(hidden, hidden, dtype, rngs)
        self.value = _linear(hidden, hidden, dtype, rngs)
        self.output = _linear(hidden, hidden, dtype, rngs)
        self.output_norm = _layer_norm(config, dtype, rngs)

    def __call__(self, x: jax.Array, key_bias: jax.Array, *, dropout_keys=None, num_queries=None) -> jax.Array:
        """x (B, L, H), key_bias (B, 1, 1, L) float32 additive -> (B, N, H): the first ``num_queries`` = N
        positions (default all L) attend to all L; dropout masks are those the full (B, L, H) output gets."""
        batch, length, hidden = x.shape
        queries = x if num_queries is None else x[:, :num_queries]
        n = queries.shape[1]
        heads = lambda t: t.reshape(batch, -1, self.num_heads, self.head_dim)  # (B, L or N, NH, D)
        q, k, v = heads(self.query(queries)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
        probs = jax.nn.softmax(scores + key_bias, axis=-1).astype(v.dtype)  # (B, NH, N, L)
        site = _layer_site(self.layer_index, _ATTENTION_PROBS)
        probs = dropout(probs, self.probs_dropout, dropout_keys, site, full_shape=(self.num_heads, length, length))
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, n, hidden)
        out = self.output(context)
        site = _layer_site(self.layer_index, _ATTENTION_OUTPUT)
        out = dropout(out, self.hidden_dropout, dropout_keys, site, full_shape=(length, hidden))
        return self.output_norm(out + queries)


class BertLayer(nnx.Module):
    def __init__(self, config: EncoderConfig, *, layer_index: int, dtype=jnp.float32, rngs: nnx.Rngs):
        self.layer_index = layer_index
        self.hidden_dropout = config.hidden_dropout_prob
        self.act = config.hidden_act
        activation(self.act)  # fail at construction on an unknown name
        self.attention = BertAttention(config, layer_index=layer_index, dtype=dtype, rngs=rngs)
        self.intermediate = _linear(config.hidden_size, config.intermediate_size, dtype, rngs)
        self.output = _linear(config.intermediate_size, config.hidden_size, dtype, rngs)
        self.output_norm = _layer_norm(config, dtype, rngs)

    def __call__(self, x: jax.Array, key_bias: jax.Array, *, dropout_keys=None, num_queries=None) -> jax.Array:
        """x (B, L, H) -> (B, N, H), the first ``num_queries`` = N positions (default all)."""
        attended = self.attention(x, key_bias, dropout_keys=dropout_keys, num_queries=num_queries)  # (B, N, H)
        h = activation(self.act)(self.intermediate(attended))  # (B, N, F)
        site = _layer_site(self.layer_index, _FFN_OUTPUT)
        h = dropout(self.output(h), self.hidden_dropout, dropout_keys, site, full_shape=x.shape[1:])
        return self.output_norm(h + attended)


class BertEncoder(nnx.Module):
    """``BertModel`` / ``RobertaModel`` up to the last hidden state (no pooler).

    Args:
      config: an ``EncoderConfig`` with ``model_type`` ``"bert"`` or ``"roberta"``.
      dtype: compute dtype of activations; parameters are always float32; softmax runs in float32.
      rngs: parameter initialisation keys.
    """

    # Named adapter targets, read by jax_adalora.adapters.inject_adapters (the adapter protocol's other half).
    target_presets = TARGET_PRESETS

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if config.model_type not in ("bert", "roberta"):
            raise ValueError(f"EncoderConfig.model_type={config.model_type!r}: BertEncoder needs 'bert' or 'roberta'")
        position_type = dict(config.extra_hf_fields).get("position_embedding_type", "absolute")
        if position_type not in ("absolute", None):
            raise NotImplementedError(f"position_embedding_type={position_type!r}: only absolute positions are built")
        self.config = config
        self.embeddings = BertEmbeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [BertLayer(config, layer_index=i, dtype=dtype, rngs=rngs) for i in range(config.num_hidden_layers)]
        )

    def __call__(
        self, input_ids, attention_mask, token_type_ids=None, *, dropout_keys=None, first_token_only=False
    ) -> jax.Array:
        """input_ids, attention_mask, token_type_ids (B, L) int; dropout_keys ``DropoutKeys`` (or (B,) keys) or None
        -> (B, L, H); with ``first_token_only``, (B, 1, H): the last layer then computes the first position
        alone (what a pooled head reads), the same values and masks as the first row of the full output."""
        x = self.embeddings(input_ids, token_type_ids, dropout_keys=dropout_keys)  # (B, L, H)
        key_bias = jnp.where(attention_mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            num_queries = 1 if first_token_only and i == last else None
            x = run_layer(
                layer, x, key_bias, dropout_keys=dropout_keys, num_queries=num_queries, remat=self.config.remat
            )
        return x


def run_layer(layer: nnx.Module, x: jax.Array, *inputs, dropout_keys, num_queries, remat: bool) -> jax.Array:
    """``layer(x, *inputs, dropout_keys=..., num_queries=...)``, under ``nnx.remat`` when ``remat``.

    Rematerialised, the layer keeps only its inputs for the backward pass and recomputes the rest (the same
    values and dropout masks: they come from the keys). ``num_queries`` stays static; ``inputs`` are arrays
    or None.
    """
    if not remat:
        return layer(x, *inputs, dropout_keys=dropout_keys, num_queries=num_queries)

    def call(layer, x, inputs, dropout_keys):
        return layer(x, *inputs, dropout_keys=dropout_keys, num_queries=num_queries)

    return nnx.remat(call)(layer, x, inputs, dropout_keys)


class BertPooler(nnx.Module):
    """First token -> dense -> tanh, as ``BertPooler``. (B, L, H) -> (B, H)."""

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dense = _linear(config.hidden_size, config.hidden_size, dtype, rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(hidden[:, 0]))

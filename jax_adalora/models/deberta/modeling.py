"""DeBERTa-v2/v3 encoder in Flax NNX, computing what transformers' ``DebertaV2Model`` computes.

Disentangled attention adds content-to-position (c2p) and position-to-content (p2c) terms to the
content scores, read from one table of relative-position embeddings shared by all layers. Relative
positions (log-bucketed when ``position_buckets > 0``) depend only on the static sequence length,
so they are numpy constants at trace time and the forward stays shape-static. When the relative
positions that occur fit in the table (N + L - 1 <= 2S for N queries and L keys: 255 <= 512 for
DeBERTa-v3 at 128 tokens), the c2p / p2c scores are taken against those table rows alone and
shifted into place (``skew``). Longer sequences on CPU gather them from the scores against the whole
table, as transformers does for every length; off CPU the skew serves every length
(:func:`relative_scores_by_skew`), since the gather's backward pass is a scatter-add, which GPUs run with
atomics (sums in a non-deterministic order).

The six matrices AdaLoRA adapts sit at the paths shared with the BERT encoder
(``layers[i].attention.query|key|value|output``, ``layers[i].intermediate``, ``layers[i].output``)
and are only ever called, never read, so an adapter wrapper can replace them. With
``share_att_key`` the relative embeddings go through the same ``query`` / ``key`` modules, adapters
included, as in transformers.

Dropout draws one mask per example (``models.dropout``), so a batch forward equals per-example
forwards with the same keys. The relative-position table, which transformers drops out once per
forward pass, gets one mask per step shared by the batch (``shared_dropout``), so its projections
run once per step.

Example::

    config = EncoderConfig.deberta_v3_base(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, vocab_size=100, position_buckets=8)
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    hidden = encoder(input_ids, attention_mask)  # (B, L, 32)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.models.activations import activation
from jax_adalora.models.bert.modeling import run_layer
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.dropout import dropout, shared_dropout
from jax_adalora.models.targets import TARGET_PRESETS

_INIT = nnx.initializers.normal(stddev=0.02)  # transformers' initializer_range

# Dropout site ids: the embeddings, then four per layer. The pooler's id lies above any encoder id.
EMBEDDINGS_DROPOUT_SITE = 0
POOLER_DROPOUT_SITE = 100_000
_SITES_PER_LAYER = 4
_REL_EMBEDDINGS, _ATTENTION_PROBS, _ATTENTION_OUTPUT, _FFN_OUTPUT = range(_SITES_PER_LAYER)


def _layer_site(layer_index: int, slot: int) -> int:
    return 1 + _SITES_PER_LAYER * layer_index + slot


# ---- relative positions ------------------------------------------------------------------------
def _max_relative_positions(config: EncoderConfig) -> int:
    return config.max_relative_positions if config.max_relative_positions >= 1 else config.max_position_embeddings


def attention_span(config: EncoderConfig) -> int:
    """Half the size of the relative-embedding table: ``position_buckets`` or ``max_relative_positions``."""
    return config.position_buckets if config.position_buckets > 0 else _max_relative_positions(config)


def _bucketed(rel: np.ndarray, position_buckets: int, max_relative_positions: int) -> np.ndarray:
    """Relative positions ``rel`` (any int array), log-bucketed beyond ``position_buckets // 2``, as int32.

    The bucket arithmetic runs in float32, as transformers runs it, so the bucket edges agree with it
    exactly.
    """
    if position_buckets > 0 and max_relative_positions > 0:
        mid = position_buckets // 2
        sign = np.sign(rel)
        abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
        log_ratio = np.log(abs_pos.astype(np.float32) / np.float32(mid))
        log_max = np.log(np.float32((max_relative_positions - 1) / mid))
        log_pos = np.ceil(log_ratio / log_max * np.float32(mid - 1)) + np.float32(mid)
        rel = np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign)
    return rel.astype(np.int32)


@functools.lru_cache(maxsize=64)
def relative_positions(length: int, position_buckets: int, max_relative_positions: int) -> np.ndarray:
    """Relative position ``q - k`` of every query/key pair, log-bucketed beyond ``position_buckets // 2``:
    an int32 (length, length) numpy array."""
    rel = np.arange(length)[:, None] - np.arange(length)[None, :]
    return _bucketed(rel, position_buckets, max_relative_positions)


def skew(x: jax.Array, cols: int) -> jax.Array:
    """``y[..., r, c] = x[..., r, R - 1 - r + c]``: (..., R, R + cols - 1) -> (..., R, cols).

    Row ``r`` of the result is a window of row ``r`` of ``x`` that starts ``R - 1 - r`` columns in. It is
    read from the flattened rows with a stride of ``R + cols - 2``, so the whole operation is a slice and
    two reshapes, whose gradient is a pad: no gather, and no scatter-add in the backward pass.
    """
    rows, width = x.shape[-2], x.shape[-1]
    if width != rows + cols - 1:
        raise ValueError(f"skew: x has {width} columns; {rows} rows and {cols} output columns need {rows + cols - 1}")
    if rows == 1:
        return x[..., :cols]
    lead = x.shape[:-2]
    flat = x.reshape(*lead, rows * width)[..., rows - 1 : rows - 1 + rows * (width - 1)]
    return flat.reshape(*lead, rows, width - 1)[..., :cols]


def relative_scores_by_skew(num_queries: int, length: int, table_rows: int, platform: str) -> bool:
    """Whether c2p / p2c are read by :func:`skew` (else gathered) for ``num_queries`` queries against ``length``
    keys and a table of ``table_rows`` = 2S rows, on ``platform`` (``jax.default_backend()``).

    Both give the same values and gradients for any length (tested). On CPU the choice is what was measured
    there: the skew while the ``N + L - 1`` relative positions fit in the table, where it does fewer FLOPs.
    Elsewhere always the skew: beyond the table it projects more rows than the gather, but its backward pass
    is a pad where the gather's is a scatter-add (atomic and non-deterministic on GPU). Unmeasured on a device.
    """
    return platform != "cpu" or num_queries + length - 1 <= table_rows


def relative_embedding_norms(config: EncoderConfig) -> list[str]:
    return [part.strip() for part in config.norm_rel_ebd.lower().split("|")]


def _check_supported(config: EncoderConfig) -> None:
    if config.model_type != "deberta-v2":
        raise ValueError(f"EncoderConfig.model_type={config.model_type!r}: DebertaV2Encoder needs 'deberta-v2'")
    extra = dict(config.extra_hf_fields)
    conv_kernel_size = extra.get("conv_kernel_size") or 0
    if conv_kernel_size > 0:
        raise NotImplementedError(f"conv_kernel_size={conv_kernel_size}: the DeBERTa-v2 ConvLayer is not implemented")
    head_size = extra.get("attention_head_size", config.head_dim)
    if head_size != config.head_dim:
        raise NotImplementedError(
            f"attention_head_size={head_size} differs from hidden_size / num_attention_heads={config.head_dim}"
        )


def _layer_norm(features: int, config: EncoderConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features,
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        rngs=rngs,
    )


def _linear(d_in: int, d_out: int, dtype, rngs: nnx.Rngs, *, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(
        d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, kernel_init=_INIT, rngs=rngs
    )


def _embed(num: int, features: int, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, features, dtype=dtype, param_dtype=jnp.float32, embedding_init=_INIT, rngs=rngs)


# ---- modules -----------------------------------------------------------------------------------
class DebertaEmbeddings(nnx.Module):
    """Word (+ absolute position) (+ token type) embeddings, projected to hidden size, normalised, masked."""

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        size = config.embedding_size or config.hidden_size
        self.dropout_rate = config.hidden_dropout_prob
        self.max_positions = config.max_position_embeddings
        self.word_embeddings = _embed(config.vocab_size, size, dtype, rngs)
        self.position_embeddings = (
            _embed(config.max_position_embeddings, size, dtype, rngs) if config.position_biased_input else None
        )
        self.token_type_embeddings = (
            _embed(config.type_vocab_size, size, dtype, rngs) if config.type_vocab_size > 0 else None
        )
        self.embed_proj = (
            _linear(size, config.hidden_size, dtype, rngs, use_bias=False) if size != config.hidden_size else None
        )
        self.norm = _layer_norm(config.hidden_size, config, dtype, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_keys=None) -> jax.Array:
        length = input_ids.shape[-1]
        x = self.word_embeddings(input_ids)  # (B, L, E)
        if self.position_embeddings is not None:
            if length > self.max_positions:
                raise ValueError(f"sequence length {length} exceeds max_position_embeddings={self.max_positions}")
            x = x + self.position_embeddings(jnp.arange(length))
        if self.token_type_embeddings is not None:
            types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.token_type_embeddings(types)
        if self.embed_proj is not None:
            x = self.embed_proj(x)  # (B, L, H)
        x = self.norm(x)
        x = x * attention_mask[..., None].astype(x.dtype)
        return dropout(x, self.dropout_rate, dropout_keys, EMBEDDINGS_DROPOUT_SITE)


class DisentangledAttention(nnx.Module):
    """Self-attention with c2p / p2c relative terms, then output projection, dropout, residual LayerNorm."""

    def __init__(self, config: EncoderConfig, *, layer_index: int, dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.layer_index = layer_index
        self.relative_attention = config.relative_attention
        self.c2p = "c2p" in config.pos_att_type
        self.p2c = "p2c" in config.pos_att_type
        self.share_att_key = config.share_att_key
        self.position_buckets = config.position_buckets
        self.max_relative_positions = _max_relative_positions(config)
        self.span = attention_span(config)
        # transformers counts c2p and p2c in the scale even when relative attention is off.
        self.scale = math.sqrt(self.head_dim * (1 + self.c2p + self.p2c))
        self.hidden_dropout = config.hidden_dropout_prob
        self.probs_dropout = config.attention_probs_dropout_prob

        self.query = _linear(hidden, hidden, dtype, rngs)
        self.key = _linear(hidden, hidden, dtype, rngs)
        self.value = _linear(hidden, hidden, dtype, rngs)
        separate = self.relative_attention and not self.share_att_key
        self.pos_key = _linear(hidden, hidden, dtype, rngs) if separate and self.c2p else None
        self.pos_query = _linear(hidden, hidden, dtype, rngs) if separate and self.p2c else None
        self.output = _linear(hidden, hidden, dtype, rngs)
        self.output_norm = _layer_norm(hidden, config, dtype, rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        """(..., L, H) -> (..., NH, L, D)."""
        return jnp.swapaxes(x.reshape(*x.shape[:-1], self.num_heads, self.head_dim), -2, -3)

    def _against_positions(self, x: jax.Array, projection, rel_embeddings: jax.Array) -> jax.Array:
        """``x`` (B, NH, L, D) against the heads of ``projection(table)``, a (T, H) table: (B, NH, L, T)."""
        if getattr(projection, "has_probes", None) is not None and projection.has_probes():
            # An adapted projection with per-example probes (the adapter protocol: ``has_probes()`` and
            # ``low_rank_parts(x)``, offered by jax_adalora.adapters.AdaLoRALinear): the base projection stays
            # one matmul for the batch and only rank-r products are per example. rank_side and p are
            # (B, T, r) and (B, H, r).
            base, rank_side, p = projection.low_rank_parts(rel_embeddings)
            p_heads = p.reshape(*p.shape[:-2], self.num_heads, self.head_dim, p.shape[-1])  # ([B,] NH, D, r)
            rank_side_t = jnp.swapaxes(rank_side, -1, -2)[..., None, :, :]  # ([B,] 1, r, T)
            return x @ jnp.swapaxes(self._heads(base), -1, -2) + (x @ p_heads) @ rank_side_t
        return x @ jnp.swapaxes(self._heads(projection(rel_embeddings)), -1, -2)

    def _relative_scores(self, q, k, rel_embeddings, length: int) -> jax.Array:
        """c2p + p2c terms (B, NH, N, L) from queries (B, NH, N, D), the first N of L positions, keys
        (B, NH, L, D) and the table (2S, H): skewed or gathered as :func:`relative_scores_by_skew` says."""
        if relative_scores_by_skew(q.shape[-2], length, rel_embeddings.shape[0], jax.default_backend()):
            return self.skewed_relative_scores(q, k, rel_embeddings, length)
        return self.gathered_relative_scores(q, k, rel_embeddings, length)

    def _projections(self):
        """The modules that project the table for c2p (keys) and p2c (queries)."""
        if self.share_att_key:
            return self.key, self.query
        return self.pos_key, self.pos_query

    def gathered_relative_scores(self, q, k, rel_embeddings, length: int) -> jax.Array:
        """The c2p + p2c terms as transformers computes them: scores against the whole table, then each
        pair's column gathered."""
        num_queries = q.shape[-2]
        key_projection, query_projection = self._projections()
        rel_pos = relative_positions(length, self.position_buckets, self.max_relative_positions)[:num_queries]
        score = 0.0
        if self.c2p:
            c2p = self._against_positions(q, key_projection, rel_embeddings)
            c2p_index = np.clip(rel_pos + self.span, 0, 2 * self.span - 1)  # c2p is (B, NH, N, 2S)
            score = score + c2p[..., np.arange(num_queries)[:, None], c2p_index] / jnp.asarray(self.scale, c2p.dtype)
        if self.p2c:
            p2c = self._against_positions(k, query_projection, rel_embeddings)
            # p2c is (B, NH, L_k, 2S), gathered as [key, query] with index[key, query] = clip(query - key + S),
            # then transposed to [query, key]. (transformers writes -rel_pos, the same for the full square
            # table, whose bucketing is odd: rel_pos.T == -rel_pos.)
            p2c_index = np.clip(rel_pos.T + self.span, 0, 2 * self.span - 1)
            p2c = jnp.swapaxes(p2c[..., np.arange(length)[:, None], p2c_index], -1, -2)
            score = score + p2c / jnp.asarray(self.scale, p2c.dtype)
        return score

    def _table_rows(self, relative: np.ndarray) -> np.ndarray:
        """Rows of the (2S, H) table that hold the relative positions ``relative`` (before bucketing)."""
        bucketed = _bucketed(relative, self.position_buckets, self.max_relative_positions)
        return np.clip(bucketed + self.span, 0, 2 * self.span - 1)

    def skewed_relative_scores(self, q, k, rel_embeddings, length: int) -> jax.Array:
        """The same terms as :meth:`gathered_relative_scores`, without a gather on the scores.

        The table rows are taken once per relative position ``query - key`` that occurs, N + L - 1 of
        them, ordered so that each query's (c2p) or key's (p2c) scores against them, shifted by one column
        per row, are its scores against every key (query): ``skew``. Against the gather this projects and
        scores N + L - 1 table rows instead of 2S, and its backward pass is a pad instead of a scatter-add.
        It gives the same result for any length; it costs fewer FLOPs only while N + L - 1 <= 2S, which is
        when :meth:`_relative_scores` chooses it on CPU (off CPU: always).
        """
        key_projection, query_projection = self._projections()
        num_queries = q.shape[-2]
        score = 0.0
        if self.c2p:
            # Column m of query i's row holds relative position N - 1 - m; skew puts (i, j) at m = N - 1 - i + j.
            rows = self._table_rows((num_queries - 1) - np.arange(num_queries + length - 1))
            c2p = self._against_positions(q, key_projection, rel_embeddings[rows])  # (B, NH, N, N + L - 1)
            score = score + skew(c2p, length) / jnp.asarray(self.scale, c2p.dtype)
        if self.p2c:
            # Key j's row, column m, holds query - key = m - (L - 1); skew puts (j, i) at m = L - 1 - j + i.
            rows = self._table_rows(np.arange(num_queries + length - 1) - (length - 1))
            p2c = self._against_positions(k, query_projection, rel_embeddings[rows])  # (B, NH, L, L + N - 1)
            p2c = jnp.swapaxes(skew(p2c, num_queries), -1, -2)  # [key, query] -> [query, key]
            score = score + p2c / jnp.asarray(self.scale, p2c.dtype)
        return score

    def __call__(self, x, pair_mask, rel_embeddings=None, *, dropout_keys=None, num_queries=None) -> jax.Array:
        """x (B, L, H), pair_mask (B, L, L) bool, rel_embeddings (2S, H) or None -> (B, N, H): the first
        ``num_queries`` = N positions (default all L) attend to all L; dropout masks are those of the full
        (B, L, H) output."""
        batch, length, hidden = x.shape
        queries = x if num_queries is None else x[:, :num_queries]
        n = queries.shape[1]
        q = self._heads(self.query(queries))  # (B, NH, N, D)
        k = self._heads(self.key(x))  # (B, NH, L, D)
        v = self._heads(self.value(x))
        scores = q @ jnp.swapaxes(k, -1, -2) / jnp.asarray(self.scale, q.dtype)  # (B, NH, N, L)
        if self.relative_attention and (self.c2p or self.p2c):
            # One mask for the batch, as transformers' pos_dropout: the table's projections run once.
            site = _layer_site(self.layer_index, _REL_EMBEDDINGS)
            rel_embeddings = shared_dropout(rel_embeddings, self.hidden_dropout, dropout_keys, site)
            scores = scores + self._relative_scores(q, k, rel_embeddings, length)
        # Masked pairs get the float32 minimum, as in transformers: zero probability in a row with
        # any valid key; a padded query's row is all masked and comes out uniform.
        scores = jnp.where(pair_mask[:, None, :n], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        site = _layer_site(self.layer_index, _ATTENTION_PROBS)
        probs = dropout(probs, self.probs_dropout, dropout_keys, site, full_shape=(self.num_heads, length, length))
        context = jnp.swapaxes(probs @ v, 1, 2).reshape(batch, n, hidden)  # (B, N, H)
        site = _layer_site(self.layer_index, _ATTENTION_OUTPUT)
        out = dropout(self.output(context), self.hidden_dropout, dropout_keys, site, full_shape=(length, hidden))
        return self.output_norm(out + queries)


class DebertaLayer(nnx.Module):
    def __init__(self, config: EncoderConfig, *, layer_index: int, dtype=jnp.float32, rngs: nnx.Rngs):
        self.layer_index = layer_index
        self.hidden_dropout = config.hidden_dropout_prob
        self.act = config.hidden_act
        activation(self.act)  # fail at construction on an unknown name
        self.attention = DisentangledAttention(config, layer_index=layer_index, dtype=dtype, rngs=rngs)
        self.intermediate = _linear(config.hidden_size, config.intermediate_size, dtype, rngs)
        self.output = _linear(config.intermediate_size, config.hidden_size, dtype, rngs)
        self.output_norm = _layer_norm(config.hidden_size, config, dtype, rngs)

    def __call__(self, x, pair_mask, rel_embeddings=None, *, dropout_keys=None, num_queries=None) -> jax.Array:
        """x (B, L, H) -> (B, N, H), the first ``num_queries`` = N positions (default all)."""
        attended = self.attention(
            x, pair_mask, rel_embeddings, dropout_keys=dropout_keys, num_queries=num_queries
        )  # (B, N, H)
        h = activation(self.act)(self.intermediate(attended))  # (B, N, F)
        site = _layer_site(self.layer_index, _FFN_OUTPUT)
        h = dropout(self.output(h), self.hidden_dropout, dropout_keys, site, full_shape=x.shape[1:])
        return self.output_norm(h + attended)


class DebertaV2Encoder(nnx.Module):
    """``DebertaV2Model`` up to its last hidden state.

    Args:
        config: an ``EncoderConfig`` with ``model_type="deberta-v2"`` (DeBERTa-v2 and v3).
        dtype: compute dtype of activations; parameters are always float32.
        rngs: parameter initialisation keys.
    """

    # Named adapter targets, read by jax_adalora.adapters.inject_adapters (the adapter protocol's other half).
    target_presets = TARGET_PRESETS

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        _check_supported(config)
        self.remat = config.remat
        self.embeddings = DebertaEmbeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [DebertaLayer(config, layer_index=i, dtype=dtype, rngs=rngs) for i in range(config.num_hidden_layers)]
        )
        self.rel_embeddings = (
            _embed(2 * attention_span(config), config.hidden_size, dtype, rngs) if config.relative_attention else None
        )
        # transformers builds this LayerNorm from norm_rel_ebd alone, relative attention or not.
        self.rel_norm = (
            _layer_norm(config.hidden_size, config, dtype, rngs)
            if "layer_norm" in relative_embedding_norms(config)
            else None
        )

    def relative_embeddings(self) -> jax.Array | None:
        """The relative-position table (2S, H), layer-normalised when ``norm_rel_ebd`` says so."""
        if self.rel_embeddings is None:
            return None
        table = self.rel_embeddings.embedding[...].astype(self.rel_embeddings.dtype)
        return self.rel_norm(table) if self.rel_norm is not None else table

    def __call__(
        self, input_ids, attention_mask, token_type_ids=None, *, dropout_keys=None, first_token_only=False
    ) -> jax.Array:
        """input_ids, attention_mask, token_type_ids (B, L) int; dropout_keys ``DropoutKeys`` or None -> (B, L, H);
        with ``first_token_only``, (B, 1, H): the last layer then computes the first position alone (what
        the context pooler reads), the same values and masks as the first row of the full output."""
        x = self.embeddings(input_ids, attention_mask, token_type_ids, dropout_keys=dropout_keys)  # (B, L, H)
        valid = attention_mask.astype(bool)
        pair_mask = valid[:, :, None] & valid[:, None, :]  # (B, L, L)
        rel_embeddings = self.relative_embeddings()
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            num_queries = 1 if first_token_only and i == last else None
            x = run_layer(
                layer,
                x,
                pair_mask,
                rel_embeddings,
                dropout_keys=dropout_keys,
                num_queries=num_queries,
                remat=self.remat,
            )
        return x


class DebertaContextPooler(nnx.Module):
    """transformers' ``ContextPooler``: first token -> dropout -> dense -> ``pooler_hidden_act``."""

    def __init__(self, config: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        size = config.pooler_hidden_size or config.hidden_size
        self.dropout_rate = config.pooler_dropout
        self.act = config.pooler_hidden_act
        activation(self.act, "pooler_hidden_act")  # fail at construction on an unknown name
        self.dense = _linear(size, size, dtype, rngs)

    def __call__(self, hidden: jax.Array, *, dropout_keys=None) -> jax.Array:
        """hidden (B, L, H) -> (B, pooler_hidden_size)."""
        token = dropout(hidden[:, 0], self.dropout_rate, dropout_keys, POOLER_DROPOUT_SITE)
        return activation(self.act)(self.dense(token))

"""A Llama-family causal language model in Flax NNX, computing what transformers' ``LlamaForCausalLM`` computes.

Pre-norm decoder: token embedding; per layer RMSNorm -> grouped-query self-attention with rotary position
embeddings (RoPE) -> residual, RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; ``lm_head`` (or the
token embedding itself, when the checkpoint ties them). The same module covers SmolLM2, Llama 2/3,
Mistral and Qwen2: they differ in :class:`~jax_adalora.models.llama.config.LlamaConfig` flags only.

Every projection is an ``nnx.Linear`` named as transformers names it (``q_proj``, ``k_proj``, ``v_proj``,
``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``), at the module paths of the checkpoint
(``model.layers.3.self_attn.q_proj``), so that adapters found by path and exported adapter files map
1:1 onto the checkpoint's. Projections are only ever called, never read, so an adapter wrapper with
the same ``__call__`` can replace them.

With ``config.scan_layers`` the layers are built once under ``nnx.vmap`` (every variable gets a leading
layer axis, ``model.layers.self_attn.q_proj.kernel`` is (L, D, H·Dh)) and run with ``nnx.scan``: one
compiled layer however deep the model, the same values.

Positions. A token's position is the number of attended (mask 1) tokens before it, so a row padded on
the left gets the same logits as the row unpadded, and a row padded on the right is numbered 0, 1, ...
as transformers numbers it. Pass ``positions`` to number tokens otherwise.

Generation keeps a :class:`KVCache`: keys and values of every layer in fixed-size slots, with the mask of
slots holding real tokens. :func:`generate` fills it from the prompt (prefill), then adds one token per
step; both steps are jitted once per shape and reused across calls.

Example::

    model = LlamaForCausalLM(LlamaConfig.llama3_tiny(), rngs=nnx.Rngs(0))
    logits = model(input_ids, attention_mask)                      # (B, T, V)
    new_tokens = generate(model, prompt_ids, max_new_tokens=20)     # (B, N), greedy
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.models.llama.config import LlamaConfig
from jax_adalora.models.targets import DECODER_TARGET_PRESETS

_INIT = nnx.initializers.normal(stddev=0.02)  # transformers' initializer_range


# ---- rotary position embeddings -------------------------------------------------------------------
def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """RoPE's inverse frequencies ``theta^(-2i/d)``, scaled as the checkpoint's ``rope_scaling`` says. (Dh/2,) float32.

    Computed in float32 as transformers computes them, so that angles at long positions agree bit for bit
    as far as float32 allows.
    """
    dim = config.attention_head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(config.rope_theta), exponents)).astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    # llama3: long wavelengths (low frequencies) slowed down by `factor`, short ones kept, smooth in between.
    original = scaling.original_max_position_embeddings
    low_freq_wavelength = original / scaling.low_freq_factor
    high_freq_wavelength = original / scaling.high_freq_factor
    wavelength = (2 * np.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelength > low_freq_wavelength, inv_freq / np.float32(scaling.factor), inv_freq)
    smooth = (original / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / np.float32(scaling.factor) + smooth * scaled
    medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(inv_freq: np.ndarray, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos and sin of ``position * inv_freq``, each frequency twice (the two halves of a head). (B, T, Dh) each."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (B, T, Dh/2)
    angles = jnp.concatenate([angles, angles], axis=-1)  # (B, T, Dh)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates each head's (first half, second half) pairs by the position's angles. x (B, T, N, Dh)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


# ---- building blocks -------------------------------------------------------------------------------
class RMSNorm(nnx.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, the statistic in float32 whatever the compute dtype."""

    def __init__(self, size: int, eps: float, *, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


def _linear(config: LlamaConfig, d_in: int, d_out: int, use_bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=use_bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=_INIT,
        rngs=rngs,
    )


class LayerCache(NamedTuple):
    """One layer's slots of a :class:`KVCache`."""

    keys: jax.Array  # (B, S, KVH, Dh)
    values: jax.Array  # (B, S, KVH, Dh)


class LlamaAttention(nnx.Module):
    """Grouped-query self-attention: ``num_attention_heads`` query heads share ``num_key_value_heads`` key/value
    heads in consecutive groups (query head h reads key/value head h // group), as transformers' ``repeat_kv``."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.attention_head_dim
        hidden, q_size, kv_size = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = _linear(config, hidden, q_size, config.attention_bias, rngs)
        self.k_proj = _linear(config, hidden, kv_size, config.attention_bias, rngs)
        self.v_proj = _linear(config, hidden, kv_size, config.attention_bias, rngs)
        self.o_proj = _linear(config, q_size, hidden, config.attention_output_bias, rngs)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        allowed: jax.Array,
        cache: LayerCache | None = None,
        start: jax.Array | int = 0,
    ) -> tuple[jax.Array, LayerCache | None]:
        """x (B, T, D); cos, sin (B, T, Dh); allowed (B, T, S) bool, which keys each query may read; ``cache``
        (slots (B, S, KVH, Dh)) gets this call's keys and values at slots ``start ... start + T - 1``.

        Returns:
          ``(out (B, T, D), the updated cache or None)``; without a cache, S = T.
        """
        batch, length, _ = x.shape
        group = self.num_heads // self.num_kv_heads
        q = apply_rope(self.q_proj(x).reshape(batch, length, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).reshape(batch, length, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).reshape(batch, length, self.num_kv_heads, self.head_dim)  # (B, T, KVH, Dh)
        if cache is not None:
            at = (0, start, 0, 0)
            cache = LayerCache(
                jax.lax.dynamic_update_slice(cache.keys, k.astype(cache.keys.dtype), at),
                jax.lax.dynamic_update_slice(cache.values, v.astype(cache.values.dtype), at),
            )
            k, v = cache.keys.astype(q.dtype), cache.values.astype(q.dtype)  # (B, S, KVH, Dh)
        q = q.reshape(batch, length, self.num_kv_heads, group, self.head_dim)  # (B, T, KVH, G, Dh)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * self.head_dim**-0.5
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)  # (B, KVH, G, T, S)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        context = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(context), cache


class LlamaMLP(nnx.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = _linear(config, hidden, inner, config.mlp_bias, rngs)
        self.up_proj = _linear(config, hidden, inner, config.mlp_bias, rngs)
        self.down_proj = _linear(config, inner, hidden, config.mlp_bias, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        param_dtype = jnp.dtype(config.param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = LlamaAttention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = LlamaMLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, allowed, cache=None, start=0) -> tuple[jax.Array, LayerCache | None]:
        """x (B, T, D) -> ((B, T, D), the updated cache); arguments as :meth:`LlamaAttention.__call__`."""
        attended, cache = self.self_attn(self.input_layernorm(x), cos, sin, allowed, cache, start)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), cache


def _stacked_layers(config: LlamaConfig, rngs: nnx.Rngs) -> LlamaDecoderLayer:
    """``num_hidden_layers`` layers as one module whose every variable has a leading layer axis."""

    @nnx.split_rngs(splits=config.num_hidden_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=config.num_hidden_layers)
    def build(rngs: nnx.Rngs) -> LlamaDecoderLayer:
        return LlamaDecoderLayer(config, rngs=rngs)

    return build(rngs)


# ---- the cache ---------------------------------------------------------------------------------------
class KVCache(NamedTuple):
    """Keys and values of every layer in ``S`` fixed slots, filled left to right (a pytree: jit carries it).

    ``mask`` marks the slots that hold a real token (the attention mask of everything written so far);
    ``length`` is the number of slots written, where the next call writes.
    """

    keys: jax.Array  # (L, B, S, KVH, Dh)
    values: jax.Array  # (L, B, S, KVH, Dh)
    mask: jax.Array  # (B, S) bool
    length: jax.Array  # () int32

    @property
    def size(self) -> int:
        return self.mask.shape[1]


def init_cache(config: LlamaConfig, batch_size: int, size: int, dtype=None) -> KVCache:
    """An empty cache of ``size`` slots per row (prompt plus every token to be generated).

    Args:
      config: the model's config.
      batch_size: rows.
      size: slots; a call that writes past them would overwrite the last slots, so size it for the whole run.
      dtype: of the keys and values; default the model's compute dtype.
    """
    shape = (config.num_hidden_layers, batch_size, size, config.num_key_value_heads, config.attention_head_dim)
    dtype = jnp.dtype(dtype or config.dtype)
    return KVCache(
        jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch_size, size), bool), jnp.array(0, jnp.int32)
    )


# ---- the model -----------------------------------------------------------------------------------------
class LlamaModel(nnx.Module):
    """The decoder up to the final norm (transformers' ``LlamaModel``): ``embed_tokens``, ``layers``, ``norm``."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            embedding_init=_INIT,
            rngs=rngs,
        )
        if config.scan_layers:
            self.layers = _stacked_layers(config, rngs)
        else:
            self.layers = nnx.List([LlamaDecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=jnp.dtype(config.param_dtype))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """input_ids (B, T) int; attention_mask (B, T), 1 for real tokens (default all); positions (B, T) int
        (default: the count of attended tokens before each, see the module's docstring); ``cache`` from
        :func:`init_cache` or a previous call.

        Returns:
          ``(hidden (B, T, D) after the final norm, the updated cache or None)``.
        """
        config = self.config
        batch, length = input_ids.shape
        mask = jnp.ones((batch, length), bool) if attention_mask is None else attention_mask.astype(bool)
        if cache is None:
            start, key_mask = 0, mask  # (B, S = T)
        else:
            start = cache.length
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, start))  # (B, S)
        if positions is None:
            counted = jnp.cumsum(key_mask, axis=1, dtype=jnp.int32) - 1
            positions = jnp.maximum(jax.lax.dynamic_slice_in_dim(counted, start, length, axis=1), 0)  # (B, T)
        allowed = key_mask[:, None, :] & _causal(config, start, length, key_mask.shape[1])[None]  # (B, T, S)
        cos, sin = rope_cos_sin(rope_inverse_frequencies(config), positions, jnp.dtype(config.dtype))
        x = self.embed_tokens(input_ids)  # (B, T, D)
        layer_caches = None if cache is None else LayerCache(cache.keys, cache.values)
        x, layer_caches = self._run_layers(x, cos, sin, allowed, layer_caches, start)
        if cache is not None:
            cache = KVCache(layer_caches.keys, layer_caches.values, key_mask, cache.length + length)
        return self.norm(x), cache

    def _run_layers(self, x, cos, sin, allowed, caches: LayerCache | None, start):
        """Every layer in turn; ``caches`` stacked on a leading layer axis, (L, B, S, KVH, Dh) each."""
        if self.config.scan_layers:
            if caches is None:

                @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
                def through(x, layer):
                    return layer(x, cos, sin, allowed)[0]

                return through(x, self.layers), None

            @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
            def through_cached(x, layer, layer_cache):
                return layer(x, cos, sin, allowed, layer_cache, start)

            return through_cached(x, self.layers, caches)
        updated = []
        for i, layer in enumerate(self.layers):
            layer_cache = None if caches is None else LayerCache(caches.keys[i], caches.values[i])
            x, layer_cache = layer(x, cos, sin, allowed, layer_cache, start)
            updated.append(layer_cache)
        if caches is None:
            return x, None
        return x, LayerCache(jnp.stack([c.keys for c in updated]), jnp.stack([c.values for c in updated]))


def _causal(config: LlamaConfig, start, length: int, size: int) -> jax.Array:
    """(T, S) bool: query slot ``start + t`` may read key slot ``s`` when ``s <= start + t`` (and, with a sliding
    window W, ``s > start + t - W``)."""
    query_slots = start + jnp.arange(length)[:, None]
    key_slots = jnp.arange(size)[None, :]
    allowed = key_slots <= query_slots
    if config.sliding_window is not None:
        allowed &= key_slots > query_slots - config.sliding_window
    return allowed


class LlamaForCausalLM(nnx.Module):
    """transformers' ``LlamaForCausalLM`` (and ``MistralForCausalLM``, ``Qwen2ForCausalLM``): next-token logits.

    Args:
      config: the architecture; ``config.scan_layers`` stacks the layers, ``config.dtype`` sets the compute dtype.
      rngs: parameter initialisation keys.
    """

    # Named adapter targets, read by jax_adalora.adapters.inject_adapters (the adapter protocol's other half).
    target_presets = DECODER_TARGET_PRESETS

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaModel(config, rngs=rngs)
        # Tied: the token embedding is the output projection, and there is no lm_head weight to hold.
        self.lm_head = (
            None if config.tie_word_embeddings else _linear(config, config.hidden_size, config.vocab_size, False, rngs)
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ):
        """input_ids (B, T) int; attention_mask (B, T) (1: real token, 0: padding); positions (B, T) int or None;
        ``cache`` a :class:`KVCache` or None.

        Returns:
          logits (B, T, V) in the compute dtype; with a ``cache``, ``(logits, the updated cache)``.
        """
        hidden, new_cache = self.model(input_ids, attention_mask, positions, cache)  # (B, T, D)
        logits = self.model.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        return logits if cache is None else (logits, new_cache)


# ---- generation -------------------------------------------------------------------------------------------

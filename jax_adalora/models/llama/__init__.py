"""Llama-family causal language models (Llama 2/3, SmolLM2, Mistral, Qwen2) in Flax NNX: the model, its KV-cache
generation, and loading from Hugging Face directories, GGUF files and packaged short names."""

from jax_adalora.models.llama.config import LlamaConfig, RopeScaling
from jax_adalora.models.llama.generation import generate
from jax_adalora.models.llama.modeling import KVCache, LlamaForCausalLM, init_cache
from jax_adalora.models.llama.packaged import PACKAGED_CHECKPOINTS, packaged_model_path
from jax_adalora.models.llama.weights import (
    from_pretrained,
    hf_weight_map,
    load_config,
    load_gguf,
    load_hf_checkpoint,
    load_tokenizer,
    load_weights,
    read_gguf,
    to_hf_state_dict,
)

__all__ = [
    "PACKAGED_CHECKPOINTS",
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "RopeScaling",
    "from_pretrained",
    "generate",
    "hf_weight_map",
    "init_cache",
    "load_config",
    "load_gguf",
    "load_hf_checkpoint",
    "load_tokenizer",
    "load_weights",
    "packaged_model_path",
    "read_gguf",
    "to_hf_state_dict",
]

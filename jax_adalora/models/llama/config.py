"""Configuration of a Llama-family causal language model: Llama 2/3, SmolLM2, Mistral, Qwen2.

One frozen dataclass, :class:`LlamaConfig`, built from a transformers ``config.json`` dict
(:meth:`LlamaConfig.from_hf_config`, both the ``rope_scaling`` + ``rope_theta`` fields of transformers 4
and the ``rope_parameters`` of transformers 5) or from a named size (:meth:`LlamaConfig.smollm2_135m`,
:meth:`LlamaConfig.llama3_tiny`, :meth:`LlamaConfig.qwen2_tiny`, ...), each taking field overrides.
``scan_layers``, ``dtype`` and ``param_dtype`` are ours, not transformers': they choose how the model is
built and computed, not what it computes.

The family differs only in flags: Qwen2 has biases on q/k/v but not on the attention output, Llama
may have both or neither, Mistral may restrict attention to a sliding window. Anything the model does
not build (another rope type, a MoE, per-head norms) is refused by :meth:`LlamaConfig.from_hf_config`
with one line naming the field.

Example::

    config = LlamaConfig.smollm2_135m(scan_layers=True)
    config = LlamaConfig.from_hf_config(json.loads(Path("model/config.json").read_text()))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("linear", "llama3")  # besides plain RoPE (rope_scaling=None)
DTYPES = ("float32", "bfloat16", "float16")


# The tiny test configurations' shapes (a few kilobytes of weights): each family's tiny config adds its own traits.
_TINY_SHAPES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    eos_token_ids=(2,),
)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How the checkpoint stretches RoPE's frequencies beyond its training length (transformers' fields).

    ``"linear"`` divides every frequency by ``factor``. ``"llama3"`` (Llama 3.1+) divides only the low
    frequencies (wavelengths above ``original_max_position_embeddings / low_freq_factor``) by ``factor``,
    keeps the high ones (below ``.../ high_freq_factor``), and interpolates between the two.
    """

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_scaling.rope_type={self.rope_type!r}: expected one of {ROPE_TYPES} (or no scaling)")
        if self.factor <= 0:
            raise ValueError(f"rope_scaling.factor={self.factor}: must be positive")
        if self.rope_type == "llama3":
            if self.original_max_position_embeddings is None:
                raise ValueError("rope_scaling.original_max_position_embeddings is required for rope_type 'llama3'")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError(
                    f"rope_scaling.high_freq_factor={self.high_freq_factor} must exceed "
                    f"low_freq_factor={self.low_freq_factor}"
                )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    model_type: str = "llama"  # "llama" | "mistral" | "qwen2": only where a checkpoint came from
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32  # fewer than num_attention_heads: grouped-query attention
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False  # the output projection is the token embedding (no lm_head weight)
    attention_bias: bool = False  # biases on q_proj, k_proj, v_proj (Qwen2; Llama with attention_bias)
    attention_output_bias: bool = False  # a bias on o_proj (Llama with attention_bias; not Qwen2)
    mlp_bias: bool = False  # biases on gate_proj, up_proj, down_proj
    sliding_window: int | None = None  # each query sees only the last ``sliding_window`` keys (Mistral)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()  # generation stops at any of them
    # Ours, not transformers': build the layers stacked (one leading layer axis per variable, run with
    # nnx.scan: one compiled layer however deep the model) or as a list (one module per layer, the paths
    # transformers names, what AdaLoRA's adapters find today).
    scan_layers: bool = False
    dtype: str = "float32"  # compute dtype of activations; softmax, RMSNorm and RoPE run in float32
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"LlamaConfig.model_type={self.model_type!r}: expected one of {SUPPORTED_MODEL_TYPES}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig.num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LlamaConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; give head_dim"
            )
        if self.attention_head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim={self.attention_head_dim}: RoPE needs an even head size")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"LlamaConfig.{field}={getattr(self, field)!r}: expected one of {DTYPES}")
        if isinstance(self.rope_scaling, Mapping):  # accept transformers' dict
            object.__setattr__(self, "rope_scaling", _rope_scaling(dict(self.rope_scaling)))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))

    @property
    def attention_head_dim(self) -> int:
        """The per-head size actually used: ``head_dim``, or ``hidden_size // num_attention_heads``."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    def replace(self, **overrides) -> LlamaConfig:
        return dataclasses.replace(self, **overrides)

    # ---- named sizes -------------------------------------------------------------------------
    @classmethod
    def smollm2_135m(cls, **overrides) -> LlamaConfig:
        """HuggingFaceTB/SmolLM2-135M(-Instruct): 30 layers, hidden 576, 9 query and 3 key/value heads, tied
        embeddings, vocabulary 49,152."""
        base = dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            rms_norm_eps=1e-5,
            rope_theta=100000.0,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_ids=(2,),
        )
        return cls(**{**base, **overrides})

    @classmethod
    def llama3_tiny(cls, **overrides) -> LlamaConfig:
        """A few-kilobyte model shaped like Llama 3.1 (grouped-query attention, llama3 RoPE scaling, untied
        embeddings), for tests and examples."""
        base = dict(
            _TINY_SHAPES,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, original_max_position_embeddings=32),
            bos_token_id=1,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def qwen2_tiny(cls, **overrides) -> LlamaConfig:
        """A few-kilobyte model shaped like Qwen2 / Qwen2.5 (q/k/v biases, tied embeddings), for tests."""
        base = dict(
            _TINY_SHAPES, model_type="qwen2", rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=True
        )
        return cls(**{**base, **overrides})

    @classmethod
    def qwen2_5_0_5b(cls, **overrides) -> LlamaConfig:
        """Qwen/Qwen2.5-0.5B(-Instruct): 24 layers, hidden 896, 14 query and 2 key/value heads, tied embeddings."""
        base = dict(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            attention_bias=True,
            bos_token_id=151643,
            eos_token_ids=(151645, 151643),
        )
        return cls(**{**base, **overrides})

    # ---- transformers' config.json -------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> LlamaConfig:
        """The config of a transformers ``config.json`` dict of a ``llama``, ``mistral`` or ``qwen2`` model.

        Args:
          hf: the parsed ``config.json``.
          overrides: our own fields (``scan_layers``, ``dtype``, ``param_dtype``) or any other to replace.

        Raises:
          ValueError: one line naming the field that the model does not build (another ``model_type``, an
            activation other than SiLU, a rope type other than linear / llama3, Qwen2's sliding window).
        """
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"config.json model_type={model_type!r}: expected one of {SUPPORTED_MODEL_TYPES}")
        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"config.json hidden_act={act!r}: only 'silu' (SwiGLU) is built")
        theta, scaling = _rope_fields(hf)
        if model_type == "qwen2":
            if hf.get("use_sliding_window"):
                raise ValueError("config.json use_sliding_window=true: Qwen2's per-layer sliding window is not built")
            biases = dict(attention_bias=True, attention_output_bias=False)
            window = None
        else:
            bias = bool(hf.get("attention_bias", False))
            biases = dict(attention_bias=bias, attention_output_bias=bias)
            window = hf.get("sliding_window") if model_type == "mistral" else None
        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)
        fields = dict(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_window=window,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            **biases,
        )
        return cls(**{**fields, **overrides})

    def to_hf_config(self) -> dict[str, Any]:
        """transformers' ``config.json`` fields for this model (transformers 5 spelling: ``rope_parameters``)."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope.update({k: v for k, v in dataclasses.asdict(self.rope_scaling).items() if v is not None})
        architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        out = dict(
            model_type=self.model_type,
            architectures=[architecture[self.model_type]],
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.attention_head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
        )
        if self.model_type != "qwen2":
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        return out


def _rope_fields(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """``(rope_theta, scaling)`` from transformers 5's ``rope_parameters`` or 4's ``rope_theta`` + ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    if params and not isinstance(next(iter(params.values())), int | float | str | type(None)):
        raise ValueError("config.json rope_parameters: per-layer-type RoPE parameters are not built")
    legacy = dict(hf.get("rope_scaling") or {})
    merged = {**legacy, **params}
    theta = float(merged.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) not in (1, 1.0, None):
        raise ValueError("config.json partial_rotary_factor: only RoPE over the whole head is built")
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type == "default":
        return theta, None
    merged.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    return theta, _rope_scaling(merged)


def _rope_scaling(fields: dict[str, Any]) -> RopeScaling:
    rope_type = fields.get("rope_type", fields.get("type"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"config.json rope_scaling.rope_type={rope_type!r}: expected one of {ROPE_TYPES} or 'default'")
    if "factor" not in fields:
        raise ValueError(f"config.json rope_scaling.factor is missing (rope_type {rope_type!r})")
    kwargs: dict[str, Any] = dict(rope_type=rope_type, factor=float(fields["factor"]))
    if rope_type == "llama3":
        for name in ("low_freq_factor", "high_freq_factor"):
            if name not in fields:
                raise ValueError(f"config.json rope_scaling.{name} is missing (rope_type 'llama3')")
            kwargs[name] = float(fields[name])
        original = fields.get("original_max_position_embeddings")
        kwargs["original_max_position_embeddings"] = None if original is None else int(original)
    return RopeScaling(**kwargs)

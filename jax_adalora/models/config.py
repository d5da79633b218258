"""Encoder configuration: one frozen dataclass for the BERT and DeBERTa-v2/v3 families.

Built from a Hugging Face ``config.json`` (``EncoderConfig.from_hf_dict``) or from a named size
(``EncoderConfig.bert_base()``, ``.minilm_l6()``, ``.deberta_v3_base()``), each taking field overrides.
``remat`` is ours, not Hugging Face's: it is neither read from nor written to ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "deberta-v2")
_OWN_FIELDS = ("remat", "extra_hf_fields")  # not Hugging Face config fields


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    model_type: str = "bert"  # "bert" | "roberta" | "deberta-v2" (DeBERTa-v3 is "deberta-v2" in HF)
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Classification head.
    classifier_dropout: float | None = None
    # DeBERTa-v2/v3 only.
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    position_biased_input: bool = True
    embedding_size: int | None = None
    pooler_hidden_size: int | None = None
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    # Recompute each encoder layer's activations in the backward pass instead of keeping them (nnx.remat): less
    # memory for long sequences or large batches, about one more forward pass of compute. Same values.
    remat: bool = False
    # Kept so that export can write back what it read.
    # hash=False: values may be lists or dicts (e.g. id2label); the config must stay hashable, since
    # modules keep it as a static attribute of their graphdef.
    extra_hf_fields: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), hash=False)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"EncoderConfig.model_type={self.model_type!r}: expected one of {SUPPORTED_MODEL_TYPES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"EncoderConfig.hidden_size={self.hidden_size} must be divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **overrides) -> EncoderConfig:
        return dataclasses.replace(self, **overrides)

    # ---- named sizes -------------------------------------------------------------------------
    @classmethod
    def bert_base(cls, **overrides) -> EncoderConfig:
        return cls(**overrides)

    @classmethod
    def minilm_l6(cls, **overrides) -> EncoderConfig:
        """sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, FFN 1536."""
        base = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        return cls(**{**base, **overrides})

    @classmethod
    def deberta_v3_base(cls, **overrides) -> EncoderConfig:
        """microsoft/deberta-v3-base."""
        base = dict(
            model_type="deberta-v2",
            vocab_size=128100,
            type_vocab_size=0,
            layer_norm_eps=1e-7,
            relative_attention=True,
            max_relative_positions=-1,
            position_buckets=256,
            pos_att_type=("p2c", "c2p"),
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            pooler_hidden_size=768,
            pooler_dropout=0.0,
            pooler_hidden_act="gelu",
        )
        return cls(**{**base, **overrides})

    # ---- Hugging Face config.json ------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> EncoderConfig:
        model_type = hf.get("model_type", "bert")
        known = {f.name for f in dataclasses.fields(cls)} - set(_OWN_FIELDS)
        kwargs = {k: v for k, v in hf.items() if k in known}
        kwargs["model_type"] = model_type
        if "num_hidden_layers" not in hf and "n_layers" in hf:
            kwargs["num_hidden_layers"] = hf["n_layers"]
        pos_att = hf.get("pos_att_type")
        if isinstance(pos_att, str):
            pos_att = [p.strip() for p in pos_att.lower().split("|") if p.strip()]
        kwargs["pos_att_type"] = tuple(pos_att or ())
        norm_rel = hf.get("norm_rel_ebd", "none")
        kwargs["norm_rel_ebd"] = norm_rel if isinstance(norm_rel, str) else "none"
        extra = tuple(sorted((k, v) for k, v in hf.items() if k not in known and _jsonable(v)))
        return cls(**kwargs, extra_hf_fields=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> EncoderConfig:
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config.json not found") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_hf_dict(hf)

    def to_hf_dict(self) -> dict[str, Any]:
        out = dict(self.extra_hf_fields)
        for f in dataclasses.fields(self):
            if f.name in _OWN_FIELDS:
                continue
            value = getattr(self, f.name)
            if f.name == "pos_att_type":
                value = list(value)
            out[f.name] = value
        return out


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True

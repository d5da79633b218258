"""Models out as Hugging Face checkpoints: ``save_pretrained`` writes ``config.json`` and ``model.safetensors``
that transformers' ``AutoModel*.from_pretrained`` loads (and :func:`jax_adalora.models.from_pretrained`), the
weights under transformers' keys through the model's own key map (``model.hf_weight_map()``)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.model_dirs import CONFIG_FILE
from jax_adalora.models.weight_map import variable_at

# Config fields that only DeBERTa reads; left out of a BERT / RoBERTa export.
_DEBERTA_ONLY_FIELDS = (
    "relative_attention",
    "max_relative_positions",
    "position_buckets",
    "pos_att_type",
    "share_att_key",
    "norm_rel_ebd",
    "position_biased_input",
    "embedding_size",
    "pooler_hidden_size",
    "pooler_dropout",
    "pooler_hidden_act",
)
# Fields that export writes afresh from the model (head, labels, dtype) or drops.
_REWRITTEN_FIELDS = (
    "architectures",
    "num_labels",
    "id2label",
    "label2id",
    "problem_type",
    "_name_or_path",
    "torch_dtype",
)


def to_hf_state_dict(model) -> dict[str, np.ndarray]:
    """The model's weights under transformers' keys for its architecture (float32, torch layout).

    Raises:
      ValueError: the model still holds adapters (merge them first).
    """
    out = {}
    for hf_key, path, kind in model.hf_weight_map():
        value = np.asarray(variable_at(model, path)[...], np.float32)
        out[hf_key] = np.ascontiguousarray(value.T if kind == "linear" else value)
    return out


def hf_encoder_config(config: EncoderConfig) -> dict:
    """transformers' config fields for the encoder alone (no head fields), e.g. for ``AutoConfig.for_model``."""
    out = {k: v for k, v in config.to_hf_dict().items() if k not in _REWRITTEN_FIELDS}
    if config.model_type == "deberta-v2":
        # transformers reads a null embedding_size / pooler_hidden_size as a size, not as "hidden_size".
        return {k: v for k, v in out.items() if not (k in _DEBERTA_ONLY_FIELDS and v is None)}
    return {k: v for k, v in out.items() if k not in _DEBERTA_ONLY_FIELDS}


def hf_config_dict(model, *, id2label: Mapping[int, str] | None = None) -> dict:
    """``config.json`` contents for the model: its encoder config plus ``architectures`` and the labels."""
    config: EncoderConfig = model.config
    out = hf_encoder_config(config)
    out["architectures"] = [model.hf_architecture]
    out["dtype"] = "float32"  # what save_pretrained writes, whatever the source checkpoint held
    if model.head_kind == "classification":
        n = model.num_labels
        if id2label is None:
            old = dict(config.extra_hf_fields).get("id2label") or {}
            id2label = old if len(old) == n else {i: f"LABEL_{i}" for i in range(n)}
        labels = {int(i): str(name) for i, name in id2label.items()}
        if sorted(labels) != list(range(n)):
            raise ValueError(f"id2label must name labels 0..{n - 1}, got keys {sorted(labels)}")
        out["id2label"] = {str(i): labels[i] for i in range(n)}
        out["label2id"] = {labels[i]: i for i in range(n)}
        if n == 1:
            out["problem_type"] = "regression"
    return out


def save_pretrained(
    model, directory: str | os.PathLike, *, tokenizer=None, id2label: Mapping[int, str] | None = None
) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` (and the tokenizer's files if given), atomically.

    The files go to a temporary directory beside ``directory`` that is then renamed into place; an
    existing model directory (one with a ``config.json``) is replaced whole. The result loads with
    transformers' ``AutoModel*.from_pretrained`` and with :func:`from_pretrained`.

    Raises:
      FileExistsError: ``directory`` exists, is not empty and holds no config.json (not a model directory).
      ValueError: the model still holds adapters (merge them first).
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    if directory.exists() and (
        not directory.is_dir() or (any(directory.iterdir()) and not (directory / CONFIG_FILE).exists())
    ):
        raise FileExistsError(f"{directory}: exists and is not a model directory; refusing to replace it")
    state = to_hf_state_dict(model)
    config = hf_config_dict(model, id2label=id2label)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        if directory.exists():
            retired = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            directory.rename(retired)
            staging.rename(directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory

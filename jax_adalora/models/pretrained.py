"""Hugging Face encoder checkpoints in: ``from_pretrained``, ``load_tokenizer``.

Loading reads a local directory (``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``,
sharded or not), the packaged all-MiniLM-L6-v2 (alias ``"minilm-l6"``), or a hub id, found by
:mod:`jax_adalora.models.model_dirs` (offline, a hub id fails within seconds saying what to pass instead);
:mod:`jax_adalora.models.hf_export` writes models out again (``save_pretrained``).

Weights go through the model's own key map (``model.hf_weight_map()``), the same one export uses.
Checkpoint keys are matched with or without the base-model prefix (``bert.``, ``roberta.``,
``deberta.``), so a bare ``BertModel`` checkpoint (as sentence-transformers ships) loads into a task
model, and a task checkpoint loads into a bare encoder. Missing and unexpected keys are logged by
name; a head missing from the checkpoint is freshly initialised, and the log says so. A shape
mismatch is an error naming the key and both shapes.

Example::

    model = from_pretrained("minilm-l6", head="classification", num_labels=2)
    tokenizer = load_tokenizer("minilm-l6")
    save_pretrained(merge_adapters(model), "runs/merged", tokenizer=tokenizer)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.heads import HEAD_KINDS, MODEL_PREFIXES, build_model
from jax_adalora.models.model_dirs import CONFIG_FILE, WEIGHT_FILES, resolve_model_dir
from jax_adalora.models.weight_map import variable_at

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadInfo:
    """What loading found: the files read and the keys that did not line up."""

    directory: Path
    weights_file: Path
    loaded: int  # number of variables set from the checkpoint
    missing: tuple[str, ...]  # encoder keys the checkpoint lacked (left at their random init)
    initialised_head: tuple[str, ...]  # head keys the checkpoint lacked (freshly initialised)
    unexpected: tuple[str, ...]  # checkpoint keys the model has no place for


# ---- reading weights ---------------------------------------------------------------------------
def read_state_dict(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    """All tensors of the checkpoint in ``directory`` as numpy arrays, and the file they came from."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.exists():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state: dict[str, np.ndarray] = {}
            for shard in shards:
                state.update(_read_file(directory / shard))
            return state, path
        return _read_file(path), path
    raise FileNotFoundError(f"{directory}: no weights file found (expected one of {', '.join(WEIGHT_FILES)})")


def _read_file(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights shard not found")
    try:
        return _read_tensors(path)
    except (OSError, MemoryError):
        raise
    except Exception as err:  # safetensors and torch raise their own types for a damaged file
        raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():
                try:
                    out[key] = handle.get_tensor(key)
                except TypeError:  # bfloat16 has no numpy dtype: go through torch
                    out[key] = None
        if any(v is None for v in out.values()):
            with safe_open(str(path), framework="pt") as handle:
                out.update({k: handle.get_tensor(k).float().numpy() for k, v in out.items() if v is None})
        return out
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


# ---- loading -----------------------------------------------------------------------------------
def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    head: str | None = "classification",
    num_labels: int = 2,
    dtype=jnp.float32,
    seed: int = 0,
    remat: bool = False,
    return_info: bool = False,
):
    """A BERT / RoBERTa / DeBERTa-v2 model with pretrained weights.

    Args:
      name_or_path: a local directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
        ``"minilm-l6"`` (the packaged all-MiniLM-L6-v2), or a hub id (cache first, then the hub if it answers).
      head: ``"classification"`` (:class:`SequenceClassifier`), ``"qa"`` (:class:`QuestionAnswerer`) or
        ``None`` (:class:`EncoderModel`, the last hidden state).
      num_labels: classes of the classification head; 1 means regression.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      seed: initialises whatever the checkpoint lacks (typically the head).
      remat: recompute each encoder layer's activations in the backward pass (``EncoderConfig.remat``).
      return_info: also return a :class:`LoadInfo`.

    Returns:
      The model, or ``(model, LoadInfo)`` with ``return_info``.

    Raises:
      FileNotFoundError: no config.json or no weights file (``ModelNotFoundError`` for a hub id offline).
      ValueError: an unsupported ``model_type``, a bad ``head``, an encoder weight whose shape does not fit,
        or a checkpoint none of whose keys match the model. A classifier trained for another number of labels
        is not an error: it is initialised fresh (and logged), like a head the checkpoint lacks.
    """
    if head not in HEAD_KINDS:
        raise ValueError(f"head={head!r}: expected one of {HEAD_KINDS}")
    directory = resolve_model_dir(name_or_path)
    config = load_config(directory)
    check_config_against_weights(config, directory)  # before reading or allocating anything large
    if remat:
        config = config.replace(remat=True)
    state, weights_file = read_state_dict(directory)
    model = build_model(config, head=head, num_labels=num_labels, dtype=dtype, rngs=nnx.Rngs(seed))
    info = load_state_dict(model, state, directory=directory, weights_file=weights_file)
    return (model, info) if return_info else model


def load_config(directory: Path) -> EncoderConfig:
    """The encoder config in ``directory/config.json``.

    Raises:
      FileNotFoundError: no config.json.
      ValueError: not JSON, or not a Hugging Face encoder config (no ``model_type``: anything else would
        silently become BERT-base), or a field of the wrong kind.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: config.json not found (a model directory needs config.json and weights)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON config ({err})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ValueError(
            f"{path}: not a Hugging Face encoder config (no model_type field; expected a BERT, RoBERTa or "
            "DeBERTa-v2/v3 config.json as transformers' save_pretrained writes it)"
        )
    try:
        return EncoderConfig.from_hf_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:encoder\.)?layer\.(\d+)\.")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header alone (a few KB read), checking the file is complete.

    Raises:
      ValueError: the header is unreadable or the file is shorter than its header says (truncated).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"{path}: truncated or not a safetensors file (header of {length} bytes, file {size})")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable safetensors header ({err})") from None
    entries = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    end = max((int(v.get("data_offsets", (0, 0))[1]) for v in entries.values()), default=0)
    if 8 + length + end > size:
        raise ValueError(f"{path}: truncated safetensors file ({size} bytes, its header needs {8 + length + end})")
    return {k: tuple(int(d) for d in v.get("shape", ())) for k, v in entries.items()}


def _weight_shapes(directory: Path) -> tuple[dict[str, tuple[int, ...]], Path] | None:
    """Shapes of the safetensors weights in ``directory`` from their headers; None for torch files."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.exists():
        return safetensors_shapes(single), single
    if index.exists():
        shapes: dict[str, tuple[int, ...]] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            if not (directory / shard).exists():
                raise FileNotFoundError(f"{directory / shard}: weights shard not found")
            shapes.update(safetensors_shapes(directory / shard))
        return shapes, index
    return None


def check_config_against_weights(config: EncoderConfig, directory: Path) -> None:
    """Checks the config's sizes against the weights' shapes (safetensors headers only), so that an absurd
    ``config.json`` fails in milliseconds instead of allocating gigabytes before the first shape mismatch.

    Raises:
      ValueError: naming config.json, the field, the weights file and the tensor that disagree.
    """
    found = _weight_shapes(Path(directory))
    if found is None:
        return
    shapes, weights_file = found
    config_file = Path(directory) / CONFIG_FILE

    def mismatch(field: str, value, key: str, shape) -> ValueError:
        return ValueError(f"{config_file}: {field}={value} does not fit {weights_file}: {key} has shape {shape}")

    layers = {int(m.group(1)) for key in shapes if (m := _LAYER_INDEX.search(key))}
    if layers and max(layers) + 1 != config.num_hidden_layers:
        raise ValueError(
            f"{config_file}: num_hidden_layers={config.num_hidden_layers} but {weights_file} holds "
            f"{max(layers) + 1} layers"
        )
    width = config.embedding_size or config.hidden_size
    for key, shape in shapes.items():
        if key.endswith("embeddings.word_embeddings.weight"):
            if shape != (config.vocab_size, width):
                field = "vocab_size" if shape[-1:] == (width,) else "hidden_size"
                raise mismatch(field, getattr(config, field), key, shape)
        elif key.endswith("embeddings.position_embeddings.weight") and shape[0] != config.max_position_embeddings:
            raise mismatch("max_position_embeddings", config.max_position_embeddings, key, shape)
        elif key.endswith("intermediate.dense.weight") and shape != (config.intermediate_size, config.hidden_size):
            raise mismatch("intermediate_size", config.intermediate_size, key, shape)


def max_sequence_length(config: EncoderConfig) -> int | None:
    """The longest row (special tokens included) the model's position embeddings can number, or None when it
    has no absolute positions (DeBERTa-v3: relative positions only)."""
    if config.model_type == "deberta-v2" and not config.position_biased_input:
        return None
    if config.model_type == "roberta":  # positions start after pad_token_id
        return config.max_position_embeddings - config.pad_token_id - 1
    return config.max_position_embeddings


def load_state_dict(
    model, state: Mapping[str, np.ndarray], *, directory: Path = Path("."), weights_file: Path = Path("?")
) -> LoadInfo:
    """Sets every variable of ``model`` that ``state`` (HF keys) holds; logs and returns what did not match."""
    prefix = MODEL_PREFIXES[model.config.model_type] + "."
    norm = lambda key: key.removeprefix(prefix)
    by_key = {norm(_legacy_name(k)): k for k in state}
    used: set[str] = set()
    missing, fresh_head = [], []
    for hf_key, path, kind in model.hf_weight_map():
        source = by_key.get(norm(hf_key))
        if source is None:
            (missing if path[0] == "encoder" else fresh_head).append(hf_key)
            continue
        variable = variable_at(model, path)
        value = np.asarray(state[source])
        value = value.T if kind == "linear" else value
        if value.shape != variable.shape and path[0] == "classifier":
            # A head trained for another label set (a checkpoint fine-tuned on another task): initialised
            # fresh for this one, as the other missing head weights are.
            fresh_head.append(f"{hf_key} (checkpoint {tuple(np.shape(state[source]))}, another number of labels)")
            used.add(source)
            continue
        if value.shape != variable.shape:
            expected = variable.shape[::-1] if kind == "linear" else variable.shape
            raise ValueError(
                f"{weights_file}: {source} has shape {tuple(np.shape(state[source]))} but the model "
                f"({model.hf_architecture}, {'.'.join(map(str, path))}) expects {tuple(expected)}"
            )
        variable.set_value(jnp.asarray(value, variable.dtype))
        used.add(source)
    if not used:
        sample = ", ".join(sorted(state)[:5])
        raise ValueError(
            f"{weights_file}: no weight matches a {model.hf_architecture} (model_type "
            f"{model.config.model_type!r}); the checkpoint has keys like {sample}"
        )
    unexpected = sorted(k for k in state if k not in used and not k.endswith("position_ids"))
    info = LoadInfo(directory, weights_file, len(used), tuple(missing), tuple(fresh_head), tuple(unexpected))
    _log_load(model, info)
    return info


def _legacy_name(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm parameters gamma / beta."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def _log_load(model, info: LoadInfo) -> None:
    log.info("loaded %d weights from %s into %s", info.loaded, info.weights_file, model.hf_architecture)
    if info.missing:
        log.warning(
            "%s lacks %d encoder weights, left randomly initialised: %s",
            info.weights_file,
            len(info.missing),
            ", ".join(info.missing),
        )
    if info.initialised_head:  # expected when fine-tuning starts from an encoder: the run trains the new head
        log.info(
            "%s has no %s head that fits; freshly initialised (the run trains it): %s",
            info.weights_file,
            model.head_kind or "pooler",
            ", ".join(info.initialised_head),
        )
    if info.unexpected:
        log.warning(
            "%s: %d weights unused by %s: %s",
            info.weights_file,
            len(info.unexpected),
            model.hf_architecture,
            ", ".join(info.unexpected),
        )


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs):
    """transformers' ``AutoTokenizer`` from the same place :func:`from_pretrained` reads (aliases included)."""
    from transformers import AutoTokenizer

    directory = resolve_model_dir(name_or_path)
    return AutoTokenizer.from_pretrained(str(directory), **kwargs)

"""Saving and loading a model's adapters as one safetensors file, checked against the model on load.

The file holds, per adapter at module path ``m``, the tensors ``m.P``, ``m.lam``, ``m.Q`` and ``m.mask`` (the
rank pattern: 1 for a kept triplet; a stacked adapter's with its leading layer axes), plus any other variables
the caller includes (a trained task head) under their '.'-joined paths, and metadata naming the format and each
adapter's scale. :func:`load_adapters` refuses a file that does not fit the model and says what differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save

from jax_adalora.adapters import AdaLoRAMask, AdaLoRAParam, adapter_modules, stacked_entry

FORMAT = "jax_adalora.adapters/1"
METADATA_KEY = "jax_adalora"
FACTORS = ("P", "lam", "Q", "mask")


def save_adapters(
    path: str | os.PathLike,
    model: nnx.Module,
    *,
    rank_pattern: Mapping[str, Sequence[bool]] | Any = None,
    include: Any = None,
) -> Path:
    """Writes every adapter of ``model`` (and the variables ``include`` selects) to ``path``, atomically.

    Training leaves the model's own masks all ones (the allocator prunes by setting λ to 0), so the rank pattern
    comes from the optimizer. The file must give back the model as it is: the loaded model's outputs equal this
    one's, or the call refuses with one line.

    Args:
      path: the ``.safetensors`` file to write (its folder must exist).
      model: a model with adapters.
      rank_pattern: the rank pattern stored as the masks: the ``nnx.Optimizer`` (or optax state) holding the
        :func:`jax_adalora.rank_allocator`, or ``{module_path: [kept, ...]}`` (:func:`jax_adalora.rank_pattern`,
        whose entries of a stacked adapter name its layers, ``"path[i]"``); ``"model"`` stores the model's own
        masks. ``None`` does too, but refuses a model whose adapters look pruned (some λ exactly 0, others not,
        under an all-ones mask): the pattern would be lost.
      include: an NNX filter of further variables to store, e.g. ``nnx.PathContains("classifier")``; anything
        trained besides the adapters (the ``wrt`` of training, e.g. a task head) belongs here, or the loaded
        model keeps its untrained values.

    Raises:
      ValueError: ``rank_pattern=None`` on a pruned-looking model; a pattern without an entry for an adapter;
        a pattern that masks triplets whose λ is not 0 (training stopped between masking steps, see
        :func:`jax_adalora.allocation_status`): the loaded model would differ from this one.

    Returns:
      The path written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"save_adapters: {path.parent} (the folder of {path}) does not exist; create it first")
    if path.is_dir():
        raise IsADirectoryError(f"save_adapters: {path} is a directory; give the path of a .safetensors file")
    rank_pattern = _pattern_of(rank_pattern)
    tensors: dict[str, np.ndarray] = {}
    scales = {}
    for module_path, module in adapter_modules(model).items():
        for name in FACTORS:
            tensors[f"{module_path}.{name}"] = np.asarray(getattr(module, name)[...])
        mask, lam = tensors[f"{module_path}.mask"], tensors[f"{module_path}.lam"]
        if rank_pattern is None and _looks_pruned(mask, lam):
            raise ValueError(
                f"save_adapters: {int(np.sum(lam == 0))} of the {lam.size} λ of adapter {module_path} are exactly 0 "
                "(pruned by the rank allocator?) but the model's mask keeps them, so the file would lose the rank "
                "pattern: pass rank_pattern=optimizer (or jal.rank_pattern(optimizer)), or rank_pattern='model' to "
                "store the model's masks as they are"
            )
        if isinstance(rank_pattern, Mapping):
            kept = stacked_entry(module_path, module.stack_shape, rank_pattern)
            if kept is None:
                raise ValueError(f"rank_pattern has no entry for adapter {module_path}")
            kept = np.asarray(kept, mask.dtype).reshape(mask.shape)
            regrown = int(np.sum((kept == 0) & (mask != 0) & (lam != 0)))
            if regrown:
                raise ValueError(
                    f"save_adapters: rank_pattern masks {regrown} triplets of adapter {module_path} whose λ is not 0 "
                    "(the allocator had not finished: see jal.allocation_status), so the loaded model would differ "
                    "from this one: save after the final phase, or pass rank_pattern='model' to keep these outputs"
                )
            tensors[f"{module_path}.mask"] = kept
        scales[module_path] = module.scaling
    for key, value in _included(model, include).items():
        tensors[key] = np.asarray(value)
    # One metadata key: safetensors writes several in a per-process random order, and files must be reproducible.
    metadata = {METADATA_KEY: json.dumps({"format": FORMAT, "scales": scales})}
    data = save(tensors, metadata=metadata)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(data)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def load_adapters(path: str | os.PathLike, model: nnx.Module, *, include: Any = None) -> None:
    """Loads a :func:`save_adapters` file into ``model`` (in place): factors, masks, included variables.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is not an adapter file, or it does not fit the model: adapters or variables
        missing or unknown, a shape (a rank) or a scale that differs. The message names each one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path}: no such file")
    try:
        tensors = load_file(path)
        with safe_open(path, "np") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"adapter file {path}: not a readable safetensors file ({err})") from err
    try:
        info = json.loads(metadata.get(METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        info = {}
    if info.get("format") != FORMAT:
        raise ValueError(f"adapter file {path}: format {info.get('format')!r}, expected {FORMAT!r}")
    scales = info.get("scales", {})
    modules = adapter_modules(model)
    expected = {f"{m}.{name}": getattr(module, name)[...] for m, module in modules.items() for name in FACTORS}
    expected.update(_included(model, include))
    problems = [f"missing {key}" for key in expected if key not in tensors]
    problems += [f"unknown {key}" for key in tensors if key not in expected]
    for key, value in expected.items():
        if key in tensors and tensors[key].shape != value.shape:
            problems.append(f"{key} has shape {tensors[key].shape} in the file, {value.shape} in the model")
    for module_path, module in modules.items():
        if module_path in scales and not np.isclose(scales[module_path], module.scaling):
            problems.append(f"{module_path} has scale {scales[module_path]} in the file, {module.scaling} in the model")
    if problems:
        raise ValueError(f"adapter file {path} does not fit the model: " + "; ".join(problems))
    for module_path, module in modules.items():
        for name in FACTORS:
            variable = getattr(module, name)
            variable.set_value(np.asarray(tensors[f"{module_path}.{name}"], variable[...].dtype))
    if include is not None:
        flat = [
            (key_path, variable.replace(np.asarray(tensors[_joined(key_path)], variable[...].dtype)))
            for key_path, variable in nnx.to_flat_state(nnx.state(model, _not_adapter(include)))
        ]
        nnx.update(model, nnx.from_flat_state(flat))


def _pattern_of(rank_pattern: Any) -> Mapping[str, Sequence[bool]] | str | None:
    if rank_pattern is None or isinstance(rank_pattern, Mapping):
        return rank_pattern
    if isinstance(rank_pattern, str):
        if rank_pattern != "model":
            raise ValueError(f"rank_pattern={rank_pattern!r}: expected 'model', a mapping or the optimizer")
        return rank_pattern
    from jax_adalora.allocator import rank_pattern as pattern_of_state  # an optimizer or an optax state

    return pattern_of_state(rank_pattern)


def _looks_pruned(mask: np.ndarray, lam: np.ndarray) -> bool:
    """Some λ exactly 0 and others not under an all-ones mask: what the allocator leaves (a fresh λ is all 0)."""
    return bool(np.all(mask == 1) and np.any(lam == 0) and np.any(lam != 0))


def _joined(key_path) -> str:
    return ".".join(str(part) for part in key_path)


def _not_adapter(include: Any) -> Any:
    return nnx.All(include, nnx.Not(nnx.Any(AdaLoRAParam, AdaLoRAMask)))


def _included(model: nnx.Module, include: Any) -> dict[str, Any]:
    if include is None:
        return {}
    return {_joined(p): v[...] for p, v in nnx.to_flat_state(nnx.state(model, _not_adapter(include)))}

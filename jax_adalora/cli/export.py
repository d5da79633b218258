"""Export a trained adapted model: merged Hugging Face directory, or a PEFT AdaLoRA adapter.

* :func:`save_merged` folds every adapter into its base kernel and writes ``config.json`` +
  ``model.safetensors`` that transformers' ``AutoModelFor*`` loads.
* :func:`save_peft_adapter` writes the adapter the way PEFT itself saves one (``adapter_config.json``
  with ``rank_pattern``, ``adapter_model.safetensors`` with A/E/B sliced to the kept ranks, and the
  trained head as ``modules_to_save``), by filling a PEFT model with our values and calling PEFT's own
  ``save_pretrained``; ``peft.PeftModel.from_pretrained`` then loads it on the transformers model.
* :func:`save_merged_causal_lm` and :func:`save_peft_causal_lm_adapter`: the same two for a Llama-family causal
  LM (``AutoModelForCausalLM``; PEFT's ``task_type="CAUSAL_LM"``).

The map from our module paths to transformers' module names comes from the model's own weight map
(``model.hf_weight_map()``), the one used for loading, so the two directions cannot drift apart.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
from flax import nnx

from jax_adalora.adapters import AdaLoRAParam, adapter_modules, merge_adapters, trainable_filter
from jax_adalora.models.hf_export import save_pretrained
from jax_adalora.models.model_dirs import resolve_model_dir

PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "qa": "QUESTION_ANS"}


def save_merged(model, directory: str | Path, *, tokenizer=None, label_names=()) -> Path:
    """The merged model (adapters folded into the base kernels) as a Hugging Face directory, atomically.

    ``label_names`` (class names in id order) become the config's ``id2label`` / ``label2id``.
    """
    id2label = dict(enumerate(label_names)) if label_names else None
    return save_pretrained(merge_adapters(model), directory, tokenizer=tokenizer, id2label=id2label)


def hf_module_names(model) -> dict[str, str]:
    """``{our module path: transformers module name}`` for every adapted linear layer."""
    kernel_paths = {}
    for hf_key, path, kind in model.hf_weight_map():
        if kind == "linear" and path[-1] == "kernel" and hf_key.endswith(".weight"):
            kernel_paths[".".join(str(p) for p in path[:-1])] = hf_key[: -len(".weight")]
    names = {}
    for path in adapter_modules(model):
        if path not in kernel_paths:
            raise ValueError(f"adapted layer {path} has no transformers counterpart in the model's weight map")
        names[path] = kernel_paths[path]
    return names


def _head_state_dict(model, head_params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Trained non-adapter parameters (the head) under transformers' keys."""
    out = {}
    for hf_key, path, kind in model.hf_weight_map():
        name = ".".join(str(p) for p in path)
        if name in head_params:
            value = np.asarray(head_params[name], np.float32)
            out[hf_key] = np.ascontiguousarray(value.T if kind == "linear" else value)
    return out


def peft_adalora_config(adalora, *, total_steps: int, target_modules, modules_to_save=None, task_type=None):
    """PEFT's ``AdaLoraConfig`` with the same ranks, schedule (in steps), β's and γ as our ``AdaLoRAConfig``."""
    from peft import AdaLoraConfig

    adalora = adalora.for_run(total_steps)
    return AdaLoraConfig(
        init_r=adalora.r_init,
        target_r=adalora.r_target,
        lora_alpha=adalora.alpha,
        lora_dropout=0.0,
        tinit=adalora.t_init,
        tfinal=adalora.t_final,
        deltaT=adalora.delta_t,
        beta1=adalora.beta1,
        beta2=adalora.beta2,
        orth_reg_weight=adalora.orth_reg_weight,
        total_step=total_steps,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
        task_type=task_type,
    )


def peft_rank_pattern_key(module_name: str) -> str:
    """The ``rank_pattern`` key of ``module_name`` that PEFT both resizes by and matches on load.

    PEFT resizes the module named by the key less its last dot-separated part, and on load it warns about every
    key that, as a regular expression, matches no adapted module's name. Its own keys (``<module>.lora_E``) fail
    that check; ``<module>.?`` passes both (``.?`` matches nothing), so the adapter loads without a warning."""
    return f"{module_name}.?"


@contextlib.contextmanager
def quiet_third_party():
    """Keeps the known noise of transformers and PEFT out of the command's output while we export: the load report
    and progress bar of the base model (its missing task head, replaced by ours), and deprecation warnings one
    library raises in the other. Other warnings pass."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights: 100%" of the base model, loaded to export it
    try:
        with warnings.catch_warnings():
            for message in _KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


_KNOWN_WARNINGS = (
    r"`is_gradient_checkpointing` is deprecated",
    r".*LoRA tensor\(s\) have invalid shape",
    r"The following rank_pattern keys did not match",
)


def save_peft_adapter(
    model,
    directory: str | Path,
    *,
    run,
    rank_pattern: dict[str, list[bool]],
    total_steps: int,
    head_params: dict[str, np.ndarray] | None = None,
    label_names=(),
) -> Path:
    """Writes a PEFT AdaLoRA adapter directory for ``model`` (trained adapters and head), atomically.

    Args:
      model: our adapted model (``AdaLoRALinear`` layers), with its trained values.
      directory: the output directory (replaced whole if it exists).
      run: the ``RunConfig`` (model location, AdaLoRA settings, schedule).
      rank_pattern: ``{our path: [kept?] * r}``; PEFT slices A rows, E and B columns by it.
      head_params: trained head parameters ``{our path: array}``; by default, every non-adapter
        parameter matching ``run.train.head_pattern`` is read from ``model``.
      label_names: class names in id order: the base model's ``id2label`` / ``label2id``, saved with the
        adapter as ``base_config.json`` (PEFT keeps only the base model's name).
    """
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    if model.head_kind not in PEFT_TASK_TYPES:
        raise ValueError(f"PEFT export needs a task head (classification or qa), got {model.head_kind!r}")
    if head_params is None:
        head = nnx.All(trainable_filter(run.train.head_pattern), nnx.Not(AdaLoRAParam))
        head_params = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(model, head))}
    base_dir = resolve_model_dir(run.train.model)
    auto = AutoModelForQuestionAnswering if model.head_kind == "qa" else AutoModelForSequenceClassification
    # The trained head replaces the checkpoint's: one sized for another label set is no error.
    kwargs = {} if model.head_kind == "qa" else {"num_labels": model.num_labels, "ignore_mismatched_sizes": True}
    if label_names and model.head_kind != "qa":
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
    with quiet_third_party():  # its load report lists the head it lacks, which ours replaces below
        base = auto.from_pretrained(str(base_dir), **kwargs)
    head_state = {k: torch.from_numpy(np.array(v)) for k, v in _head_state_dict(model, head_params).items()}
    missing = [k for k in head_state if k not in base.state_dict()]
    if missing:
        raise ValueError(f"head weights {missing} do not exist in {type(base).__name__}")
    base.load_state_dict(head_state, strict=False)
    head_modules = sorted({key.rsplit(".", 1)[0] for key in head_state})  # e.g. classifier, bert.pooler.dense

    # A matrix pruned to rank 0 adds nothing: it is left out of the adapter (PEFT warns about zero-sized tensors).
    every = hf_module_names(model)
    names = {path: name for path, name in every.items() if any(rank_pattern.get(path, [True]))} or every
    config = peft_adalora_config(
        run.adalora,
        total_steps=total_steps,
        target_modules=sorted(set(names.values())),
        modules_to_save=head_modules or None,
        task_type=PEFT_TASK_TYPES[model.head_kind],
    )
    config.base_model_name_or_path = str(base_dir)
    with quiet_third_party():
        peft_model = get_peft_model(base, config)
    _fill_peft_adapter(peft_model, model, names, rank_pattern)

    def write(staging: Path) -> None:
        with quiet_third_party():
            peft_model.save_pretrained(str(staging))
        base.config.to_json_file(str(staging / "base_config.json"))

    return _write_directory(directory, write)


def _fill_peft_adapter(peft_model, model, names: dict[str, str], rank_pattern: dict[str, list[bool]]) -> None:
    """Copies our trained P, λ, Q into PEFT's A, E, B of the modules ``names`` maps our paths to, and sets the rank
    pattern PEFT resizes them by when it loads the adapter."""
    import torch

    inner = peft_model.base_model.model
    with torch.no_grad():
        for path, adapter in adapter_modules(model).items():
            if path not in names:
                continue
            layer = inner.get_submodule(names[path])
            layer.lora_A["default"].copy_(torch.from_numpy(np.array(adapter.Q[...], np.float32)))
            layer.lora_E["default"].copy_(torch.from_numpy(np.array(adapter.lam[...], np.float32))[:, None])
            layer.lora_B["default"].copy_(torch.from_numpy(np.array(adapter.P[...], np.float32)))
    peft_model.peft_config["default"].rank_pattern = {
        peft_rank_pattern_key(names[path]): [bool(k) for k in kept]
        for path, kept in rank_pattern.items()
        if path in names
    }


def _write_directory(directory: str | Path, write) -> Path:
    """``write(staging)`` fills a fresh folder beside ``directory``, which then replaces ``directory`` whole; on
    any failure the folder is removed and ``directory`` is left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write(staging)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


# ---- causal LMs --------------------------------------------------------------------------------------------


def save_merged_causal_lm(model, directory: str | Path, *, tokenizer=None) -> Path:
    """A Llama-family model with its adapters folded in, as a transformers directory (``config.json``,
    ``model.safetensors``, the tokenizer's files if given), atomically; ``AutoModelForCausalLM`` loads it."""
    import json

    from safetensors.numpy import save_file

    from jax_adalora.models.llama import to_hf_state_dict

    merged = merge_adapters(model)

    def write(staging: Path) -> None:
        save_file(to_hf_state_dict(merged), str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(merged.config.to_hf_config(), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))

    return _write_directory(directory, write)


def save_peft_causal_lm_adapter(model, directory: str | Path, *, run, rank_pattern, total_steps: int) -> Path:
    """A PEFT AdaLoRA adapter (``task_type="CAUSAL_LM"``) of a Llama-family model whose base is a transformers
    directory, written by PEFT's own ``save_pretrained`` as :func:`save_peft_adapter` does; adapted layers keep
    transformers' module names (``model.layers.0.self_attn.q_proj``)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from jax_adalora.models.llama.weights import resolve_checkpoint

    base_dir = resolve_checkpoint(run.train.model)
    if base_dir.is_file():
        raise ValueError(f"PEFT export needs a transformers directory as the base model, not {base_dir.name}")
    with quiet_third_party():
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    adapters = adapter_modules(model)
    config = peft_adalora_config(
        run.adalora, total_steps=total_steps, target_modules=sorted(adapters), task_type="CAUSAL_LM"
    )
    config.base_model_name_or_path = str(base_dir)
    peft_model = get_peft_model(base, config)
    _fill_peft_adapter(peft_model, model, {path: path for path in adapters}, rank_pattern)

    def write(staging: Path) -> None:
        with quiet_third_party():  # matrices pruned to rank 0 are zero-sized tensors, which PEFT warns about
            peft_model.save_pretrained(str(staging))

    return _write_directory(directory, write)

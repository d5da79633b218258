"""Exports load in PyTorch and give our logits: the merged HF directory and the PEFT adapter."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from peft import PeftModel
from tiny_assets import make_tiny_bert
from transformers import AutoModelForSequenceClassification

from jax_adalora.adapters import adapter_modules, get_triplets, inject_adapters, set_masks, set_triplets
from jax_adalora.cli.export import hf_module_names, save_merged, save_peft_adapter
from jax_adalora.cli.run_config import build_run_config
from jax_adalora.models import from_pretrained


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny adapted BERT with random λ, a rank pattern applied as masks, and a changed head."""
    model_dir = make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", num_labels=3)
    run = build_run_config({"model": str(model_dir), "r_init": 4, "r_target": 2})
    model = from_pretrained(model_dir, head="classification", num_labels=3)
    inject_adapters(model, run.adalora, rngs=nnx.Rngs(1))
    triplets = get_triplets(model)
    key = jax.random.key(0)
    pattern = {}
    for i, (path, t) in enumerate(triplets.items()):
        key, sub = jax.random.split(key)
        keep = np.array([True, i % 2 == 0, True, False]) if i != 5 else np.zeros(4, bool)  # one rank-0 layer
        t["lam"] = jax.random.normal(sub, t["lam"].shape) * jnp.asarray(keep, jnp.float32)
        pattern[path] = keep.tolist()
    set_triplets(model, triplets)
    set_masks(model, {p: np.asarray(k, np.float32) for p, k in pattern.items()})
    model.classifier.kernel.set_value(model.classifier.kernel[...] + 0.5)
    rng = np.random.default_rng(0)
    inputs = {
        "input_ids": rng.integers(1000, 30000, (3, 9)).astype(np.int32),
        "attention_mask": np.array([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5], np.int32),
        "token_type_ids": np.zeros((3, 9), np.int32),
    }
    ours = np.asarray(model(*(jnp.asarray(inputs[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))))
    return model, run, pattern, inputs, ours, model_dir


def _torch_inputs(inputs):
    return {k: torch.from_numpy(v).long() for k, v in inputs.items()}


def test_module_names_map_to_transformers(trained):
    model = trained[0]
    names = hf_module_names(model)
    assert names["encoder.layers.0.attention.query"] == "bert.encoder.layer.0.attention.self.query"
    assert names["encoder.layers.1.output"] == "bert.encoder.layer.1.output.dense"
    assert len(names) == len(adapter_modules(model)) == 12


def test_merged_directory_gives_our_logits_in_pytorch(trained, tmp_path):
    model, _, _, inputs, ours, _ = trained
    save_merged(model, tmp_path / "merged")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not [str(w.message) for w in caught if "MISSING" in str(w.message)]
    with torch.no_grad():
        logits = torch_model(**_torch_inputs(inputs)).logits.numpy()
    np.testing.assert_allclose(logits, ours, atol=1e-4)


def test_peft_adapter_loads_and_gives_our_logits(trained, tmp_path):
    model, run, pattern, inputs, ours, model_dir = trained
    with warnings.catch_warnings(record=True) as caught:  # the export keeps the known third-party noise out
        warnings.simplefilter("always")
        save_peft_adapter(model, tmp_path / "adapter", run=run, rank_pattern=pattern, total_steps=100)
    assert not caught, [str(w.message) for w in caught]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    noise = ("rank_pattern keys did not match", "have invalid shape")
    assert not [str(w.message) for w in caught if any(n in str(w.message) for n in noise)]
    ranks = {n: int(m.lora_A["default"].shape[0]) for n, m in peft_model.named_modules() if hasattr(m, "lora_E")}
    # the rank-0 matrix is left out of the adapter (it adds nothing)
    assert sorted(ranks.values()) == sorted(sum(k) for k in pattern.values() if sum(k))
    with torch.no_grad():
        logits = peft_model(**_torch_inputs(inputs)).logits.numpy()
    np.testing.assert_allclose(logits, ours, atol=1e-4)

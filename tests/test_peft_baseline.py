"""scripts/studies/peft_baseline.py's two ways of setting PEFT up, on a tiny random BERT (no training)."""

import numpy as np
import pytest
import torch

from jax_adalora.cli.run_config import build_run_config
from scripts.studies import peft_baseline


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tiny_assets import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", num_labels=2)


def _peft_loss(tiny_bert, style: str, adalora):
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    model = peft_baseline.build_peft_model(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
        adalora,
        style=style,
        total_steps=100,
    ).eval()
    rng = np.random.default_rng(0)
    inputs = {"input_ids": torch.from_numpy(rng.integers(1000, 30000, (3, 7))), "labels": torch.tensor([0, 1, 1])}
    with torch.no_grad():
        return model, float(model(**inputs).loss), float(plain(**inputs).loss)


def test_common_style_skips_the_regulariser_and_trains_only_the_classifier(tiny_bert):
    adalora = build_run_config({"r_init": 4, "r_target": 2, "orth_reg_weight": 0.3}).adalora
    model, loss, plain_loss = _peft_loss(tiny_bert, "common", adalora)
    assert loss == pytest.approx(plain_loss, abs=1e-6)  # λ starts at 0: the adapters add nothing yet
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable and all(".classifier." in n for n in trainable)
    config = model.peft_config["default"]
    assert config.lora_alpha == 32.0 and config.task_type is None
    assert peft_baseline.peft_style_settings("common", adalora)["orth_reg_applied"] is False


def test_our_style_adds_the_regulariser_and_trains_pooler_and_classifier(tiny_bert):
    adalora = build_run_config({"r_init": 4, "r_target": 2, "orth_reg_weight": 0.3}).adalora
    model, loss, plain_loss = _peft_loss(tiny_bert, "ours", adalora)
    assert loss > plain_loss + 1e-3  # + γ · ||P^T P - I||² + ||Q Q^T - I||² of the random P, Q
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert any(".pooler." in n for n in trainable) and any(".classifier." in n for n in trainable)
    assert model.peft_config["default"].lora_alpha == adalora.alpha == 16.0
    assert peft_baseline.peft_style_settings("ours", adalora) == {
        "lora_alpha": 16.0,
        "task_type": "SEQ_CLS",
        "trained_head": "pooler-classifier",
        "modules_to_save": ["classifier", "pooler"],
        "orth_reg_applied": True,
    }

"""Task heads: parity with transformers' task models both ways (load and export), per-example dropout, targets."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForQuestionAnswering,
    DebertaV2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from jax_adalora.adapters import adapter_modules, inject_adapters, linear_paths, merge_adapters, resolve_targets
from jax_adalora.config import AdaLoRAConfig
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.dropout import example_keys
from jax_adalora.models.heads import QuestionAnswerer, SequenceClassifier, build_model
from jax_adalora.models.hf_export import save_pretrained, to_hf_state_dict
from jax_adalora.models.pretrained import from_pretrained
from jax_adalora.models.targets import TARGET_PRESETS

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    initializer_range=0.2,
)
DEBERTA_V3_TINY = dict(
    relative_attention=True,
    position_buckets=8,
    pos_att_type=["p2c", "c2p"],
    share_att_key=True,
    norm_rel_ebd="layer_norm",
    position_biased_input=False,
    type_vocab_size=0,
    layer_norm_eps=1e-7,
)
FAMILIES = {
    "bert": (BertConfig, dict(type_vocab_size=2)),
    "roberta": (RobertaConfig, dict(type_vocab_size=1, pad_token_id=1, max_position_embeddings=66)),
    "deberta": (DebertaV2Config, DEBERTA_V3_TINY),
}


def tiny_hf_config(family: str, **overrides):
    config_cls, family_overrides = FAMILIES[family]
    return config_cls(**{**TINY, **family_overrides, **overrides})


def inputs(pad_token_id: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 99, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ids = np.where(mask == 1, ids, pad_token_id)
    types = np.zeros_like(ids)
    types[:, 5:] = 1
    return ids, mask, types


def run_hf(model, ids, mask, types):
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if model.config.type_vocab_size > 1:
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        out = model(**kwargs)
    if hasattr(out, "start_logits"):
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])
    return out.logits.numpy()


def run_ours(model, ids, mask, types, dropout_keys=None):
    types = types if model.config.type_vocab_size > 1 else None
    out = model(
        jnp.asarray(ids, jnp.int32),
        jnp.asarray(mask, jnp.int32),
        None if types is None else jnp.asarray(types, jnp.int32),
        dropout_keys=dropout_keys,
    )
    return np.stack([np.asarray(o) for o in out]) if isinstance(out, tuple) else np.asarray(out)


# name: (family, transformers class, our head, num_labels)
HEAD_CASES = {
    "bert_classification": ("bert", BertForSequenceClassification, "classification", 3),
    "bert_regression": ("bert", BertForSequenceClassification, "classification", 1),
    "bert_qa": ("bert", BertForQuestionAnswering, "qa", 2),
    "roberta_classification": ("roberta", RobertaForSequenceClassification, "classification", 2),
    "deberta_classification": ("deberta", DebertaV2ForSequenceClassification, "classification", 2),
    "deberta_qa": ("deberta", DebertaV2ForQuestionAnswering, "qa", 2),
}


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_from_pretrained_matches_transformers_task_model(case, tmp_path):
    family, hf_cls, head, num_labels = HEAD_CASES[case]
    torch.manual_seed(0)
    hf = hf_cls(tiny_hf_config(family, num_labels=num_labels)).eval()
    hf.save_pretrained(tmp_path)
    ours, info = from_pretrained(tmp_path, head=head, num_labels=num_labels, return_info=True)
    assert info.missing == info.initialised_head == info.unexpected == ()
    assert ours.hf_architecture == hf_cls.__name__
    batch = inputs(hf.config.pad_token_id)
    expected = run_hf(hf, *batch)
    got = run_ours(ours, *batch)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def randomise(model: nnx.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Every parameter away from its init, so that export errors cannot hide behind zeros and ones."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, new))


EXPORT_CASES = {
    "bert_classification": ("bert", AutoModelForSequenceClassification, "classification", 3),
    "bert_qa": ("bert", AutoModelForQuestionAnswering, "qa", 2),
    "roberta_classification": ("roberta", AutoModelForSequenceClassification, "classification", 2),
    "deberta_regression": ("deberta", AutoModelForSequenceClassification, "classification", 1),
    "deberta_qa": ("deberta", AutoModelForQuestionAnswering, "qa", 2),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_save_pretrained_loads_in_transformers_with_the_same_outputs(case, tmp_path):
    family, auto_cls, head, num_labels = EXPORT_CASES[case]
    hf_dict = tiny_hf_config(family).to_dict()
    ours = build_model(EncoderConfig.from_hf_dict(hf_dict), head=head, num_labels=num_labels, rngs=nnx.Rngs(0))
    randomise(ours)
    save_pretrained(ours, tmp_path / "exported")
    hf = auto_cls.from_pretrained(tmp_path / "exported").eval()
    assert type(hf).__name__ == ours.hf_architecture
    batch = inputs(hf.config.pad_token_id)
    np.testing.assert_allclose(run_ours(ours, *batch), run_hf(hf, *batch), atol=1e-4, rtol=0)
    reloaded, info = from_pretrained(tmp_path / "exported", head=head, num_labels=num_labels, return_info=True)
    assert info.missing == info.initialised_head == info.unexpected == ()
    np.testing.assert_array_equal(run_ours(reloaded, *batch), run_ours(ours, *batch))


def test_export_writes_labels_and_replaces_a_model_directory(tmp_path):
    config = EncoderConfig.from_hf_dict(tiny_hf_config("bert").to_dict())
    model = SequenceClassifier(config, num_labels=2, rngs=nnx.Rngs(0))
    target = tmp_path / "out"
    save_pretrained(model, target)
    save_pretrained(model, target, id2label={0: "negative", 1: "positive"})
    hf = AutoModelForSequenceClassification.from_pretrained(target)
    assert hf.config.id2label == {0: "negative", 1: "positive"} and hf.config.num_labels == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or retired directories left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model directory"):
        save_pretrained(model, tmp_path / "notes")


def dropout_config(family: str, **overrides) -> EncoderConfig:
    if family == "deberta":
        # The encoder's own dropout is tested in test_models_deberta.py; here the pooler's and cls_dropout.
        rates = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooler_dropout=0.25, cls_dropout=0.3)
    else:
        rates = dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2)
    return EncoderConfig.from_hf_dict(tiny_hf_config(family, **rates, **overrides).to_dict())


@pytest.mark.parametrize("family", ["bert", "deberta"])
def test_batch_forward_equals_per_example_forwards_with_dropout(family):
    model = SequenceClassifier(dropout_config(family, num_hidden_layers=1), num_labels=2, rngs=nnx.Rngs(0))
    ids, mask, types = (jnp.asarray(a, jnp.int32) for a in inputs())

    @nnx.jit
    def forwards(model, keys):
        batch = model(ids, mask, types, dropout_keys=keys)
        # Each example alone, as a batch of one with its own key.
        one = lambda i, t, m, k: model(i[None], t[None], m[None], dropout_keys=k[None])[0]
        return batch, jax.vmap(one)(ids, mask, types, keys), model(ids, mask, types)

    keys = example_keys(jax.random.key(7), jnp.arange(3))
    batch, one_by_one, deterministic = forwards(model, keys)
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5, rtol=0)
    assert not np.allclose(batch, deterministic, atol=1e-4)  # dropout is on
    other, _, _ = forwards(model, example_keys(jax.random.key(8), jnp.arange(3)))
    assert not np.allclose(batch, other, atol=1e-4)  # and follows the keys


def test_qa_head_shapes_and_hashable_graphdef():
    model = QuestionAnswerer(dropout_config("bert"), rngs=nnx.Rngs(0))
    start, end = model(*(jnp.asarray(a, jnp.int32) for a in inputs()))
    assert start.shape == end.shape == (3, 10) and start.dtype == jnp.float32
    hash(nnx.graphdef(model))  # static parts (the config included) must be hashable for jit caches


@pytest.mark.parametrize("family", ["bert", "deberta"])
def test_target_presets_pick_the_six_matrices_per_layer(family):
    config = EncoderConfig.from_hf_dict(tiny_hf_config(family).to_dict())
    model = SequenceClassifier(config, num_labels=2, rngs=nnx.Rngs(0))
    paths = linear_paths(model)
    per_layer = {"paper": 6, "attention": 4, "qv": 2}
    for name, count in per_layer.items():
        chosen = [p for p in paths if re.fullmatch(resolve_targets(model, name), p)]
        assert len(chosen) == count * config.num_hidden_layers, (name, chosen)
        assert all(p.startswith("encoder.layers.") for p in chosen)
    assert "encoder.layers.1.attention.query" in [p for p in paths if re.fullmatch(TARGET_PRESETS["qv"], p)]


def test_resolve_targets_passes_a_regex_through_and_rejects_bad_ones():
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))  # a model without presets
    assert resolve_targets(model, r"encoder\.layers\.0\..*") == r"encoder\.layers\.0\..*"
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_targets(model, "layers.(")
    with pytest.raises(ValueError, match="or a preset"):
        resolve_targets(model, "")


def test_export_needs_merged_adapters(tmp_path):
    config = EncoderConfig.from_hf_dict(tiny_hf_config("bert").to_dict())
    model = SequenceClassifier(config, num_labels=2, rngs=nnx.Rngs(0))
    spec = inject_adapters(model, AdaLoRAConfig(r_init=4, r_target=2, targets="paper"), rngs=nnx.Rngs(1))
    assert len(spec) == 12 and "encoder.layers.0.output" in spec
    for adapter in adapter_modules(model).values():
        adapter.lam.set_value(jnp.ones_like(adapter.lam[...]))  # a nonzero update to fold in
    with pytest.raises(ValueError, match="merge"):
        to_hf_state_dict(model)
    merged = merge_adapters(model)
    save_pretrained(merged, tmp_path / "merged")
    batch = inputs()
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    np.testing.assert_allclose(run_hf(hf, *batch), run_ours(model, *batch), atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["bert_classification", "deberta_qa"])
def test_the_final_projection_of_a_bfloat16_model_asks_for_float32_precision(case):
    """bf16 activations meet the float32 head at Precision.HIGHEST (JAX's default is one bf16 pass on TPU, TF32 on
    GPU); on CPU the precision changes nothing, so the logits equal those at the default precision bitwise."""
    family, _, head, num_labels = HEAD_CASES[case]
    config = EncoderConfig.from_hf_dict(tiny_hf_config(family).to_dict())
    model = build_model(config, head=head, num_labels=num_labels, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    final = model.qa_outputs if head == "qa" else model.classifier
    assert final.precision == jax.lax.Precision.HIGHEST
    batch = tuple(jnp.asarray(a, jnp.int32) for a in inputs())
    forward = nnx.jit(lambda model, *batch: model(*batch))
    dots = [line for line in forward.lower(model, *batch).as_text().splitlines() if "dot_general" in line]
    highest = [line for line in dots if "HIGHEST" in line]
    assert len(highest) == 1 and "bf16" not in highest[0]  # the head alone, on float32 operands
    logits = jax.tree.map(np.asarray, forward(model, *batch))
    assert all(a.dtype == np.float32 for a in jax.tree.leaves(logits))
    final.precision = None
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, forward(model, *batch)), logits)

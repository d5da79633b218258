"""Loading checkpoints: key prefixes, missing and unexpected keys, bad inputs, offline hub ids, the real MiniLM."""

import json
import logging
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModel, BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel

from jax_adalora.models.heads import EncoderModel, QuestionAnswerer, SequenceClassifier
from jax_adalora.models.model_dirs import ModelNotFoundError, packaged_minilm_path
from jax_adalora.models.pretrained import from_pretrained, load_tokenizer

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def bare_bert_dir(tmp_path_factory):
    """A ``BertModel`` checkpoint: keys without the ``bert.`` prefix, as sentence-transformers ships them."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bare_bert")
    BertModel(BertConfig(**TINY)).save_pretrained(directory)
    return directory


def copy_checkpoint(source, target, *, config=None, state=None):
    target.mkdir()
    config_dict = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config if config is not None else config_dict))
    if state is not None:
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_bare_encoder_checkpoint_loads_into_a_classifier_with_a_fresh_head(bare_bert_dir, caplog):
    with caplog.at_level(logging.INFO, logger="jax_adalora.models.pretrained"):
        model, info = from_pretrained(bare_bert_dir, head="classification", num_labels=3, return_info=True)
    assert isinstance(model, SequenceClassifier)
    assert info.missing == () and info.unexpected == ()
    assert info.initialised_head == ("classifier.weight", "classifier.bias")  # the pooler came from the checkpoint
    assert "freshly initialised (the run trains it): classifier.weight, classifier.bias" in caplog.text


def test_task_checkpoint_loads_into_a_bare_encoder_and_reports_unused_keys(tmp_path, caplog):
    torch.manual_seed(0)
    BertForQuestionAnswering(BertConfig(**TINY)).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="jax_adalora.models.pretrained"):
        model, info = from_pretrained(tmp_path, head=None, return_info=True)
    assert isinstance(model, EncoderModel)
    assert info.unexpected == ("qa_outputs.bias", "qa_outputs.weight")
    assert info.initialised_head == ("pooler.dense.weight", "pooler.dense.bias")  # QA models have no pooler
    assert "qa_outputs.bias, qa_outputs.weight" in caplog.text


def test_pytorch_bin_weights_and_missing_encoder_keys(bare_bert_dir, tmp_path, caplog):
    target = copy_checkpoint(bare_bert_dir, tmp_path / "bin")
    state = {k: torch.from_numpy(v) for k, v in load_file(str(bare_bert_dir / "model.safetensors")).items()}
    del state["encoder.layer.1.output.dense.bias"]
    torch.save(state, target / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="jax_adalora.models.pretrained"):
        model, info = from_pretrained(target, head="qa", return_info=True)
    assert isinstance(model, QuestionAnswerer) and info.weights_file.name == "pytorch_model.bin"
    assert info.missing == ("bert.encoder.layer.1.output.dense.bias",)  # named as the model's own key
    assert "encoder.layer.1.output.dense.bias" in caplog.text


def test_bfloat16_and_sharded_safetensors(bare_bert_dir, tmp_path):
    from safetensors.torch import save_file as save_torch

    reference = from_pretrained(bare_bert_dir, head=None)
    state = load_file(str(bare_bert_dir / "model.safetensors"))
    half = copy_checkpoint(bare_bert_dir, tmp_path / "bf16")
    save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}, str(half / "model.safetensors"))
    sharded = copy_checkpoint(bare_bert_dir, tmp_path / "sharded")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(sharded / name), metadata={"format": "pt"})
    weight_map = {k: name for name, names in shards.items() for k in names}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids = jnp.asarray([[2, 5, 7, 9]], jnp.int32)
    expected = np.asarray(reference(ids, jnp.ones_like(ids)))
    for directory, atol in ((half, 0.1), (sharded, 0.0)):
        model, info = from_pretrained(directory, head=None, return_info=True)
        assert info.missing == info.unexpected == ()
        np.testing.assert_allclose(np.asarray(model(ids, jnp.ones_like(ids))), expected, atol=atol, rtol=0)


def test_relative_position_embeddings_are_refused(bare_bert_dir, tmp_path):
    config = json.loads((bare_bert_dir / "config.json").read_text()) | {"position_embedding_type": "relative_key"}
    state = load_file(str(bare_bert_dir / "model.safetensors"))
    copy_checkpoint(bare_bert_dir, tmp_path / "relative", config=config, state=state)
    with pytest.raises(NotImplementedError, match="relative_key"):
        from_pretrained(tmp_path / "relative")


def test_missing_config_names_the_file(bare_bert_dir, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((bare_bert_dir / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        from_pretrained(tmp_path)


def test_missing_weights_name_the_directory_and_the_files(bare_bert_dir, tmp_path):
    copy_checkpoint(bare_bert_dir, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"empty: no weights file found .*model\.safetensors"):
        from_pretrained(tmp_path / "empty")


def test_shape_mismatch_names_the_key_and_both_shapes(bare_bert_dir, tmp_path):
    state = load_file(str(bare_bert_dir / "model.safetensors"))
    state["encoder.layer.0.attention.self.query.weight"] = np.zeros((32, 16), np.float32)
    copy_checkpoint(bare_bert_dir, tmp_path / "bad", state=state)
    with pytest.raises(ValueError, match=r"query\.weight has shape \(32, 16\) .* expects \(32, 32\)"):
        from_pretrained(tmp_path / "bad")


def test_a_head_for_another_number_of_labels_is_initialised_fresh(tmp_path):
    """A checkpoint fine-tuned on a 3-class task, trained here on 2 classes: the encoder loads, the classifier
    gets the requested shape, freshly initialised and reported (transformers' ``ignore_mismatched_sizes``)."""
    torch_model = BertForSequenceClassification(BertConfig(**TINY, num_labels=3))
    torch_model.save_pretrained(tmp_path)
    model, info = from_pretrained(tmp_path, head="classification", num_labels=2, return_info=True)
    assert model.classifier.kernel.shape == (32, 2)
    assert [name.split(" ")[0] for name in info.initialised_head] == ["classifier.weight", "classifier.bias"]
    assert all("another number of labels" in name for name in info.initialised_head)
    expected = torch_model.bert.encoder.layer[0].attention.self.query.weight.detach().numpy().T
    np.testing.assert_array_equal(np.asarray(model.encoder.layers[0].attention.query.kernel[...]), expected)


def test_unknown_model_type_names_the_config(bare_bert_dir, tmp_path):
    config = json.loads((bare_bert_dir / "config.json").read_text()) | {"model_type": "gpt2"}
    copy_checkpoint(bare_bert_dir, tmp_path / "gpt", config=config)
    with pytest.raises(ValueError, match=r"gpt/config\.json: .*model_type='gpt2'"):
        from_pretrained(tmp_path / "gpt")


def test_checkpoint_of_another_model_matches_nothing(bare_bert_dir, tmp_path):
    copy_checkpoint(bare_bert_dir, tmp_path / "other", state={"transformer.h.0.attn.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"no weight matches a BertForSequenceClassification.*transformer\.h\.0"):
        from_pretrained(tmp_path / "other")


def test_bad_head_and_missing_path():
    with pytest.raises(ValueError, match="head='ner'"):
        from_pretrained("minilm-l6", head="ner")
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        from_pretrained("./no/such/model")


def test_hub_id_offline_fails_fast_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="local directory holding config.json and model.safetensors"):
        from_pretrained("jax-adalora-tests/no-such-model")
    assert time.perf_counter() - started < 5.0


@pytest.mark.slow
def test_hub_id_without_network_fails_fast_with_a_hint(monkeypatch):
    """With HF_HUB_OFFLINE unset: the reachability probe (or the hub's 404 when online) fails within seconds."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="local directory") as err:
        from_pretrained("jax-adalora-tests/no-such-model-7f3c")
    assert time.perf_counter() - started < 5.0
    assert "minilm-l6" in str(err.value)


SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Transformers encode sentences; adapters fine-tune them cheaply!",
    "Hi.",
]


@pytest.mark.slow
def test_packaged_minilm_matches_transformers_offline():
    tokenizer = load_tokenizer("minilm-l6")
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="np")
    model, info = from_pretrained("minilm-l6", head=None, return_info=True)
    assert info.missing == info.unexpected == info.initialised_head == ()
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    ours = model(*(jnp.asarray(encoded[k], jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")))
    reference = AutoModel.from_pretrained(str(packaged_minilm_path())).eval()
    with torch.no_grad():
        expected = reference(**{k: torch.tensor(v) for k, v in encoded.items()}).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_hidden_layers": 10**6}, r"num_hidden_layers=1000000 but .*model\.safetensors holds 2 layers"),
        ({"intermediate_size": 4096}, r"intermediate_size=4096 does not fit .*intermediate\.dense\.weight"),
        ({"hidden_size": 64}, r"hidden_size=64 does not fit .*word_embeddings\.weight has shape \(99, 32\)"),
    ],
)
def test_a_config_that_does_not_fit_the_weights_fails_before_allocating(bare_bert_dir, tmp_path, override, message):
    config = json.loads((bare_bert_dir / "config.json").read_text()) | override
    copy_checkpoint(
        bare_bert_dir, tmp_path / "absurd", config=config, state=load_file(bare_bert_dir / "model.safetensors")
    )
    with pytest.raises(ValueError, match=r"absurd/config\.json: " + message):
        from_pretrained(tmp_path / "absurd")


def test_a_config_that_is_not_a_hugging_face_config_is_refused(bare_bert_dir, tmp_path):
    copy_checkpoint(bare_bert_dir, tmp_path / "notes", config={"hidden": 32, "comment": "my settings"})
    with pytest.raises(ValueError, match=r"notes/config\.json: not a Hugging Face encoder config"):
        from_pretrained(tmp_path / "notes")


def test_a_truncated_safetensors_file_is_named(bare_bert_dir, tmp_path):
    copy_checkpoint(bare_bert_dir, tmp_path / "cut", state=load_file(bare_bert_dir / "model.safetensors"))
    weights = tmp_path / "cut" / "model.safetensors"
    for size in (weights.stat().st_size - 100, 100, 4):
        weights.write_bytes(weights.read_bytes()[:size])
        with pytest.raises(ValueError, match=r"cut/model\.safetensors: truncated"):
            from_pretrained(tmp_path / "cut")

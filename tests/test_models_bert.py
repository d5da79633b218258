"""BERT / RoBERTa encoder: parity with transformers' PyTorch ``BertModel`` / ``RobertaModel`` on tiny configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from jax_adalora.models.bert.modeling import BertEncoder, roberta_position_ids
from jax_adalora.models.bert.weights import bert_weight_map
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.dropout import dropout_keys
from jax_adalora.models.heads import EncoderModel
from jax_adalora.models.hf_export import to_hf_state_dict
from jax_adalora.models.pretrained import load_state_dict

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    initializer_range=0.2,  # larger than the default so that attention is far from uniform
)

# name: (config class, model class, overrides, pass token type ids)
CASES = {
    "bert_token_types": (BertConfig, BertModel, dict(type_vocab_size=3), True),
    "bert_no_token_types": (BertConfig, BertModel, dict(), False),
    "bert_gelu_new_one_layer": (BertConfig, BertModel, dict(hidden_act="gelu_new", num_hidden_layers=1), True),
    "roberta": (
        RobertaConfig,
        RobertaModel,
        dict(type_vocab_size=1, pad_token_id=1, max_position_embeddings=66, layer_norm_eps=1e-5),
        False,
    ),
}


def make_inputs(pad_token_id: int, type_vocab_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 99, (3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids = np.where(mask == 1, ids, pad_token_id)
    types = rng.integers(0, type_vocab_size, ids.shape)
    return ids, mask, types


def hf_and_ours(config_cls, model_cls, overrides, seed=0):
    torch.manual_seed(seed)
    hf_config = config_cls(**{**TINY, **overrides})
    hf = model_cls(hf_config).eval()
    ours = EncoderModel(EncoderConfig.from_hf_dict(hf_config.to_dict()), rngs=nnx.Rngs(0))
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    info = load_state_dict(ours, state)
    assert info.missing == info.initialised_head == info.unexpected == ()
    return hf, ours


@pytest.mark.parametrize("case", sorted(CASES))
def test_last_hidden_state_and_pooler_match_transformers(case):
    config_cls, model_cls, overrides, with_types = CASES[case]
    hf, ours = hf_and_ours(config_cls, model_cls, overrides)
    ids, mask, types = make_inputs(hf.config.pad_token_id, hf.config.type_vocab_size)
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if with_types:
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        expected = hf(**kwargs)
    hidden = ours(
        jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(types, jnp.int32) if with_types else None
    )
    assert hidden.shape == (3, 11, 32)
    np.testing.assert_allclose(np.asarray(hidden), expected.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(ours.pooler(hidden)), expected.pooler_output.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["bert_token_types", "roberta"])
def test_key_map_covers_exactly_the_transformers_state_dict(case):
    config_cls, model_cls, overrides, _ = CASES[case]
    hf, ours = hf_and_ours(config_cls, model_cls, overrides)
    exported = to_hf_state_dict(ours)
    reference = hf.state_dict()
    assert set(exported) == set(reference)
    for key, value in exported.items():
        np.testing.assert_array_equal(value, reference[key].numpy(), err_msg=key)


def test_weight_map_paths_exist_and_are_unique():
    config = tiny_config()
    encoder = BertEncoder(config, rngs=nnx.Rngs(0))
    entries = bert_weight_map(config)
    assert len({path for _, path, _ in entries}) == len(entries) == len(nnx.to_flat_state(nnx.state(encoder)))
    assert {kind for _, _, kind in entries} == {"linear", "copy"}


def test_roberta_positions_count_non_pad_tokens_from_pad_plus_one():
    ids = jnp.asarray([[0, 5, 6, 1, 1], [0, 1, 7, 1, 8]])
    np.testing.assert_array_equal(roberta_position_ids(ids, 1), [[2, 3, 4, 1, 1], [2, 1, 3, 1, 4]])


def tiny_config(**overrides) -> EncoderConfig:
    return EncoderConfig(**{k: v for k, v in TINY.items() if k != "initializer_range"}, **overrides)


def test_adapted_matrices_sit_at_the_shared_paths():
    layer = BertEncoder(tiny_config(), rngs=nnx.Rngs(0)).layers[0]
    for module in (layer.attention.query, layer.attention.key, layer.attention.value, layer.attention.output):
        assert isinstance(module, nnx.Linear) and module.kernel.shape == (32, 32)
    assert layer.intermediate.kernel.shape == (32, 37) and layer.output.kernel.shape == (37, 32)


def test_too_long_input_is_an_error():
    encoder = BertEncoder(tiny_config().replace(max_position_embeddings=8), rngs=nnx.Rngs(0))
    ids = jnp.ones((1, 9), jnp.int32)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        encoder(ids, jnp.ones_like(ids))


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    config = tiny_config()
    fp32 = BertEncoder(config, rngs=nnx.Rngs(0))
    bf16 = BertEncoder(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert all(v.dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(bf16, nnx.Param)))
    ids, mask, types = make_inputs(0, 2)
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(types, jnp.int32))
    low, high = bf16(*args), fp32(*args)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), np.asarray(high), atol=0.1)


def test_unknown_activation_fails_at_construction():
    with pytest.raises(ValueError, match="hidden_act='mish'"):
        BertEncoder(tiny_config(hidden_act="mish"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_token_only_is_the_first_row_of_the_full_output_with_dropout_on(case):
    """``first_token_only`` (what the sequence classifier asks for) computes the last layer at the first position
    alone; values, dropout masks and gradients are those of the full output's first row."""
    config_cls, _, overrides, with_types = CASES[case]
    rates = dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    config = EncoderConfig.from_hf_dict(config_cls(**{**TINY, **overrides, **rates}).to_dict())
    graphdef, params = nnx.split(BertEncoder(config, rngs=nnx.Rngs(0)))
    ids, mask, types = make_inputs(config.pad_token_id, max(config.type_vocab_size, 1))
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    types = jnp.asarray(types) if with_types else None
    keys = dropout_keys(jax.random.key(4), jnp.arange(ids.shape[0]))
    weights = jax.random.normal(jax.random.key(1), (ids.shape[0], config.hidden_size))

    def first_row(params, first_token_only):
        hidden = nnx.merge(graphdef, params)(ids, mask, types, dropout_keys=keys, first_token_only=first_token_only)
        return hidden[:, 0]

    full, first = first_row(params, False), first_row(params, True)
    assert nnx.merge(graphdef, params)(ids, mask, types, first_token_only=True).shape == (3, 1, config.hidden_size)
    np.testing.assert_allclose(np.asarray(first), np.asarray(full), atol=1e-5, rtol=0)
    deterministic = nnx.merge(graphdef, params)(ids, mask, types)[:, 0]
    assert np.abs(np.asarray(full - deterministic)).max() > 1e-2  # dropout is on in the last layer's row
    grad = lambda flag: jax.grad(lambda p: jnp.sum(first_row(p, flag) * weights))(params)  # noqa: E731
    for a, b in zip(jax.tree.leaves(grad(False)), jax.tree.leaves(grad(True)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
def test_remat_keeps_outputs_gradients_and_dropout_masks(model_type):
    """``EncoderConfig.remat`` recomputes each layer in the backward pass: the same parameters, outputs and
    gradients (dropout on; BERT's full output, DeBERTa's first token only) as without it, and it stays out of
    config.json."""
    from jax_adalora.models.heads import build_encoder

    sizes = {k: v for k, v in TINY.items() if k != "initializer_range"}
    rates = dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    if model_type == "bert":
        config = EncoderConfig(**sizes, **rates)
    else:
        config = EncoderConfig.deberta_v3_base(**sizes, **rates, position_buckets=8)
    ids, mask, types = (jnp.asarray(a, jnp.int32) for a in make_inputs(0, max(config.type_vocab_size, 1)))
    types = types if config.type_vocab_size > 0 else None
    keys = dropout_keys(jax.random.key(3), jnp.arange(ids.shape[0]))
    plain_def, params = nnx.split(build_encoder(config, rngs=nnx.Rngs(0)))
    remat_def, remat_params = nnx.split(build_encoder(config.replace(remat=True), rngs=nnx.Rngs(0)))
    jax.tree.map(np.testing.assert_array_equal, params, remat_params)
    weights = jax.random.normal(jax.random.key(4), (*ids.shape, config.hidden_size))

    def loss(params, graphdef, first_token_only):
        out = nnx.merge(graphdef, params)(ids, mask, types, dropout_keys=keys, first_token_only=first_token_only)
        return jnp.sum(out * weights[:, : out.shape[1]])

    value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=(1, 2))

    def close(got, want):  # recomputation may fuse differently: float32 rounding, relative to each leaf's scale
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))

    first_token_only = model_type == "deberta-v2"  # one family each way: compiles are the test's cost
    want = value_and_grad(params, plain_def, first_token_only)
    got = value_and_grad(params, remat_def, first_token_only)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    jax.tree.map(close, got[1], want[1])

    def rematerialised_layers(graphdef) -> int:
        jaxpr = jax.make_jaxpr(loss, static_argnums=(1, 2))(params, graphdef, False).jaxpr
        return sum(eqn.primitive.name in ("remat2", "checkpoint") for eqn in jaxpr.eqns)

    assert rematerialised_layers(remat_def) == config.num_hidden_layers
    assert rematerialised_layers(plain_def) == 0
    assert "remat" not in config.replace(remat=True).to_hf_dict()

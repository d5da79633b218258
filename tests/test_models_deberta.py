"""DeBERTa-v2/v3 encoder: parity with transformers' PyTorch ``DebertaV2Model`` on random tiny configs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model
from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.deberta.modeling import (
    _ATTENTION_OUTPUT,
    _ATTENTION_PROBS,
    _FFN_OUTPUT,
    _REL_EMBEDDINGS,
    EMBEDDINGS_DROPOUT_SITE,
    DebertaContextPooler,
    DebertaV2Encoder,
    _layer_site,
    relative_positions,
    skew,
)
from jax_adalora.models.deberta.weights import deberta_pooler_weight_map, deberta_weight_map
from jax_adalora.models.dropout import DropoutKeys, dropout_keys, keep_mask

TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    layer_norm_eps=1e-7,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

CONFIGS = {
    # Small max_relative_positions: relative positions beyond the span are clamped.
    "c2p_only": dict(relative_attention=True, pos_att_type=["c2p"], max_relative_positions=8, type_vocab_size=2),
    "p2c_only_buckets": dict(
        relative_attention=True, pos_att_type=["p2c"], position_buckets=8, max_relative_positions=32, type_vocab_size=2
    ),
    "c2p_p2c_separate_keys": dict(
        relative_attention=True, pos_att_type="p2c|c2p", max_relative_positions=-1, type_vocab_size=2
    ),
    "v3_like": dict(
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        share_att_key=True,
        position_buckets=8,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
    ),
    "v3_embed_proj_gelu_new": dict(
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        share_att_key=True,
        position_buckets=16,
        max_relative_positions=32,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
        embedding_size=16,
        hidden_act="gelu_new",
    ),
    # transformers still counts pos_att_type in the attention scale without relative attention.
    "absolute_only": dict(relative_attention=False, pos_att_type=["c2p", "p2c"], type_vocab_size=2),
}


def set_weights(module, weight_map, state_dict, prefix=""):
    for hf_key, path, kind in weight_map:
        value = state_dict[prefix + hf_key].detach().numpy()
        if kind == "linear":
            value = value.T
        target = module
        for part in path[:-1]:
            target = target[part] if isinstance(part, int) else getattr(target, part)
        variable = getattr(target, path[-1])
        assert variable.shape == value.shape, (hf_key, path)
        variable.set_value(jnp.asarray(value))


def random_hf(model_cls, hf_config, seed=0):
    """A transformers model with every parameter perturbed, so zero biases and unit LayerNorms don't hide bugs."""
    torch.manual_seed(seed)
    model = model_cls(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch(config, *, batch_size=3, length=24, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (batch_size, length)).astype(np.int32)
    mask = np.ones((batch_size, length), np.int32)
    for row, n in enumerate([length, 2 * length // 3 + 1, length // 3 + 1][:batch_size]):
        mask[row, n:] = 0
    ids = np.where(mask > 0, ids, 0).astype(np.int32)
    types = (rng.random((batch_size, length)) < 0.4).astype(np.int32) * mask
    return ids, mask, types


def hf_hidden(model, ids, mask, types):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
        )
    return out.last_hidden_state.numpy()


# Relative scores are read through ``skew`` when the N + L - 1 relative positions of N queries against L keys
# fit in the table (2S rows), else gathered from the scores against the whole table. 24 tokens: gathered where
# S is 8 or 16, skewed where it is 64 (``c2p_p2c_separate_keys``); 16 tokens: gathered where S is 8, skewed
# where it is 16 (31 of 32 rows) or 64; 8 tokens: skewed in every config.
LENGTHS = [24, 16, 8]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_encoder_matches_transformers(name, length):
    hf_config = DebertaV2Config(**TINY, **CONFIGS[name])
    config = EncoderConfig.from_hf_dict(hf_config.to_dict())
    model = random_hf(DebertaV2Model, hf_config)
    state_dict = model.state_dict()
    weight_map = deberta_weight_map(config)

    # The map covers every transformers weight and every parameter of ours, once.
    assert sorted(k for k, _, _ in weight_map) == sorted(state_dict)
    ours = {
        tuple(path) for path, _ in nnx.to_flat_state(nnx.state(DebertaV2Encoder(config, rngs=nnx.Rngs(0)), nnx.Param))
    }
    assert ours == {path for _, path, _ in weight_map}

    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    set_weights(encoder, weight_map, state_dict)
    ids, mask, types = batch(config, length=length)
    expected = hf_hidden(model, ids, mask, types)
    # Padded positions too: both sides give a padded query uniform attention over all keys.
    got = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_pooler_and_classifier_keys_match_transformers():
    hf_config = DebertaV2Config(**TINY, **CONFIGS["v3_like"], pooler_hidden_act="tanh", num_labels=3)
    config = EncoderConfig.from_hf_dict(hf_config.to_dict())
    model = random_hf(DebertaV2ForSequenceClassification, hf_config, seed=1)
    state_dict = model.state_dict()
    encoder_map, pooler_map = deberta_weight_map(config), deberta_pooler_weight_map(config)
    covered = {f"deberta.{k}" for k, _, _ in encoder_map} | {k for k, _, _ in pooler_map}
    assert covered == {k for k in state_dict if not k.startswith("classifier.")}

    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    pooler = DebertaContextPooler(config, rngs=nnx.Rngs(1))
    set_weights(encoder, encoder_map, state_dict, prefix="deberta.")
    set_weights(pooler, pooler_map, state_dict)
    ids, mask, types = batch(config, seed=1)
    with torch.no_grad():
        hidden = model.deberta(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())[0]
        expected = model.pooler(hidden).numpy()
    got = pooler(encoder(jnp.asarray(ids), jnp.asarray(mask)))
    assert got.shape == (3, config.pooler_hidden_size)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("buckets,max_positions", [(-1, 64), (8, 64), (256, 512), (16, 32)])
def test_relative_positions_match_transformers(buckets, max_positions):
    length = 512 if buckets == 256 else 40
    hidden = torch.zeros(1, length, 1)
    expected = build_relative_position(hidden, hidden, bucket_size=buckets, max_position=max_positions)[0].numpy()
    np.testing.assert_array_equal(relative_positions(length, buckets, max_positions), expected)


def dropout_config():
    return EncoderConfig.deberta_v3_base(
        **{k: v for k, v in TINY.items() if "dropout" not in k},
        position_buckets=8,
        hidden_dropout_prob=0.2,
        attention_probs_dropout_prob=0.2,
        pooler_dropout=0.2,
        pooler_hidden_size=32,
    )


def test_dropout_batch_equals_per_example():
    config = dropout_config()
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    pooler = DebertaContextPooler(config, rngs=nnx.Rngs(1))
    ids, mask, _ = (jnp.asarray(a) for a in batch(config))
    keys = dropout_keys(jax.random.key(7), jnp.arange(ids.shape[0]))

    def forward(ids, mask, keys):
        return pooler(encoder(ids, mask, dropout_keys=keys), dropout_keys=keys)

    batched = jax.jit(forward)(ids, mask, keys)
    # Each example alone, with its own key and the batch's shared key (unbatched under vmap).
    one = jax.jit(jax.vmap(lambda i, m, k: forward(i[None], m[None], DropoutKeys(k[None], keys.shared))[0]))(
        ids, mask, keys.examples
    )
    np.testing.assert_allclose(np.asarray(batched), np.asarray(one), atol=1e-5, rtol=0)
    # Dropout is on, and only the keys decide the masks.
    assert not np.allclose(np.asarray(batched), np.asarray(jax.jit(forward)(ids, mask, None)), atol=1e-3)
    again = jax.jit(forward)(ids, mask, dropout_keys(jax.random.key(7), jnp.arange(ids.shape[0])))
    np.testing.assert_array_equal(np.asarray(batched), np.asarray(again))
    with pytest.raises(TypeError, match="DropoutKeys"):
        forward(ids, mask, keys.examples)


class _OurMasks(torch.nn.Module):
    """Stands in for one of transformers' ``nn.Dropout`` modules, applying the mask our model draws at ``site``:
    one per example from the per-example keys, or one for the batch from the shared key."""

    def __init__(self, keys: DropoutKeys, site: int, rate: float, *, shared: bool):
        super().__init__()
        self.keys, self.site, self.rate, self.shared = keys, site, rate, shared

    def forward(self, x):
        shape = tuple(x.shape)
        if self.shared:
            mask = keep_mask(jax.random.fold_in(self.keys.shared, self.site), self.rate, shape)
        else:
            draw = lambda key: keep_mask(jax.random.fold_in(key, self.site), self.rate, shape[1:])  # noqa: E731
            mask = jax.vmap(draw)(self.keys.examples)
        return x * torch.from_numpy(np.asarray(mask, np.float32)) / (1.0 - self.rate)


@pytest.mark.parametrize("length", [24, 8])
@pytest.mark.parametrize("name", ["v3_like", "c2p_p2c_separate_keys"])
def test_dropout_sites_match_transformers(name, length):
    """With every ``nn.Dropout`` of transformers' model replaced by our masks, the two forwards agree: our dropout
    sits where transformers' does, and the relative-position table gets one mask per layer for the batch."""
    rates = dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.15)
    hf_config = DebertaV2Config(**{**TINY, **rates}, **CONFIGS[name])
    config = EncoderConfig.from_hf_dict(hf_config.to_dict())
    model = random_hf(DebertaV2Model, hf_config)
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    set_weights(encoder, deberta_weight_map(config), model.state_dict())
    ids, mask, types = batch(config, length=length)
    keys = dropout_keys(jax.random.key(3), jnp.arange(ids.shape[0]))

    hidden, probs = rates["hidden_dropout_prob"], rates["attention_probs_dropout_prob"]
    model.embeddings.dropout = _OurMasks(keys, EMBEDDINGS_DROPOUT_SITE, hidden, shared=False)
    for i, layer in enumerate(model.encoder.layer):
        attention = layer.attention.self
        attention.pos_dropout = _OurMasks(keys, _layer_site(i, _REL_EMBEDDINGS), hidden, shared=True)
        attention.dropout = _OurMasks(keys, _layer_site(i, _ATTENTION_PROBS), probs, shared=False)
        layer.attention.output.dropout = _OurMasks(keys, _layer_site(i, _ATTENTION_OUTPUT), hidden, shared=False)
        layer.output.dropout = _OurMasks(keys, _layer_site(i, _FFN_OUTPUT), hidden, shared=False)
    left = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert not left, f"transformers has dropout sites we do not model: {left}"

    expected = hf_hidden(model, ids, mask, types)
    got = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), dropout_keys=keys))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # The last layer at the first position alone (what the classifier runs) draws the same masks there.
    first = encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types), dropout_keys=keys, first_token_only=True)
    np.testing.assert_allclose(np.asarray(first), expected[:, :1], atol=1e-4, rtol=0)
    deterministic = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    assert np.abs(got - deterministic).max() > 0.1  # the masks are really there
    # And the table's masks matter: transformers with other table masks is far outside the tolerance.
    other = keys._replace(shared=jax.random.key(4))
    for i, layer in enumerate(model.encoder.layer):
        layer.attention.self.pos_dropout = _OurMasks(other, _layer_site(i, _REL_EMBEDDINGS), hidden, shared=True)
    assert np.abs(hf_hidden(model, ids, mask, types) - got).max() > 1e-2


def test_jit_and_bfloat16_compute():
    config = dropout_config()
    ids, mask, _ = (jnp.asarray(a) for a in batch(config))
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    eager = encoder(ids, mask)
    jitted = nnx.jit(lambda model, i, m: model(i, m))(encoder, ids, mask)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5, rtol=0)

    half = DebertaV2Encoder(config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert all(v.dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(half, nnx.Param)))
    out = half(ids, mask)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(eager), atol=0.1, rtol=0)


def test_unsupported_configs_raise():
    base = EncoderConfig.deberta_v3_base(**{k: v for k, v in TINY.items()})
    with pytest.raises(NotImplementedError, match="conv_kernel_size"):
        DebertaV2Encoder(base.replace(extra_hf_fields=(("conv_kernel_size", 3),)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model_type"):
        DebertaV2Encoder(base.replace(model_type="bert"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden_act"):
        DebertaV2Encoder(base.replace(hidden_act="nope"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pooler_hidden_act"):
        DebertaContextPooler(base.replace(pooler_hidden_act="nope"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("length", [24, 8])
@pytest.mark.parametrize("name", ["v3_like", "c2p_p2c_separate_keys"])
def test_low_rank_position_scores_equal_the_formed_projection(name, length):
    """With per-example probes the table's adapted projection enters the c2p/p2c scores in low-rank form;
    the result must be the same as forming the projection."""
    from jax_adalora.adapters import get_triplets, inject_adapters, set_probes, zero_probes
    from jax_adalora.config import AdaLoRAConfig

    config = EncoderConfig.from_hf_dict(DebertaV2Config(**TINY, **CONFIGS[name]).to_dict())
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    inject_adapters(encoder, AdaLoRAConfig(r_init=4, r_target=2), rngs=nnx.Rngs(1))
    for layer in encoder.layers:  # λ = 0 and P, Q ~ N(0, 0.02) at init would hide the adapter's part
        for projection in (layer.attention.query, layer.attention.key):
            projection.lam.set_value(jnp.asarray([0.9, -0.5, 0.3, 0.7]))
            projection.P.set_value(projection.P[...] * 20.0)
            projection.Q.set_value(projection.Q[...] * 20.0)
    ids, mask, types = (jnp.asarray(a) for a in batch(config, length=length))
    formed = np.asarray(encoder(ids, mask, types))
    probed = nnx.clone(encoder)
    set_probes(probed, zero_probes(get_triplets(encoder), ids.shape[0]))  # zero: the same function
    low_rank = np.asarray(probed(ids, mask, types))
    np.testing.assert_allclose(low_rank, formed, atol=2e-5, rtol=0)
    plain = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    assert np.abs(formed - np.asarray(plain(ids, mask, types))).max() > 1e-3  # the adapters do contribute


@pytest.mark.parametrize("length", [16])  # full layers gathered (S = 8) or skewed (S = 16, 64); one query skewed
@pytest.mark.parametrize("name", list(CONFIGS))
def test_first_token_only_is_the_first_row_of_the_full_output_with_dropout_on(name, length):
    """``first_token_only`` (what the sequence classifier asks for) computes the last layer at the first position
    alone, c2p / p2c included; values, dropout masks and gradients are those of the full output's first row."""
    rates = dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    config = EncoderConfig.from_hf_dict(DebertaV2Config(**{**TINY, **rates}, **CONFIGS[name]).to_dict())
    graphdef, params = nnx.split(DebertaV2Encoder(config, rngs=nnx.Rngs(0)))
    ids, mask, types = (jnp.asarray(a) for a in batch(config, length=length))
    keys = dropout_keys(jax.random.key(4), jnp.arange(ids.shape[0]))
    weights = jax.random.normal(jax.random.key(1), (ids.shape[0], config.hidden_size))

    def first_row(params, first_token_only, keys=keys):
        encoder = nnx.merge(graphdef, params)
        return encoder(ids, mask, types, dropout_keys=keys, first_token_only=first_token_only)[:, 0]

    full, first = first_row(params, False), first_row(params, True)
    np.testing.assert_allclose(np.asarray(first), np.asarray(full), atol=1e-5, rtol=0)
    assert np.abs(np.asarray(full - first_row(params, False, None))).max() > 1e-2  # dropout is on
    grad = lambda flag: jax.grad(lambda p: jnp.sum(first_row(p, flag) * weights))(params)  # noqa: E731
    for a, b in zip(jax.tree.leaves(grad(False)), jax.tree.leaves(grad(True)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows,cols", [(1, 5), (2, 3), (5, 5), (4, 9), (9, 4)])
def test_skew_shifts_each_row_one_column_further(rows, cols):
    x = np.random.default_rng(rows * 10 + cols).standard_normal((2, 3, rows, rows + cols - 1)).astype(np.float32)
    expected = np.empty((2, 3, rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            expected[..., r, c] = x[..., r, rows - 1 - r + c]
    np.testing.assert_array_equal(np.asarray(skew(jnp.asarray(x), cols)), expected)
    with pytest.raises(ValueError, match="columns"):
        skew(jnp.asarray(x), cols + 1)


@pytest.mark.parametrize("length", [8, 24])
@pytest.mark.parametrize("name", ["c2p_only", "p2c_only_buckets", "v3_like", "c2p_p2c_separate_keys"])
def test_skewed_relative_scores_equal_the_gathered_ones_with_gradients(name, length):
    """Both ways of reading c2p / p2c, on one attention module, for every query and for the first alone:
    the same values and the same gradients for queries, keys, table and projections, whether or not the
    relative positions fit in the table and whether or not they are clamped or bucketed."""
    config = EncoderConfig.from_hf_dict(DebertaV2Config(**TINY, **CONFIGS[name]).to_dict())
    graphdef, params = nnx.split(DebertaV2Encoder(config, rngs=nnx.Rngs(0)).layers[0].attention)
    table = DebertaV2Encoder(config, rngs=nnx.Rngs(1)).relative_embeddings()
    keys = jax.random.split(jax.random.key(2), 3)
    heads, head_dim = config.num_attention_heads, config.head_dim
    k = jax.random.normal(keys[0], (2, heads, length, head_dim))
    weights = jax.random.normal(keys[2], (2, heads, length, length))
    for num_queries in (length, 1):
        q = jax.random.normal(keys[1], (2, heads, num_queries, head_dim))

        def total(params, q, k, table, method, num_queries=num_queries):
            scores = getattr(nnx.merge(graphdef, params), method)(q, k, table, length)
            return jnp.sum(scores * weights[:, :, :num_queries])

        for method in ("skewed_relative_scores", "gathered_relative_scores"):
            scores = getattr(nnx.merge(graphdef, params), method)(q, k, table, length)
            assert scores.shape == (2, heads, num_queries, length), method
        skewed = jax.value_and_grad(total, argnums=(0, 1, 2, 3))(params, q, k, table, "skewed_relative_scores")
        gathered = jax.value_and_grad(total, argnums=(0, 1, 2, 3))(params, q, k, table, "gathered_relative_scores")
        np.testing.assert_allclose(float(skewed[0]), float(gathered[0]), rtol=1e-5)
        chex.assert_trees_all_close(skewed[1], gathered[1], rtol=1e-4, atol=1e-5)


def _gathers_on_scores(encoder, ids, mask) -> int:
    """Gathers whose operand has the rank of a score tensor (B, NH, rows, cols) in the encoder's jaxpr."""
    graphdef, state = nnx.split(encoder)
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids, mask))(state)
    return sum(eqn.primitive.name == "gather" and eqn.invars[0].aval.ndim == 4 for eqn in jaxpr.jaxpr.eqns)


def test_short_sequences_read_relative_scores_without_a_gather():
    """The skew is what runs when the relative positions fit in the table; the gather only beyond."""
    config = EncoderConfig.from_hf_dict(DebertaV2Config(**TINY, **CONFIGS["v3_like"]).to_dict())  # 2S = 16
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    short, long = (tuple(jnp.asarray(a) for a in batch(config, length=n))[:2] for n in (8, 24))
    assert _gathers_on_scores(encoder, *short) == 0
    assert _gathers_on_scores(encoder, *long) == 2 * config.num_hidden_layers  # c2p and p2c per layer


def test_off_cpu_the_skew_reads_every_length_with_the_gathers_values_and_gradients(monkeypatch):
    """DeBERTa-v3's table (position_buckets 256, 2S = 512) at 300 tokens: beyond it, CPU gathers (as measured
    there) and any other backend skews (no scatter-add in the backward pass); outputs and gradients agree."""
    from jax_adalora.models.deberta.modeling import relative_scores_by_skew

    assert relative_scores_by_skew(256, 256, 512, "cpu") and not relative_scores_by_skew(257, 257, 512, "cpu")
    assert relative_scores_by_skew(384, 384, 512, "gpu") and relative_scores_by_skew(1, 384, 512, "tpu")
    v3 = dict(CONFIGS["v3_like"], position_buckets=256, max_relative_positions=512)
    hf = DebertaV2Config(**{**TINY, "num_hidden_layers": 1, "max_position_embeddings": 512}, **v3)
    config = EncoderConfig.from_hf_dict(hf.to_dict())
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    ids, mask, types = (jnp.asarray(a) for a in batch(config, batch_size=2, length=300))
    graphdef, params = nnx.split(encoder)
    weights = jax.random.normal(jax.random.key(3), (2, 300, config.hidden_size))

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params)(ids, mask, types) * weights)

    def value_and_grad():
        return jax.jit(jax.value_and_grad(loss))(params)

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")  # as traced for CPU, wherever the test runs
    assert _gathers_on_scores(encoder, ids, mask) == 2  # c2p and p2c gathered
    gathered = value_and_grad()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _gathers_on_scores(encoder, ids, mask) == 0
    skewed = value_and_grad()
    np.testing.assert_allclose(float(skewed[0]), float(gathered[0]), rtol=1e-5)
    chex.assert_trees_all_close(skewed[1], gathered[1], rtol=1e-4, atol=1e-5)

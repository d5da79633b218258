"""The training step's gradient bookkeeping: what the optimizer gets and what the scores read."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_adalora.adapters import adapter_modules, find_triplets, inject_adapters, trainable_filter
from jax_adalora.cli.step import apply_model, make_train_step, task_loss, task_losses_fn
from jax_adalora.config import AdaLoRAConfig, OptimConfig
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.dropout import dropout_keys
from jax_adalora.models.heads import SequenceClassifier
from jax_adalora.moments import value_grad_and_moments
from jax_adalora.training import FunctionalModel, adalora_optimizer, init_train_state, orthogonal_penalty

HEAD = r"(classifier|pooler)\..*"


def _tiny_classifier(adalora: AdaLoRAConfig, dtype=jnp.float32):
    config = EncoderConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32,
    )  # fmt: skip
    model = SequenceClassifier(config, num_labels=2, dtype=dtype, rngs=nnx.Rngs(0))
    inject_adapters(model, adalora, rngs=nnx.Rngs(1))
    return model


def _set_lambdas(model, value=0.3):
    """λ = 0 at init would leave P's and Q's gradients at zero."""
    for module in adapter_modules(model).values():
        module.lam.set_value(jnp.full_like(module.lam[...], value))


def _batch(n=6, length=7):
    ids = jax.random.randint(jax.random.key(2), (n, length), 1, 50)
    return {
        "input_ids": ids,
        "attention_mask": jnp.ones((n, length), jnp.int32),
        "token_type_ids": jnp.zeros((n, length), jnp.int32),
        "labels": jnp.arange(n) % 2,
        "example_mask": jnp.ones((n,), jnp.int32),
        "example_index": jnp.arange(n),
    }


def _step_moments(functional, adalora, batch, key, *, dropout, params=None):
    """What the training step computes: ``(loss, grads, moments)`` through the public entry point."""
    params = functional.params if params is None else params

    def compute(params, frozen, batch, key):
        loss, grads, moments = value_grad_and_moments(
            task_losses_fn("classification", key, dropout=dropout),
            functional.model(params, frozen),
            batch,
            wrt=functional.trainable,
            mask=batch["example_mask"],
            penalty_fn=orthogonal_penalty(adalora),
        )
        return loss, nnx.to_pure_dict(grads), moments

    return jax.jit(compute)(params, functional.frozen, batch, key)


def _loop_moments(functional, batch, key, *, dropout):
    """The reference: each real example's own adapter gradient (one-example batches, same dropout keys),
    moments by two passes in float64."""
    losses_fn = task_losses_fn("classification", key, dropout=dropout)
    grad_one = jax.jit(jax.grad(lambda p, one: losses_fn(functional.model(p), one)[0]))
    grads = []
    weights = np.asarray(batch["example_mask"], np.float64)
    for b in np.flatnonzero(weights):
        one = jax.tree.map(lambda leaf, b=b: leaf[b : b + 1], batch)
        grads.append(jax.tree.map(lambda g: np.asarray(g, np.float64), find_triplets(grad_one(functional.params, one))))
    mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
    sq_mean = jax.tree.map(lambda *g: sum(x * x for x in g) / len(g), *grads)
    var = jax.tree.map(lambda m, *g: sum((x - m) ** 2 for x in g) / len(g), mean, *grads)
    return mean, sq_mean, var


def test_per_example_moments_read_the_task_loss_and_the_update_adds_the_regulariser():
    adalora = AdaLoRAConfig(r_init=4, r_target=2, score="gsnr", orth_reg_weight=0.5)
    model = _tiny_classifier(adalora)
    _set_lambdas(model)
    path, first = next(iter(adapter_modules(model).items()))
    # One triplet of one layer with λ = 0 (as after pruning): its P column and Q row get no task gradient.
    first.lam.set_value(first.lam[...].at[0].set(0.0))
    functional = FunctionalModel(model, trainable_filter(HEAD))
    batch, key = _batch(), jax.random.key(5)
    loss, grads, moments = _step_moments(functional, adalora, batch, key, dropout=False)

    def task_mean(p):
        return jnp.mean(task_loss("classification", apply_model(functional, p, functional.frozen, batch), batch))

    task_value, task_grads = jax.jit(jax.value_and_grad(task_mean))(functional.params)
    penalty = orthogonal_penalty(adalora)
    reg_value, reg_grads = jax.jit(jax.value_and_grad(lambda p: penalty(functional.model(p))))(functional.params)
    assert float(reg_value) > 0
    np.testing.assert_allclose(loss, task_value + reg_value, rtol=1e-5)
    chex.assert_trees_all_close(moments.mean, task_grads, rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(grads, jax.tree.map(jnp.add, task_grads, reg_grads), rtol=1e-4, atol=1e-7)

    pruned = jax.tree.map(np.asarray, find_triplets(moments.mean)[path])
    np.testing.assert_array_equal(pruned["P"][:, 0], 0.0)
    np.testing.assert_array_equal(pruned["Q"][0], 0.0)
    assert np.abs(np.asarray(find_triplets(grads)[path]["P"][:, 0])).max() > 0  # the regulariser still pulls it
    # So GSNR gives the pruned triplet's P and Q nothing, instead of reg² / eps.
    mean_p, var_p = find_triplets(moments.mean)[path]["P"], find_triplets(moments.var)[path]["P"]
    gsnr_p = np.asarray(mean_p**2 / (var_p + 1e-12))
    assert gsnr_p[:, 0].max() == 0.0
    assert gsnr_p[:, 1:].max() < 1e3


def test_running_statistics_start_scoring_at_the_second_step():
    from jax_adalora.allocator import find_allocator_state

    adalora = AdaLoRAConfig(r_init=4, r_target=2, score="gsnr", statistics="running", t_init=2, t_final=2)
    functional = FunctionalModel(_tiny_classifier(adalora), trainable_filter(HEAD))
    tx = adalora_optimizer(OptimConfig(), adalora, total_steps=10)
    state = init_train_state(functional, tx, adalora)
    step = make_train_step(functional, tx, adalora, "classification", dropout=False)
    batch = _batch()
    state, _ = step(state, functional.frozen, batch, jax.random.key(0))
    first = find_allocator_state(state.opt_state).smoothing
    assert all(float(jnp.max(jnp.abs(e))) == 0 for e in jax.tree.leaves(first.ema))  # Var[g] = 0: not scored
    state, _ = step(state, functional.frozen, batch, jax.random.key(1))
    second = find_allocator_state(state.opt_state).smoothing
    assert all(np.isfinite(np.asarray(e)).all() for e in jax.tree.leaves(second.ema))
    assert max(float(jnp.max(e)) for e in jax.tree.leaves(second.ema)) > 0
    assert int(state.running["count"]) == 2


def _tiny_deberta_classifier(adalora: AdaLoRAConfig):
    config = EncoderConfig.deberta_v3_base(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, position_buckets=4, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.2,
        pooler_dropout=0.2, pooler_hidden_size=16,
    )  # fmt: skip
    model = SequenceClassifier(config, num_labels=2, rngs=nnx.Rngs(0))
    for layer in model.encoder.layers:  # attention logits of order 1, so the position terms (and their dropout) count
        for projection in (layer.attention.query, layer.attention.key):
            projection.kernel.set_value(projection.kernel[...] * 20.0)
    inject_adapters(model, adalora, rngs=nnx.Rngs(1))
    return model


@pytest.mark.parametrize("length", [7, 4])
def test_per_example_gradients_average_to_the_batch_gradient_with_dropout_on(length):
    """DeBERTa drops out its relative-position table with one mask for the batch (the step's shared key), so
    each example's gradient must see the batch's mask. The per-example path (a batch forward with per-example
    probes) applies the table's adapters in low-rank form (``AdaLoRALinear.low_rank_parts``).
    The table has 8 rows: at 7 tokens the full layers gather their relative scores and the last layer (one
    query) skews them; at 4 tokens every layer skews (``models.deberta.skew``)."""
    adalora = AdaLoRAConfig(r_init=4, r_target=2, score="fisher", orth_reg_weight=0.0)
    model = _tiny_deberta_classifier(adalora)
    _set_lambdas(model)
    functional = FunctionalModel(model, trainable_filter(HEAD))
    batch, key = _batch(length=length), jax.random.key(5)
    _, _, moments = _step_moments(functional, adalora, batch, key, dropout=True)

    def task_mean(p, keys):
        return jnp.mean(task_loss("classification", apply_model(functional, p, functional.frozen, batch, keys), batch))

    keys = dropout_keys(key, batch["example_index"])
    batch_grads = jax.jit(jax.grad(task_mean))(functional.params, keys)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(batch_grads))
    chex.assert_trees_all_close(moments.mean, batch_grads, rtol=1e-4, atol=1e-5 * scale)
    # Dropout is on, including the shared relative-position site: another shared key changes the gradient.
    other_shared = jax.jit(jax.grad(task_mean))(functional.params, keys._replace(shared=jax.random.key(99)))
    differences = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), batch_grads, other_shared)
    difference = max(jax.tree.leaves(differences))
    assert difference > 1e-3 * scale  # 100x the tolerance the equality above holds to


def test_the_step_under_xla_defaults_or_the_library_options_gives_the_same_update():
    adalora = AdaLoRAConfig(r_init=4, r_target=2, score="gsnr", t_init=1, t_final=1)
    functional = FunctionalModel(_tiny_classifier(adalora), trainable_filter(HEAD))
    tx = adalora_optimizer(OptimConfig(), adalora, total_steps=6)
    batch = _batch()
    results = []
    for options in (None, {}):  # None: runtime.step_compiler_options(); {}: XLA's defaults
        state = jax.tree.map(jnp.copy, init_train_state(functional, tx, adalora))  # each step donates its state
        step = make_train_step(functional, tx, adalora, "classification", compiler_options=options)
        for i in range(3):
            state, metrics = step(state, functional.frozen, batch, jax.random.key(i))
        results.append((state.params, metrics["loss"]))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["bert", "deberta"])
def test_the_steps_per_example_moments_equal_a_loop_over_examples(family):
    """The step's moments come from one batch backward pass through zero-valued probes of the adapters
    (``adapters.probed_adapter``); the reference differentiates each real example alone. Dropout on, padded
    tokens, and one padding example, which must count for nothing."""
    adalora = AdaLoRAConfig(r_init=4, r_target=2, score="gsnr")
    model = _tiny_deberta_classifier(adalora) if family == "deberta" else _tiny_classifier(adalora)
    _set_lambdas(model)
    functional = FunctionalModel(model, trainable_filter(HEAD))
    batch, key = _batch(length=7), jax.random.key(5)
    batch["attention_mask"] = batch["attention_mask"].at[1, 5:].set(0).at[3, 3:].set(0)
    batch["example_mask"] = batch["example_mask"].at[5].set(0)

    loss, _, moments = _step_moments(functional, adalora, batch, key, dropout=True)
    no_penalty = AdaLoRAConfig(r_init=4, r_target=2, score="gsnr", orth_reg_weight=0.0)
    loss_task, _, _ = _step_moments(functional, no_penalty, batch, key, dropout=True)
    losses = task_losses_fn("classification", key, dropout=True)(functional.model(functional.params), batch)
    np.testing.assert_allclose(loss_task, np.mean(np.asarray(losses)[:5]), rtol=1e-5)
    assert float(loss) > float(loss_task)  # the training loss adds the regulariser
    reference = _loop_moments(functional, batch, key, dropout=True)
    for name, theirs in zip(("mean", "sq_mean", "var"), reference, strict=True):
        ours = find_triplets(getattr(moments, name))
        scale = max(float(np.max(np.abs(t))) for t in jax.tree.leaves(theirs))
        assert scale > 0
        chex.assert_trees_all_close(ours, theirs, rtol=1e-4, atol=1e-5 * scale)
    assert float(moments.count) == 5
    # Per-example, not batch, statistics: the spread over examples is of the order of E[g²].
    largest_var = max(float(jnp.max(v)) for v in jax.tree.leaves(find_triplets(moments.var)))
    largest_sq_mean = max(float(jnp.max(v)) for v in jax.tree.leaves(find_triplets(moments.sq_mean)))
    assert largest_var > 0.1 * largest_sq_mean


def test_per_example_moments_under_bfloat16_compute_stay_float32_and_close():
    """With bfloat16 compute the probes (float32, as the parameters) still receive each example's gradient."""
    adalora = AdaLoRAConfig(r_init=4, r_target=2, score="fisher")
    results = []
    for dtype in (jnp.float32, jnp.bfloat16):
        model = _tiny_classifier(adalora, dtype=dtype)
        _set_lambdas(model)
        results.append(
            _step_moments(
                FunctionalModel(model, trainable_filter(HEAD)), adalora, _batch(), jax.random.key(0), dropout=False
            )[2]
        )
    full, half = results
    for name in ("mean", "sq_mean"):
        ours, reference = find_triplets(getattr(half, name)), find_triplets(getattr(full, name))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(ours))
        scale = max(float(jnp.max(jnp.abs(t))) for t in jax.tree.leaves(reference))
        chex.assert_trees_all_close(ours, reference, atol=0.05 * scale)


@pytest.mark.parametrize(
    "family, score, statistics",
    [("bert", "gsnr", "running"), ("deberta", "gsnr", "per_example")],  # the batch gradient's path, the probes' path
)
def test_a_step_in_microbatches_gives_the_whole_batch_steps_update(family, score, statistics):
    """``make_train_step(microbatch_size=2)`` differentiates a batch of 6 in three microbatches: the same
    loss, update, statistics and allocator state as the whole batch at once. Dropout on (its masks follow
    each example's index, whichever microbatch holds it), padded tokens, one padding example."""
    adalora = AdaLoRAConfig(r_init=4, r_target=2, score=score, statistics=statistics, t_init=1, t_final=1)
    model = _tiny_deberta_classifier(adalora) if family == "deberta" else _tiny_classifier(adalora)
    _set_lambdas(model)  # nonzero λ: P and Q get task gradients too
    functional = FunctionalModel(model, trainable_filter(HEAD))
    tx = adalora_optimizer(OptimConfig(), adalora, total_steps=6)
    batch = _batch(length=7)
    batch["attention_mask"] = batch["attention_mask"].at[1, 5:].set(0)
    batch["example_mask"] = batch["example_mask"].at[4].set(0)
    results = []
    for microbatch_size in (None, 2):
        state = jax.tree.map(jnp.copy, init_train_state(functional, tx, adalora))  # each step donates its state
        step = make_train_step(functional, tx, adalora, "classification", microbatch_size=microbatch_size)
        history = []
        for i in range(3):
            state, metrics = step(state, functional.frozen, batch, jax.random.key(i))
            history.append(metrics)
        results.append((state, history))
    (whole, whole_history), (micro, micro_history) = results
    chex.assert_trees_all_close(micro_history, whole_history, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(micro.params, whole.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(micro.opt_state, whole.opt_state, rtol=1e-4, atol=1e-6)
    assert float(whole_history[-1]["grad_norm"]) > 0


def test_a_step_built_for_a_mesh_keeps_its_shardings_compiles_once_and_refuses_a_misplaced_batch():
    """``mesh=``: the new state comes back replicated as it went in (so the next step reuses the program and
    its donated buffers), and a batch not split over the devices is an error at the call, not a silent copy."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    adalora = AdaLoRAConfig(r_init=4, r_target=2, t_init=1, t_final=2, delta_t=1)
    functional = FunctionalModel(_tiny_classifier(adalora), trainable_filter(HEAD))
    tx = adalora_optimizer(OptimConfig(), adalora, total_steps=4)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    step = make_train_step(functional, tx, adalora, "classification", dropout=False, mesh=mesh)
    state = jax.device_put(init_train_state(functional, tx, adalora), replicated)
    frozen = jax.device_put(functional.frozen, replicated)
    batch = jax.device_put(_batch(n=2 * len(jax.devices())), split)
    key = jax.random.wrap_key_data(jax.device_put(np.asarray(jax.random.key_data(jax.random.key(0))), replicated))
    for _ in range(3):
        state, metrics = step(state, frozen, batch, key)
    assert step._cache_size() == 1
    assert all(leaf.sharding.is_equivalent_to(replicated, leaf.ndim) for leaf in jax.tree.leaves(state))
    assert all(leaf.sharding.is_equivalent_to(replicated, leaf.ndim) for leaf in jax.tree.leaves(metrics))
    with pytest.raises(ValueError, match="shard"):
        step(state, frozen, jax.device_put(batch, replicated), key)

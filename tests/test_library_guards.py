"""Library misuse that used to go unnoticed (issue 36, "Nothing silent"): each case ends in a correct result or
one clear error line, as early as it can be told."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jax_adalora as jal

CONFIG = jal.AdaLoRAConfig(r_init=4, r_target=2, t_init=1, t_final=2, delta_t=1)
BATCH = {"x": jnp.linspace(-1.0, 1.0, 24).reshape(4, 6), "y": jnp.arange(4) % 3}


class Net(nnx.Module):
    def __init__(self, rngs, extra=None):
        self.hidden = nnx.Linear(6, 8, rngs=rngs)
        self.extra = extra
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        h = self.hidden(x)
        if self.extra is not None:
            h = self.extra(h)
        return self.head(jnp.tanh(h))


def losses(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])


def _net(extra=None):
    net = Net(nnx.Rngs(0), extra)
    jal.inject(net, CONFIG, targets="hidden", rngs=nnx.Rngs(1))
    return net


def _train(model, tx, steps, wrt=jal.AdaLoRAParam):
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    for _ in range(steps):
        _, grads, moments = jal.value_grad_and_moments(losses, model, BATCH, wrt=wrt)
        optimizer.update(model, grads, moments=moments)
    return optimizer


# ---- 1. the allocator before the optimizer ---------------------------------------------------------------


def test_an_allocator_before_the_optimizer_is_refused_at_the_first_update():
    tx = optax.chain(jal.rank_allocator(CONFIG, 10), optax.adamw(1e-2))
    with pytest.raises(ValueError, match="rank_allocator must be the last transform") as err:
        _train(_net(), tx, 1)
    assert "\n" not in str(err.value)


def test_an_allocator_whose_update_is_changed_after_it_is_refused_once_it_masks():
    """Something after the allocator rescales its -λ (here a scale, which the first-update check cannot see)."""
    tx = optax.chain(optax.adam(1e-2), jal.rank_allocator(CONFIG, 10), optax.scale(0.5))
    with pytest.raises(ValueError, match="masked at the previous update are not 0"):
        _train(_net(), tx, 10)


def test_under_jit_the_order_check_is_opt_in():
    model = _net()
    optimizer = nnx.Optimizer(model, optax.chain(jal.rank_allocator(CONFIG, 10, check_order=True), optax.adam(1e-2)),
                              wrt=jal.AdaLoRAParam)  # fmt: skip

    @nnx.jit
    def step(model, optimizer):
        _, grads, moments = jal.value_grad_and_moments(losses, model, BATCH)
        optimizer.update(model, grads, moments=moments)

    with pytest.raises(Exception, match="rank_allocator must be the last transform"):
        step(model, optimizer)
        jax.block_until_ready(nnx.state(model))


def test_the_allocator_last_trains_to_the_budget_with_pruned_lambdas_zero():
    model = _net()
    optimizer = _train(model, optax.chain(optax.adamw(1e-2), jal.rank_allocator(CONFIG, 10)), 10)
    kept = np.asarray(jal.rank_pattern(optimizer)["hidden"])
    assert kept.sum() == 2
    assert np.all(np.asarray(model.hidden.lam[...])[~kept] == 0.0)


# ---- 2. a run stopped before the final phase ---------------------------------------------------------------


def test_allocation_status_says_a_run_stopped_early_is_above_its_budget():
    config = jal.AdaLoRAConfig(r_init=4, r_target=2, t_init=3, t_final=2, delta_t=1)
    model = _net()
    optimizer = _train(model, optax.chain(optax.adamw(1e-2), jal.rank_allocator(config, 20)), 4)
    status = jal.allocation_status(optimizer, config, 20)
    assert (status.step, status.final_step, status.target, status.done) == (4, 18, 2, False)
    assert status.kept > status.target
    assert str(status).startswith("rank allocation not done: step 4 of the schedule's 18")
    for _ in range(16):
        _, grads, moments = jal.value_grad_and_moments(losses, model, BATCH)
        optimizer.update(model, grads, moments=moments)
    status = jal.allocation_status(optimizer, config, 20)
    assert status.done and status.kept == status.target == 2


# ---- 3. saving a trained model ---------------------------------------------------------------------------------


HEAD_TOO = nnx.Any(jal.AdaLoRAParam, nnx.PathContains("head"))


def _trained_with_head(steps=10):
    model = _net()
    optimizer = _train(model, optax.chain(optax.adamw(1e-2), jal.rank_allocator(CONFIG, 10)), steps, wrt=HEAD_TOO)
    return model, optimizer


def test_saving_a_pruned_model_without_its_pattern_is_refused(tmp_path):
    model, _ = _trained_with_head()
    with pytest.raises(ValueError, match="2 of the 4 λ of adapter hidden are exactly 0 .* rank_pattern=optimizer"):
        jal.save_adapters(tmp_path / "a.safetensors", model)
    assert not (tmp_path / "a.safetensors").exists()
    jal.save_adapters(tmp_path / "a.safetensors", model, rank_pattern="model")  # asked for: the masks as they are


def test_the_guide_save_example_reloads_the_trained_model(tmp_path):
    """docs/guides/own-model.md trains a head through wrt=; its save example stores it with include=wrt."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "own-model.md").read_text()
    assert (
        "rank_pattern=optimizer, include=wrt)" in text and "fresh_model_with_the_same_injection, include=wrt)" in text
    )
    model, optimizer = _trained_with_head()
    wrt = HEAD_TOO
    path = jal.save_adapters(tmp_path / "adapters.safetensors", model, rank_pattern=optimizer, include=wrt)
    fresh = _net()
    jal.load_adapters(path, fresh, include=wrt)
    np.testing.assert_array_equal(np.asarray(fresh(BATCH["x"])), np.asarray(model(BATCH["x"])))
    np.testing.assert_array_equal(np.asarray(fresh.hidden.mask[...]), np.asarray(jal.rank_pattern(optimizer)["hidden"]))
    without_head = _net()
    jal.load_adapters(jal.save_adapters(tmp_path / "b.safetensors", model, rank_pattern=optimizer), without_head)
    assert not np.allclose(np.asarray(without_head(BATCH["x"])), np.asarray(model(BATCH["x"])))


def test_a_pattern_that_masks_regrown_lambdas_is_refused(tmp_path):
    model, optimizer = _trained_with_head()
    model.hidden.lam.set_value(model.hidden.lam[...] + 0.1)  # what a step between masking steps can do
    with pytest.raises(ValueError, match="masks 2 triplets of adapter hidden whose λ is not 0"):
        jal.save_adapters(tmp_path / "a.safetensors", model, rank_pattern=optimizer)


# ---- 4. raw errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"temperature": jnp.asarray(0.5)}, r"batch leaf \['temperature'\] is a scalar: .* leading example axis B"),
        ({"name": "abc"}, r"batch leaf \['name'\] is a str \('abc'\), not an array"),
        ({"z": jnp.ones((3, 2))}, r"got leading sizes \['3', '4'\] \(3: \['z'\]; 4: \['x'\], \['y'\]\)"),
    ],
)
def test_a_batch_leaf_without_the_example_axis_is_named(extra, needle):
    with pytest.raises(ValueError, match=needle) as err:
        jal.value_grad_and_moments(losses, _net(), {**BATCH, **extra})
    assert "\n" not in str(err.value)


def test_the_optimizer_gives_its_own_wrt_to_the_statistics():
    """An optimizer over every nnx.Param with the statistics' default wrt failed in optax (a pytree structure
    error); wrt=optimizer makes the two agree."""
    model = _net()
    tx = optax.chain(optax.adamw(1e-2), jal.rank_allocator(CONFIG, 10))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    head = np.asarray(model.head.kernel[...])
    _, grads, moments = jal.value_grad_and_moments(losses, model, BATCH, wrt=optimizer)
    optimizer.update(model, grads, moments=moments)
    assert not np.array_equal(np.asarray(model.head.kernel[...]), head)


# ---- 5. models with state that training mutates -----------------------------------------------------------


@pytest.mark.parametrize("statistics", ["per_example", "running", "batch"])
@pytest.mark.parametrize(
    "extra, needle",
    [
        (lambda: nnx.BatchNorm(8, use_running_average=False, rngs=nnx.Rngs(0)), "extra is an nnx.BatchNorm with use"),
        (lambda: nnx.Dropout(0.5, rngs=nnx.Rngs(3)), "extra is an nnx.Dropout holding its own rngs"),
    ],
)
def test_state_that_would_be_dropped_is_refused_naming_the_module(extra, needle, statistics):
    model = _net(extra())
    running = jal.RunningMoments(model) if statistics == "running" else None
    with pytest.raises(ValueError, match=needle) as err:
        jal.value_grad_and_moments(losses, model, BATCH, statistics=statistics, running=running)
    assert "\n" not in str(err.value)


def test_the_ways_the_refusal_suggests_work():
    """use_running_average=True; dropout with rngs=None and a key from the batch (the mask changes with the key)."""
    model = _net(nnx.BatchNorm(8, use_running_average=True, rngs=nnx.Rngs(0)))
    jal.value_grad_and_moments(losses, model, BATCH)

    class WithDropout(Net):
        def __call__(self, x, key):
            return self.head(jnp.tanh(self.extra(self.hidden(x), rngs=key)))

    model = WithDropout(nnx.Rngs(0), nnx.Dropout(0.5, rngs=None))
    jal.inject(model, CONFIG, targets="hidden", rngs=nnx.Rngs(1))

    def dropout_losses(m, b):
        logits = jax.vmap(lambda x, k: m(x[None], k)[0])(b["x"], b["key"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"])

    def loss_with(seed):
        keys = jax.random.split(jax.random.key(seed), 4)
        return jal.value_grad_and_moments(dropout_losses, model, {**BATCH, "key": keys})[0]

    assert loss_with(0) != loss_with(1)


# ---- 6. losses that couple the examples ------------------------------------------------------------------------


def info_nce(model, batch):
    """In-batch negatives: example i's loss reads every example's embedding."""
    z = model(batch["x"])
    logits = z @ z.T
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(z.shape[0]))


def _trained_lambdas(model):
    model.hidden.lam.set_value(jnp.asarray([0.5, -0.3, 0.2, 0.1]))  # λ = 0 would leave P's and Q's gradients 0
    return model


def test_the_per_example_check_fires_on_an_in_batch_negatives_loss():
    model = _trained_lambdas(_net())
    jal.value_grad_and_moments(info_nce, model, BATCH)  # silently the moments of something else
    with pytest.raises(ValueError, match=r"check_per_example=True\): .* differ from each example .* InfoNCE") as err:
        jal.value_grad_and_moments(info_nce, model, BATCH, check_per_example=True)
    assert "\n" not in str(err.value)


def test_the_per_example_check_passes_an_ordinary_loss_and_is_opt_in():
    model = _trained_lambdas(_net())
    checked = jal.value_grad_and_moments(losses, model, BATCH, check_per_example=True)
    plain = jal.value_grad_and_moments(losses, model, BATCH)
    np.testing.assert_allclose(checked[0], plain[0])
    with pytest.raises(ValueError, match="checks statistics='per_example', not 'batch'"):
        jal.value_grad_and_moments(losses, model, BATCH, statistics="batch", check_per_example=True)


def test_under_jit_the_per_example_check_raises_through_a_callback():
    model = _trained_lambdas(_net())
    step = nnx.jit(lambda m, b: jal.value_grad_and_moments(info_nce, m, b, check_per_example=True)[0])
    with pytest.raises(Exception, match="check_per_example=True"):
        jax.block_until_ready(step(model, BATCH))


def test_saving_into_a_missing_folder_names_the_folder_and_leaves_nothing(tmp_path):
    model, optimizer = _trained_with_head(steps=2)
    target = tmp_path / "no-such-folder" / "adapters.safetensors"
    with pytest.raises(FileNotFoundError, match=r"no-such-folder \(the folder of .*adapters.safetensors\) does not"):
        jal.save_adapters(target, model, rank_pattern=optimizer)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        jal.save_adapters(tmp_path, model, rank_pattern=optimizer)
    assert list(tmp_path.iterdir()) == []

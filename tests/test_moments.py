"""The statistics entry point on models defined here (not from jax_adalora.models), against float64 loops."""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jax_adalora as jal


class Classifier(nnx.Module):
    """Adapted layers see the batch as their leading axis: the probe path applies. ``hidden`` is an
    ``nnx.LinearGeneral`` over two feature axes, so the adapter flattens them."""

    def __init__(self, dtype, rngs: nnx.Rngs):
        self.hidden = nnx.LinearGeneral((2, 3), 8, axis=(-2, -1), param_dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(8, 3, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x.reshape(x.shape[0], 2, 3))))


class TokenClassifier(nnx.Module):
    """Flattens (B, L, d) tokens to (B·L, d) before its adapted layer: probes cannot tell examples apart."""

    def __init__(self, dtype, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(3, 8, param_dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(8, 3, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        tokens = jnp.tanh(self.hidden(x.reshape(-1, 3))).reshape(x.shape[0], 2, 8)
        return self.out(jnp.mean(tokens, axis=1))


def losses(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])


def _model(cls, dtype=jnp.float32):
    model = cls(dtype, nnx.Rngs(0))
    jal.inject(model, jal.AdaLoRAConfig(r_init=3, r_target=2), targets="hidden|out", rngs=nnx.Rngs(1))
    for module in jal.adapters.adapter_modules(model).values():  # λ = 0 at init would zero P's and Q's gradients
        module.lam.set_value(jnp.linspace(-0.5, 0.7, module.rank, dtype=dtype))
    return model


def _batch(size=6, dtype=jnp.float32):
    x = jax.random.normal(jax.random.key(3), (size, 6), dtype)
    return {"x": x, "y": jnp.arange(size) % 3}


def _loop_moments(model, batch, mask):
    """Each real example differentiated alone with nnx.grad; two-pass moments in float64 numpy."""
    grads = []
    for b in range(batch["x"].shape[0]):
        one = jax.tree.map(lambda leaf, b=b: leaf[b : b + 1], batch)
        grad = nnx.grad(lambda m, one=one: losses(m, one)[0], argnums=nnx.DiffState(0, jal.AdaLoRAParam))(model)
        grads.append(jax.tree.map(lambda g: np.asarray(g, np.float64), nnx.to_pure_dict(grad)))
    weights = np.asarray(mask, np.float64)
    count = weights.sum()

    def moment(fn):
        return jax.tree.map(lambda *gs: sum(w * fn(g) for w, g in zip(weights, gs, strict=True)) / count, *grads)

    mean = moment(lambda g: g)
    sq_mean = moment(np.square)
    var = jax.tree.map(
        lambda m, *gs: sum(w * np.square(g - m) for w, g in zip(weights, gs, strict=True)) / count, mean, *grads
    )
    return mean, sq_mean, var


@pytest.mark.parametrize(
    "cls, microbatch_size", [(Classifier, None), (Classifier, 2), (TokenClassifier, None), (TokenClassifier, 3)]
)
def test_per_example_moments_equal_a_float64_loop(cls, microbatch_size, caplog):
    """Probe path (Classifier) and vmap fallback (TokenClassifier) both give the loop's moments to 1e-12 under
    x64, with a padding example masked out; the fallback says so in one log line."""
    with jax.enable_x64(True):
        model, batch = _model(cls, jnp.float64), _batch(dtype=jnp.float64)
        mask = jnp.asarray([1, 1, 0, 1, 1, 1], jnp.float64)
        with caplog.at_level(logging.WARNING, logger="jax_adalora.moments"):
            loss, grads, moments = jal.value_grad_and_moments(
                losses, model, batch, mask=mask, microbatch_size=microbatch_size
            )
        fell_back = [r for r in caplog.records if "jax.vmap" in r.getMessage()]
        assert len(fell_back) == (1 if cls is TokenClassifier else 0)
        mean, sq_mean, var = _loop_moments(model, batch, mask)
        chex.assert_trees_all_close(moments.mean, mean, rtol=1e-12, atol=1e-12)
        chex.assert_trees_all_close(moments.sq_mean, sq_mean, rtol=1e-12, atol=1e-12)
        chex.assert_trees_all_close(moments.var, var, rtol=1e-12, atol=1e-12)
        chex.assert_trees_all_close(nnx.to_pure_dict(grads), mean, rtol=1e-12, atol=1e-12)
        real = np.asarray(mask) > 0
        expected_loss = np.mean(np.asarray(losses(model, batch))[real])
        np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-12)
        assert float(moments.count) == 5.0
        assert moments.var["hidden"]["lam"].dtype == jnp.float64


def test_every_mode_gives_the_batch_gradient_and_the_head_its_mean():
    """``wrt`` beyond the adapters: the head gets the batch gradient as its mean in every mode; running
    estimates are not ready on their first step; ``batch`` adds the penalty to the mean."""
    model, batch = _model(Classifier), _batch()
    wrt = nnx.Any(jal.AdaLoRAParam, nnx.PathContains("base"))
    expected = nnx.to_pure_dict(nnx.grad(lambda m: jnp.mean(losses(m, batch)), argnums=nnx.DiffState(0, wrt))(model))
    running = jal.RunningMoments(model, wrt=wrt)
    for statistics in ("per_example", "batch", "running"):
        extra = {"running": running} if statistics == "running" else {}
        _, grads, moments = jal.value_grad_and_moments(losses, model, batch, statistics=statistics, wrt=wrt, **extra)
        chex.assert_trees_all_close(nnx.to_pure_dict(grads), expected, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(moments.mean, expected, rtol=1e-5, atol=1e-7)
        assert bool(moments.ready) is (statistics != "running")
    _, _, second = jal.value_grad_and_moments(losses, model, batch, statistics="running", wrt=wrt, running=running)
    assert bool(second.ready)
    penalty = lambda m: 0.1 * jal.orthogonal_regularization(m)  # noqa: E731
    _, grads, moments = jal.value_grad_and_moments(losses, model, batch, statistics="batch", penalty_fn=penalty)
    chex.assert_trees_all_close(moments.mean, nnx.to_pure_dict(grads))
    assert not np.allclose(moments.mean["out"]["Q"], expected["out"]["Q"])


def test_bad_arguments_say_what_was_expected():
    model, batch = _model(Classifier), _batch()
    with pytest.raises(ValueError, match="statistics='nope'"):
        jal.value_grad_and_moments(losses, model, batch, statistics="nope")
    with pytest.raises(ValueError, match="running=RunningMoments"):
        jal.value_grad_and_moments(losses, model, batch, statistics="running")
    with pytest.raises(ValueError, match="positive divisor"):
        jal.value_grad_and_moments(losses, model, batch, microbatch_size=4)
    with pytest.raises(ValueError, match=r"expected per-example losses of shape \(6,\)"):
        jal.value_grad_and_moments(lambda m, b: jnp.mean(losses(m, b)), model, batch)


def test_a_batch_sharded_over_devices_gives_the_same_moments():
    """tests/conftest.py gives the session 8 CPU devices: the moments' reductions become cross-device ones."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    model, batch = _model(Classifier), _batch(size=16)
    graphdef, state = nnx.split(model)

    @jax.jit
    def compute(state, batch):
        return jal.value_grad_and_moments(losses, nnx.merge(graphdef, state), batch)

    sharded = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    chex.assert_trees_all_close(compute(state, sharded), compute(state, batch), rtol=1e-5, atol=1e-7)

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_adalora.models.dropout import dropout, example_keys
from jax_adalora.stats import (
    per_example_moments,
    per_example_value_and_moments,
    running_moments,
    running_moments_init,
)


def _mlp_params(key, d_in=5, d_hidden=7, d_out=3):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (d_in, d_hidden)) * 0.5,
        "b1": jnp.zeros((d_hidden,)),
        "w2": jax.random.normal(k2, (d_hidden, d_out)) * 0.5,
        "lam": jax.random.normal(k3, (d_hidden,)),
    }


def _example_loss(params, example, key=None):
    """Cross-entropy of a small MLP for one example (no batch axis)."""
    h = jnp.tanh(example["x"] @ params["w1"] + params["b1"]) * params["lam"]
    if key is not None:
        h = dropout(h[None], 0.3, key[None], site=0)[0]
    logits = h @ params["w2"]
    return -jax.nn.log_softmax(logits)[example["y"]]


def _batch(key, n=8, d_in=5, n_classes=3):
    kx, ky = jax.random.split(key)
    return {"x": jax.random.normal(kx, (n, d_in)), "y": jax.random.randint(ky, (n,), 0, n_classes)}


def _loop_reference(params, batch):
    """Per-example gradients one at a time, reduced in numpy float64."""
    n = batch["y"].shape[0]
    grads = [jax.grad(_example_loss)(params, jax.tree.map(lambda a, i=i: a[i], batch)) for i in range(n)]
    stacked = {k: np.stack([np.asarray(g[k], np.float64) for g in grads]) for k in params}
    mean = {k: v.mean(0) for k, v in stacked.items()}
    sq_mean = {k: (v**2).mean(0) for k, v in stacked.items()}
    var = {k: sq_mean[k] - mean[k] ** 2 for k in params}
    return mean, sq_mean, var


def test_mean_equals_batch_gradient():
    params, batch = _mlp_params(jax.random.key(0)), _batch(jax.random.key(1))
    moments = jax.jit(per_example_moments, static_argnums=0)(_example_loss, params, batch)

    def batch_loss(p):
        return jnp.mean(jax.vmap(_example_loss, in_axes=(None, 0))(p, batch))

    chex.assert_trees_all_close(moments.mean, jax.grad(batch_loss)(params), rtol=1e-5, atol=1e-7)
    assert float(moments.count) == 8


def test_second_moments_equal_python_loop_in_float64():
    params, batch = _mlp_params(jax.random.key(2)), _batch(jax.random.key(3), n=6)
    moments = per_example_moments(_example_loss, params, batch)
    mean, sq_mean, var = _loop_reference(params, batch)
    for name in params:
        np.testing.assert_allclose(moments.mean[name], mean[name], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(moments.sq_mean[name], sq_mean[name], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(moments.var[name], var[name], rtol=1e-4, atol=1e-7)
        assert np.all(np.asarray(moments.var[name]) >= 0)


def test_mask_excludes_padding_rows():
    params, batch = _mlp_params(jax.random.key(4)), _batch(jax.random.key(5), n=8)
    mask = jnp.array([1, 1, 1, 1, 1, 0, 0, 0])
    loss, masked = per_example_value_and_moments(_example_loss, params, batch, mask=mask)
    real = jax.tree.map(lambda a: a[:5], batch)
    real_loss, exact = per_example_value_and_moments(_example_loss, params, real)
    chex.assert_trees_all_close(masked, exact, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss, real_loss, rtol=1e-6)
    assert float(masked.count) == 5


def test_dropout_per_example_keys_give_the_batch_gradient():
    """With one key per example, per-example gradients average to the batch gradient, dropout on."""
    params, batch = _mlp_params(jax.random.key(6)), _batch(jax.random.key(7), n=8)
    keys = example_keys(jax.random.key(42), jnp.arange(8))
    batch_with_keys = {**batch, "key": keys}

    def loss_one(p, ex):
        return _example_loss(p, ex, ex["key"])

    def batch_loss(p):
        h = jnp.tanh(batch["x"] @ p["w1"] + p["b1"]) * p["lam"]
        h = dropout(h, 0.3, keys, site=0)
        logits = h @ p["w2"]
        return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))

    moments = per_example_moments(loss_one, params, batch_with_keys)
    chex.assert_trees_all_close(moments.mean, jax.grad(batch_loss)(params), rtol=1e-5, atol=1e-7)
    # And dropout really is on: the deterministic gradient differs.
    plain = per_example_moments(_example_loss, params, batch)
    assert not np.allclose(plain.mean["w2"], moments.mean["w2"])


def test_sharded_batch_gives_the_same_moments():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (tests/conftest.py sets 8 virtual CPU devices)")
    n_dev = 8 if len(devices) >= 8 else 2
    mesh = Mesh(np.array(devices[:n_dev]), ("data",))
    params, batch = _mlp_params(jax.random.key(8)), _batch(jax.random.key(9), n=16)
    sharded = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    fn = jax.jit(per_example_moments, static_argnums=0)
    on_mesh = fn(_example_loss, params, sharded)
    single = fn(_example_loss, params, batch)
    chex.assert_trees_all_close(on_mesh, single, rtol=1e-5, atol=1e-7)


def test_running_moments_formula_against_python_loop():
    decay, batch_size = 0.8, 4
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 2)) for _ in range(5)]
    state = running_moments_init(jnp.zeros((3, 2)))
    m_ema = np.zeros((3, 2))
    u_ema = np.zeros((3, 2))
    for t, g in enumerate(grads, start=1):
        moments, state = running_moments(state, jnp.asarray(g, jnp.float32), batch_size=batch_size, decay=decay)
        m_ema = decay * m_ema + (1 - decay) * g
        u_ema = decay * u_ema + (1 - decay) * g**2
        c = 1 / (1 - decay**t)
        mean = m_ema * c
        var = batch_size * np.maximum(u_ema * c - mean**2, 0)
        np.testing.assert_allclose(moments.mean, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(moments.var, var, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(moments.sq_mean, mean**2 + var, rtol=1e-4, atol=1e-5)
        assert float(moments.count) == t


def test_running_moments_recover_population_moments():
    """Batch means of B draws from N(μ, σ²): the estimator should find μ, σ² and μ² + σ²."""
    mu, sigma, batch_size = np.array([0.5, -1.0, 0.0]), np.array([2.0, 0.5, 1.0]), 16
    rng = np.random.default_rng(1)
    state = running_moments_init(jnp.zeros(3))
    step = jax.jit(lambda s, g: running_moments(s, g, batch_size=batch_size, decay=0.995))
    for _ in range(3000):
        batch_mean = rng.normal(mu, sigma, size=(batch_size, 3)).mean(0)
        moments, state = step(state, jnp.asarray(batch_mean, jnp.float32))
    np.testing.assert_allclose(moments.mean, mu, atol=0.15)
    np.testing.assert_allclose(moments.var, sigma**2, rtol=0.3)
    np.testing.assert_allclose(moments.sq_mean, mu**2 + sigma**2, rtol=0.3)


def _probed_losses(probes, shared, params, batch):
    """Each example's loss with ``params + probes[i]`` for the probed leaves (a Python-free batched form)."""
    per_example = jax.tree.map(lambda p, d: p + d, {k: params[k] for k in probes}, probes)

    def one(own, example):
        return _example_loss({**own, **shared}, example)

    return jax.vmap(one)(per_example, batch)


def test_probes_give_the_exact_moments_and_shared_params_the_batch_gradient():
    from jax_adalora.stats import per_example_moments_of_probes

    params, batch = _mlp_params(jax.random.key(10)), _batch(jax.random.key(11), n=8)
    mask = jnp.array([1, 1, 1, 1, 1, 1, 0, 0])
    probes = {k: jnp.zeros((8,) + params[k].shape) for k in ("w1", "lam")}
    shared = {k: params[k] for k in ("b1", "w2")}

    loss, moments, shared_grad = jax.jit(per_example_moments_of_probes, static_argnums=0)(
        _probed_losses, probes, shared, params, batch, mask=mask
    )
    ref_loss, ref = per_example_value_and_moments(_example_loss, params, batch, mask=mask)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for k in probes:
        np.testing.assert_allclose(moments.mean[k], ref.mean[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(moments.sq_mean[k], ref.sq_mean[k], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(moments.var[k], ref.var[k], rtol=1e-4, atol=1e-7)
    for k in shared:
        np.testing.assert_allclose(shared_grad[k], ref.mean[k], rtol=1e-5, atol=1e-7)
    assert float(moments.count) == 6
    # The masked examples count for nothing: dropping them gives the same moments.
    real = jax.tree.map(lambda a: a[:6], batch)
    _, real_moments, _ = per_example_moments_of_probes(
        _probed_losses, jax.tree.map(lambda a: a[:6], probes), shared, params, real
    )
    chex.assert_trees_all_close(moments[:3], real_moments[:3], rtol=1e-5, atol=1e-8)


def test_variance_is_accurate_when_the_mean_dominates_the_spread():
    """Gradients ``c + ε_i`` with ``|c| / std(ε) = 1e4``: ``E[g²] - E[g]²`` cancels to rounding noise in
    float32; the two-pass variance must match a float64 loop to 1e-3 relative."""
    from jax_adalora.stats import per_example_moments_of_probes

    noise = np.random.default_rng(0).normal(size=(16, 6)) * 1e-3
    batch = {"x": jnp.asarray(noise, jnp.float32)}

    def loss(w, example):  # d/dw = 10 + x
        return jnp.sum(w * (10.0 + example["x"]))

    def probed_losses(probes, shared, batch):
        return jax.vmap(loss)(probes, batch) + 0.0 * jnp.sum(shared)  # w = 0 + probe

    expected = (10.0 + np.asarray(batch["x"], np.float64)).var(axis=0)
    moments = per_example_moments(loss, jnp.zeros(6), batch)
    np.testing.assert_allclose(moments.var, expected, rtol=1e-3)
    mask = jnp.array([1] * 12 + [0] * 4)
    _, probe_moments, _ = per_example_moments_of_probes(
        probed_losses, jnp.zeros((16, 6)), jnp.zeros(2), batch, mask=mask
    )
    np.testing.assert_allclose(probe_moments.var, (10.0 + noise[:12]).var(axis=0), rtol=1e-3)

"""The moment formulas of jax_adalora.stats (the entry point on models is tested in test_moments.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from jax_adalora.stats import moments_of_probe_gradients, running_moments, running_moments_init


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


def test_variance_is_accurate_when_the_mean_dominates_the_spread():
    """Gradients ``c + ε_i`` with ``|c| / std(ε) = 1e4``: ``E[g²] - E[g]²`` cancels to rounding noise in
    float32; the two-pass variance over the real examples must match a float64 loop to 1e-3 relative."""
    noise = np.random.default_rng(0).normal(size=(16, 6)) * 1e-3
    grads = 10.0 + noise  # each example's gradient
    weights = np.array([1.0] * 12 + [0.0] * 4)
    count = weights.sum()
    # What the probes' gradient holds after differentiating sum_b w_b loss_b / count: row b is w_b g_b / count.
    probe_grads = jnp.asarray(weights[:, None] * grads / count, jnp.float32)
    moments = moments_of_probe_gradients(probe_grads, jnp.asarray(weights, jnp.float32))
    np.testing.assert_allclose(moments.var, grads[:12].var(axis=0), rtol=1e-3)
    np.testing.assert_allclose(moments.mean, grads[:12].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(moments.sq_mean, (grads[:12] ** 2).mean(axis=0), rtol=1e-5)
    assert float(moments.count) == 12.0

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_adalora import scores
from jax_adalora.stats import Moments


def _triplet_tree(rng, d_out=5, r=3, d_in=4, paths=("a", "b")):
    return {
        p: {
            "P": rng.normal(size=(d_out, r)),
            "lam": rng.normal(size=(r,)),
            "Q": rng.normal(size=(r, d_in)),
        }
        for p in paths
    }


def _as_jax(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    params = _triplet_tree(rng)
    mean = _triplet_tree(rng)
    sq_mean = jax.tree.map(lambda m: m**2 + rng.uniform(0.1, 1.0, size=m.shape), mean)
    var = jax.tree.map(lambda s, m: s - m**2, sq_mean, mean)
    moments = Moments(_as_jax(mean), _as_jax(sq_mean), _as_jax(var), jnp.asarray(8.0))
    return params, mean, sq_mean, var, moments


@pytest.mark.parametrize(
    "name, reference",
    [
        ("sensitivity", lambda w, m, s, v: np.abs(w * m)),
        ("movement", lambda w, m, s, v: -w * m),
        ("fisher", lambda w, m, s, v: s),
        ("gsnr", lambda w, m, s, v: m**2 / (v + scores.DEFAULT_GSNR_EPS)),
        ("magnitude", lambda w, m, s, v: np.abs(w)),
        ("saliency", lambda w, m, s, v: 0.5 * w**2 * s),
        ("gsnr_magnitude", lambda w, m, s, v: np.abs(w) * m**2 / (v + scores.DEFAULT_GSNR_EPS)),
    ],
)
def test_element_scores_match_numpy_float64(inputs, name, reference):
    params, mean, sq_mean, var, moments = inputs
    got = scores.get(name)(_as_jax(params), moments)
    want = jax.tree.map(reference, params, mean, sq_mean, var)
    for path in params:
        for leaf in ("P", "lam", "Q"):
            np.testing.assert_allclose(got[path][leaf], want[path][leaf], rtol=2e-5, atol=1e-7)


def test_gsnr_is_finite_at_zero_variance():
    mean = {"a": jnp.array([0.0, 1e-3, -2.0, 5.0])}
    moments = Moments(mean, jax.tree.map(jnp.square, mean), {"a": jnp.zeros(4)}, jnp.asarray(1.0))
    got = scores.gsnr(mean, moments)["a"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np.asarray(mean["a"]) ** 2 / scores.DEFAULT_GSNR_EPS, rtol=1e-5)
    assert float(got[0]) == 0.0


def test_unknown_score_is_rejected():
    with pytest.raises(ValueError, match="unknown score 'no_such_score': expected one of .*'saliency'"):
        scores.get("no_such_score")


def test_what_each_score_reads_decides_the_statistics():
    assert [n for n in scores.score_names() if scores.reads_moments(n)] == [
        "fisher",
        "gsnr",
        "saliency",
        "gsnr_magnitude",
    ]
    assert {"sensitivity", "movement", "magnitude"} <= set(scores.score_names())


def test_a_registered_score_is_found_by_name_and_a_name_is_not_taken_twice(inputs):
    params, mean, _, _, moments = inputs

    def abs_gradient(params, moments):
        return jax.tree.map(jnp.abs, moments.mean)

    scores.register_score("test_abs_gradient", abs_gradient, reads="gradient")
    scores.register_score("test_abs_gradient", abs_gradient, reads="gradient")  # the same again: a no-op
    got = scores.get("test_abs_gradient")(_as_jax(params), moments)
    np.testing.assert_allclose(got["a"]["P"], np.abs(mean["a"]["P"]), rtol=1e-6)
    assert not scores.reads_moments("test_abs_gradient")
    with pytest.raises(ValueError, match="'test_abs_gradient' is already registered to another function"):
        scores.register_score("test_abs_gradient", lambda p, m: p, reads="gradient")
    with pytest.raises(ValueError, match="reads='everything', expected one of"):
        scores.register_score("test_other", abs_gradient, reads="everything")


def test_adalora_smoothing_matches_the_reference_loop():
    rng = np.random.default_rng(1)
    series = [rng.normal(size=(3, 4)) for _ in range(6)]
    beta1, beta2 = 0.85, 0.7
    state = scores.smoothing_init(jnp.zeros((3, 4)))
    ema = np.zeros((3, 4))
    unc = np.zeros((3, 4))
    for s in series:
        state = scores.smooth("adalora", state, jnp.asarray(s, jnp.float32), beta1=beta1, beta2=beta2)
        ema = beta1 * ema + (1 - beta1) * s
        unc = beta2 * unc + (1 - beta2) * np.abs(s - ema)  # uses the updated ema
    np.testing.assert_allclose(scores.smoothed_score("adalora", state), ema * unc, rtol=1e-5, atol=1e-7)

    ema_state = scores.smoothing_init(jnp.zeros((3, 4)))
    plain = np.zeros((3, 4))
    for s in series:
        ema_state = scores.smooth("ema", ema_state, jnp.asarray(s, jnp.float32), beta1=beta1)
        plain = beta1 * plain + (1 - beta1) * s
    np.testing.assert_allclose(scores.smoothed_score("ema", ema_state), plain, rtol=1e-5, atol=1e-7)

    none_state = scores.smooth("none", scores.smoothing_init(jnp.zeros((3, 4))), jnp.asarray(series[-1]))
    np.testing.assert_allclose(scores.smoothed_score("none", none_state), series[-1], rtol=1e-6)


def test_triplet_importance_reduces_the_right_axes():
    """P is (d_out, r): mean over rows; Q is (r, d_in): mean over columns. d_out != d_in != r."""
    rng = np.random.default_rng(2)
    element = _triplet_tree(rng, d_out=7, r=3, d_in=5)
    got = scores.triplet_importance(_as_jax(element))
    for path, s in element.items():
        want = np.array([s["lam"][i] + np.mean(s["P"][:, i]) + np.mean(s["Q"][i, :]) for i in range(3)], np.float64)
        assert got[path].shape == (3,)
        np.testing.assert_allclose(got[path], want, rtol=1e-5)


def test_sum_smoothing_accumulates_every_step():
    state = scores.smoothing_init({"a": jnp.zeros(3)})
    for values in ([1.0, -2.0, 0.5], [0.5, 1.0, 0.0], [-1.0, 4.0, 2.0]):
        state = scores.smooth("sum", state, {"a": jnp.asarray(values)})
    np.testing.assert_allclose(scores.smoothed_score("sum", state)["a"], [0.5, 3.0, 2.5], rtol=1e-6)


def test_pooled_moments_equal_the_moments_of_all_examples_in_float64():
    """Batches of 8, 5 and 8 examples (one with padding), pooled one by one with Chan's update: the mean, the
    population variance and E[g²] of all 21 examples at once, to float64 rounding; GSNR read from the pool."""
    from jax_adalora.stats import moments_of_per_example_gradients

    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        batches = [rng.normal(1.5, 2.0, size=(8, 3, 2)) for _ in range(3)]
        weights = [np.ones(8), np.r_[np.ones(5), np.zeros(3)], np.ones(8)]
        state = scores.pooled_init({"w": jnp.zeros((3, 2), jnp.float64)})
        state = state._replace(
            count=jnp.zeros((), jnp.float64), m2=jax.tree.map(lambda x: x.astype(jnp.float64), state.m2)
        )
        for g, w in zip(batches, weights, strict=True):
            state = scores.pool(state, moments_of_per_example_gradients({"w": jnp.asarray(g)}, jnp.asarray(w)))
        everything = np.concatenate([g[w > 0] for g, w in zip(batches, weights, strict=True)])
        pooled = scores.pooled_moments(state, with_second=True)
        assert float(pooled.count) == 21
        np.testing.assert_allclose(pooled.mean["w"], everything.mean(0), rtol=1e-12)
        np.testing.assert_allclose(pooled.var["w"], everything.var(0), rtol=1e-12)
        np.testing.assert_allclose(pooled.sq_mean["w"], (everything**2).mean(0), rtol=1e-12)
        gsnr = scores.gsnr({"w": jnp.zeros((3, 2))}, pooled)["w"]
        np.testing.assert_allclose(gsnr, everything.mean(0) ** 2 / (everything.var(0) + 1e-12), rtol=1e-12)

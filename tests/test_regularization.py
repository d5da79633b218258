import jax
import jax.numpy as jnp
import numpy as np

from jax_adalora.regularization import orthogonal_regularization


def test_orthogonal_regularization_equals_numpy_mean_of_frobenius_norms():
    rng = np.random.default_rng(0)
    triplets = {
        p: {"P": rng.normal(size=(d_out, 3)), "lam": np.zeros(3), "Q": rng.normal(size=(3, d_in))}
        for p, d_out, d_in in (("a", 5, 4), ("b", 7, 6))
    }
    norms = []
    for t in triplets.values():
        norms.append(np.linalg.norm(t["Q"] @ t["Q"].T - np.eye(3)))
        norms.append(np.linalg.norm(t["P"].T @ t["P"] - np.eye(3)))
    got = orthogonal_regularization(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), triplets))
    np.testing.assert_allclose(got, np.mean(norms), rtol=1e-5)


def test_orthonormal_factors_have_zero_penalty_and_no_adapters_give_zero():
    q = jnp.eye(3, 5)
    p = jnp.eye(6, 3)
    assert float(orthogonal_regularization({"a": {"P": p, "lam": jnp.ones(3), "Q": q}})) < 1e-6
    assert float(orthogonal_regularization({})) == 0.0


def _random_triplets(dtype, seed=0):
    """Near-orthonormal factors, as training keeps them: the deviations from I are what the penalty measures."""
    rng = np.random.default_rng(seed)
    triplets = {}
    for name, d_out, d_in, r in (("a", 64, 48, 8), ("b", 96, 32, 12)):
        q = np.linalg.qr(rng.normal(size=(d_in, r)))[0].T + 0.01 * rng.normal(size=(r, d_in))
        p = np.linalg.qr(rng.normal(size=(d_out, r)))[0] + 0.01 * rng.normal(size=(d_out, r))
        triplets[name] = {"P": jnp.asarray(p, dtype), "lam": jnp.zeros(r, dtype), "Q": jnp.asarray(q, dtype)}
    return triplets


def _numpy_penalty(triplets) -> float:
    norms = []
    for t in triplets.values():
        q, p = np.asarray(t["Q"], np.float64), np.asarray(t["P"], np.float64)
        eye = np.eye(q.shape[0])
        norms += [np.linalg.norm(q @ q.T - eye), np.linalg.norm(p.T @ p - eye)]
    return float(np.mean(norms))


def test_bfloat16_factors_give_the_float32_penalty_of_their_values():
    """bf16 factors are cast to float32 before the Gram products: the penalty is the float64 value of the bf16
    numbers to float32 accuracy (rtol 1e-5), and float32 factors give the same as before (rtol 1e-6)."""
    bf16 = _random_triplets(jnp.bfloat16)
    got = orthogonal_regularization(bf16)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), _numpy_penalty(bf16), rtol=1e-5)
    as_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), bf16)
    np.testing.assert_allclose(float(got), float(orthogonal_regularization(as_f32)), rtol=1e-6)
    f32 = _random_triplets(jnp.float32)
    np.testing.assert_allclose(float(orthogonal_regularization(f32)), _numpy_penalty(f32), rtol=1e-5)


def test_the_gram_products_ask_for_full_float32_precision():
    """Off CPU the default matmul precision is a single bf16 pass (TPU) or TF32 (GPU); the lowered program must
    request HIGHEST, which CPU ignores and accelerators honour."""
    hlo = jax.jit(orthogonal_regularization).lower(_random_triplets(jnp.bfloat16)).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert len(dots) == 4  # Q Qᵀ and Pᵀ P for each of the two adapters
    assert all("HIGHEST" in line for line in dots), dots

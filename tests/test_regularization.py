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

"""Differentiating in microbatches gives the whole batch's value and gradients."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_adalora.microbatch import value_and_grad_in_microbatches

BATCH = 12


def _problem(seed: int = 0):
    """A shared weight matrix, per-example offsets of it (as probes are), and weighted squared errors."""
    rng = np.random.default_rng(seed)
    shared = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.asarray(rng.normal(size=2), jnp.float32)}
    per_example = jnp.asarray(rng.normal(size=(BATCH, 3, 2)) * 0.1, jnp.float32)
    batch = {
        "x": jnp.asarray(rng.normal(size=(BATCH, 3)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(BATCH, 2)), jnp.float32),
        "weight": jnp.asarray(rng.integers(0, 2, BATCH), jnp.float32).at[0].set(1.0),
    }
    count = float(np.maximum(np.asarray(batch["weight"]).sum(), 1.0))

    def total(shared, per_example, chunk):
        w = shared["w"][None] + per_example  # (b, 3, 2): each example's own weights
        prediction = jnp.einsum("bi,bio->bo", chunk["x"], w) + shared["b"]
        return jnp.sum(chunk["weight"] * jnp.sum(jnp.square(prediction - chunk["y"]), axis=-1)) / count

    return total, shared, per_example, batch, count


def _float64_reference(shared, per_example, batch, count):
    """The value and both gradients written out in numpy float64, example by example."""
    w_shared, b = (np.asarray(shared[k], np.float64) for k in ("w", "b"))
    value, grad_w, grad_b = 0.0, np.zeros_like(w_shared), np.zeros_like(b)
    per_example_grads = np.zeros(per_example.shape)
    for i in range(BATCH):
        x, y, weight = (np.asarray(batch[k][i], np.float64) for k in ("x", "y", "weight"))
        residual = x @ (w_shared + np.asarray(per_example[i], np.float64)) + b - y
        value += weight * np.sum(residual**2) / count
        d_prediction = 2 * weight * residual / count
        per_example_grads[i] = np.outer(x, d_prediction)
        grad_w += per_example_grads[i]
        grad_b += d_prediction
    return value, {"w": grad_w, "b": grad_b}, per_example_grads


@pytest.mark.parametrize("microbatch_size", [None, 0, 1, 3, 4, BATCH])
def test_microbatches_give_the_value_and_gradients_of_a_float64_loop(microbatch_size):
    total, shared, per_example, batch, count = _problem()
    value, (shared_grad, per_example_grad) = jax.jit(
        lambda s, p, b: value_and_grad_in_microbatches(total, s, p, b, microbatch_size)
    )(shared, per_example, batch)
    want_value, want_shared, want_per_example = _float64_reference(shared, per_example, batch, count)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for name in ("w", "b"):
        np.testing.assert_allclose(shared_grad[name], want_shared[name], rtol=1e-5, atol=1e-6)
    chex.assert_shape(per_example_grad, (BATCH, 3, 2))
    np.testing.assert_allclose(per_example_grad, want_per_example, rtol=1e-5, atol=1e-6)  # rows in the batch's order


def test_without_per_example_parameters_only_the_shared_gradient_comes_back():
    total, shared, per_example, batch, _ = _problem()

    def total_without(shared, _, chunk):
        return total(shared, jnp.zeros((chunk["x"].shape[0], 3, 2)), chunk)

    value, (shared_grad, per_example_grad) = value_and_grad_in_microbatches(total_without, shared, None, batch, 4)
    whole_value, whole_grad = jax.value_and_grad(total_without)(shared, None, batch)
    assert per_example_grad is None
    np.testing.assert_allclose(value, whole_value, rtol=1e-6)
    chex.assert_trees_all_close(shared_grad, whole_grad, rtol=1e-5, atol=1e-7)


def test_a_batch_sharded_over_devices_gives_the_same_result_in_microbatches():
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (tests/conftest.py sets 8 virtual CPU devices)")
    mesh = Mesh(np.array(devices[:2]), ("data",))
    total, shared, per_example, batch, _ = _problem(1)
    by_example = NamedSharding(mesh, PartitionSpec("data"))
    fn = jax.jit(lambda s, p, b: value_and_grad_in_microbatches(total, s, p, b, 6))
    on_mesh = fn(shared, jax.device_put(per_example, by_example), jax.device_put(batch, by_example))
    single = fn(shared, per_example, batch)
    chex.assert_trees_all_close(on_mesh, single, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("microbatch_size", [5, -2])
def test_a_size_that_does_not_divide_the_batch_is_refused(microbatch_size):
    total, shared, per_example, batch, _ = _problem()
    with pytest.raises(
        ValueError, match=rf"microbatch_size = {microbatch_size} must be a positive divisor of the batch size 12"
    ):
        value_and_grad_in_microbatches(total, shared, per_example, batch, microbatch_size)


def test_batch_leaves_with_different_leading_axes_are_refused():
    total, shared, per_example, batch, _ = _problem()
    batch = {**batch, "y": batch["y"][:5]}
    with pytest.raises(ValueError, match=r"same leading \(example\) axis; got leading sizes \['12', '5'\]"):
        value_and_grad_in_microbatches(total, shared, per_example, batch, 4)

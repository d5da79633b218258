"""Adapters on layers stacked with nnx.vmap and run with nnx.scan, against the unrolled twin with the same weights."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jax_adalora as jal
from jax_adalora.adapters import get_triplets, set_triplets

L, B, T, D, C = 3, 6, 2, 6, 3
NAMES = ("q", "e")


class Block(nnx.Module):
    def __init__(self, dtype, rngs):
        self.q = nnx.Linear(D, D, param_dtype=dtype, rngs=rngs)
        self.e = nnx.Einsum("BTD,DNH->BTNH", (D, 2, 3), (2, 3), param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return x + jnp.tanh(self.q(x)) + 0.5 * jnp.tanh(self.e(x)).reshape(x.shape)


class Stacked(nnx.Module):
    """L blocks created under nnx.vmap (kernels (L, ...)) and run with nnx.scan."""

    def __init__(self, dtype, rngs):
        @nnx.split_rngs(splits=L)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(dtype, rngs)

        self.layers = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x, layer):
            return layer(x)

        return jnp.mean(run(x, self.layers), axis=1)[:, :C]


class Unrolled(nnx.Module):
    """The same L blocks as separate modules, run in a Python loop."""

    def __init__(self, stacked: Stacked, dtype):
        self.layers = nnx.List([Block(dtype, nnx.Rngs(i)) for i in range(L)])
        for i, block in enumerate(self.layers):
            for name in NAMES:
                for weight in ("kernel", "bias"):
                    getattr(getattr(block, name), weight).set_value(getattr(getattr(stacked.layers, name), weight)[i])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return jnp.mean(x, axis=1)[:, :C]


def losses(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])


def _unstacked(tree: dict) -> dict:
    """``{"layers.q": (L, ...)}`` as ``{"layers.0.q": ..., ...}``, the unrolled twin's paths."""
    return {
        f"layers.{i}.{path.split('.')[-1]}": jax.tree.map(lambda a, i=i: a[i], t)
        for path, t in tree.items()
        for i in range(L)
    }


def _twins(dtype=jnp.float32, config=None):
    config = config or jal.AdaLoRAConfig(r_init=3, r_target=1)
    stacked = Stacked(dtype, nnx.Rngs(0))
    unrolled = Unrolled(stacked, dtype)
    spec = jal.inject(stacked, config, targets=r"layers\.(q|e)", rngs=nnx.Rngs(1))
    assert spec == {"layers.e": 3, "layers.q": 3}
    jal.inject(unrolled, config, targets=r"layers\.\d\.(q|e)", rngs=nnx.Rngs(1))
    triplets = get_triplets(stacked)
    for i, t in enumerate(triplets.values()):  # λ = 0 at init would zero P's and Q's gradients
        t["lam"] = jax.random.normal(jax.random.key(i), t["lam"].shape, dtype)
    set_triplets(stacked, triplets)
    set_triplets(unrolled, _unstacked(triplets))
    return stacked, unrolled


def _batch(dtype=jnp.float32, seed=7):
    x = jax.random.normal(jax.random.key(seed), (B, T, D), dtype)
    return {"x": x, "y": jnp.argmax(x[:, 0, :C], axis=-1)}


def _stack_layers(tree: dict) -> dict:
    """A pure-dict tree of the unrolled twin with its layers stacked: the stacked model's layout."""
    return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *(tree["layers"][i] for i in range(L)))}


def test_stacked_factors_lead_with_the_layer_axis_and_the_forward_merge_and_penalty_equal_the_unrolled():
    stacked, unrolled = _twins()
    assert stacked.layers.q.P.shape == (L, D, 3) and stacked.layers.q.lam.shape == (L, 3)
    assert stacked.layers.e.Q.shape == (L, 3, D) and stacked.layers.e.mask.shape == (L, 3)
    x = _batch()["x"]
    chex.assert_trees_all_close(stacked(x), unrolled(x), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jal.merge(stacked)(x), stacked(x), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        jal.orthogonal_regularization(stacked), jal.orthogonal_regularization(unrolled), rtol=1e-6
    )
    with pytest.raises(ValueError, match="one layer at a time: call it under nnx.scan"):
        stacked.layers.q(x)


def test_moments_equal_the_unrolled_twins_in_every_mode():
    """Under x64 to 1e-12: per-example moments through the probes (one batch, and microbatches), running and batch
    statistics, and the gradients."""
    with jax.enable_x64(True):
        stacked, unrolled = _twins(jnp.float64)
        batch = _batch(jnp.float64)
        got = {}
        for name, model in (("stacked", stacked), ("unrolled", unrolled)):
            results = [jal.value_grad_and_moments(losses, model, batch, microbatch_size=m) for m in (None, 3)]
            running = jal.RunningMoments(model)
            for _ in range(2):
                stepped = jal.value_grad_and_moments(losses, model, batch, statistics="running", running=running)
            results += [stepped, jal.value_grad_and_moments(losses, model, batch, statistics="batch")]
            got[name] = [(loss, nnx.to_pure_dict(grads), tuple(moments[:3])) for loss, grads, moments in results]
        got["unrolled"] = [
            (loss, _stack_layers(grads), tuple(None if m is None else _stack_layers(m) for m in moments))
            for loss, grads, moments in got["unrolled"]
        ]
        chex.assert_trees_all_close(got["stacked"], got["unrolled"], rtol=1e-12, atol=1e-12)
        assert float(jnp.min(jnp.max(jnp.abs(got["stacked"][0][2][2]["layers"]["q"]["lam"]), axis=-1))) > 0


def test_every_layer_is_its_own_matrix_in_the_budget_ranks_equal_the_unrolled_and_files_round_trip(tmp_path):
    with jax.enable_x64(True):
        config = jal.AdaLoRAConfig(r_init=3, r_target=1, score="gsnr", t_init=2, t_final=3, delta_t=1)
        stacked, unrolled = _twins(jnp.float64, config)
        patterns = [_train(model, config) for model in (stacked, unrolled)]
        stacked_pattern, unrolled_pattern = patterns[0][0], patterns[1][0]
        assert sorted(stacked_pattern) == sorted(f"layers.{n}[{i}]" for n in NAMES for i in range(L))
        renamed = {
            re.sub(r"layers\.(\w+)\[(\d+)\]", r"layers.\2.\1", path): kept for path, kept in stacked_pattern.items()
        }  # "layers.q[1]" -> "layers.1.q"
        assert renamed == unrolled_pattern
        assert sum(sum(kept) for kept in stacked_pattern.values()) == config.r_target * len(NAMES) * L
        assert len({tuple(kept) for kept in stacked_pattern.values()}) > 1  # the layers were ranked apart

        file = jal.save_adapters(tmp_path / "stacked.safetensors", stacked, rank_pattern=stacked_pattern)
        fresh, _ = _twins(jnp.float64, config)
        jal.load_adapters(file, fresh)
        x = _batch(jnp.float64)["x"]
        np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(stacked(x)))
        np.testing.assert_array_equal(np.asarray(fresh.layers.q.mask[1] > 0), stacked_pattern["layers.q[1]"])


def _train(model, config, steps=10):
    tx = optax.chain(optax.adamw(3e-2), jal.rank_allocator(config, total_steps=steps))
    optimizer = nnx.Optimizer(model, tx, wrt=jal.AdaLoRAParam)

    @nnx.jit
    def step(model, optimizer, batch):
        _, grads, moments = jal.value_grad_and_moments(losses, model, batch)
        optimizer.update(model, grads, moments=moments)

    for i in range(steps):
        step(model, optimizer, _batch(jnp.float64, seed=i))
    return jal.rank_pattern(optimizer), optimizer

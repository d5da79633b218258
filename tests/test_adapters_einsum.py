"""Adapters on nnx.Einsum against an nnx.Linear twin with the same weights: forward, moments, merge, ranks."""

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jax_adalora as jal
from jax_adalora.adapters import AdaLoRAEinsum, UnadaptableLayerError, einsum_layout, get_triplets, set_triplets

B, T, D, N, H, C = 5, 3, 6, 2, 3, 4


class EinsumNet(nnx.Module):
    """Attention-style projections: ``q`` maps D to heads (N, H) and writes its output head-major, ``o`` contracts
    the two head axes back; ``leading`` contracts the input's leading axis (the probes cannot apply)."""

    def __init__(self, dtype, rngs, leading=False):
        self.leading = leading
        equation = "DBT,NDH->BNTH" if leading else "BTD,NDH->BNTH"
        self.q = nnx.Einsum(equation, (N, D, H), (N, H), param_dtype=dtype, rngs=rngs)
        self.o = nnx.Einsum("BNTH,NHC->BTC", (N, H, C), (C,), param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.q(jnp.transpose(x, (2, 0, 1)) if self.leading else x))  # (B, N, T, H)
        return jnp.mean(self.o(h), axis=1)


class LinearNet(nnx.Module):
    """The same function with nnx.Linear layers: kernels flattened to (D, N·H) and (N·H, C)."""

    def __init__(self, twin: EinsumNet, dtype):
        rngs = nnx.Rngs(0)
        self.q = nnx.Linear(D, N * H, param_dtype=dtype, rngs=rngs)
        self.o = nnx.Linear(N * H, C, param_dtype=dtype, rngs=rngs)
        self.q.kernel.set_value(jnp.transpose(twin.q.kernel[...], (1, 0, 2)).reshape(D, N * H))
        self.q.bias.set_value(twin.q.bias[...].reshape(N * H))
        self.o.kernel.set_value(twin.o.kernel[...].reshape(N * H, C))
        self.o.bias.set_value(twin.o.bias[...])

    def __call__(self, x):
        h = jnp.tanh(self.q(x)).reshape(x.shape[:2] + (N, H))  # (B, T, N, H)
        return jnp.mean(self.o(h.reshape(x.shape[:2] + (N * H,))), axis=1)


def losses(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])


def _twins(dtype=jnp.float32, leading=False, config=None):
    config = config or jal.AdaLoRAConfig(r_init=3, r_target=2)
    einsum = EinsumNet(dtype, nnx.Rngs(0), leading)
    linear = LinearNet(einsum, dtype)
    for model in (einsum, linear):
        jal.inject(model, config, targets="q|o", rngs=nnx.Rngs(1))
    triplets = get_triplets(einsum)
    for i, t in enumerate(triplets.values()):  # λ = 0 at init would zero P's and Q's gradients
        t["lam"] = jax.random.normal(jax.random.key(i), t["lam"].shape, dtype)
    set_triplets(einsum, triplets)
    set_triplets(linear, triplets)
    return einsum, linear


def _batch(dtype=jnp.float32):
    return {"x": jax.random.normal(jax.random.key(7), (B, T, D), dtype), "y": jnp.arange(B) % C}


def test_einsum_axes_flatten_to_one_matrix_and_the_forward_equals_the_linear_twin():
    einsum, linear = _twins()
    assert isinstance(einsum.q, AdaLoRAEinsum) and einsum.q.P.shape == (N * H, 3) and einsum.q.Q.shape == (3, D)
    assert einsum.o.P.shape == (C, 3) and einsum.o.Q.shape == (3, N * H)
    x = _batch()["x"]
    chex.assert_trees_all_close(einsum(x), linear(x), rtol=1e-5, atol=1e-6)
    merged = jal.merge(einsum)
    assert type(merged.q) is nnx.Einsum
    chex.assert_trees_all_close(merged(x), einsum(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("leading", [False, True])
def test_moments_equal_the_linear_twins_in_every_mode(leading, caplog):
    """Under x64 to 1e-12: exact per-example moments (probes, or the vmap fallback when the einsum contracts the
    input's leading axis, which says so in one line), running and batch statistics, and the gradients."""
    with jax.enable_x64(True):
        einsum, linear = _twins(jnp.float64, leading)
        batch = _batch(jnp.float64)
        got = {}
        for name, model in (("einsum", einsum), ("linear", linear)):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="jax_adalora.moments"):
                per_example = jal.value_grad_and_moments(losses, model, batch)
            fell_back = [r for r in caplog.records if "jax.vmap" in r.getMessage()]
            assert len(fell_back) == (1 if leading and name == "einsum" else 0)
            running = jal.RunningMoments(model)
            for _ in range(2):
                stepped = jal.value_grad_and_moments(losses, model, batch, statistics="running", running=running)
            in_batch = jal.value_grad_and_moments(losses, model, batch, statistics="batch")
            got[name] = [
                (loss, nnx.to_pure_dict(grads), moments[:3])
                for loss, grads, moments in (per_example, stepped, in_batch)
            ]
        chex.assert_trees_all_close(got["einsum"], got["linear"], rtol=1e-12, atol=1e-12)
        assert float(jnp.max(jnp.abs(got["einsum"][0][2][2]["q"]["lam"]))) > 0  # a real per-example variance


def test_ranks_after_training_equal_the_linear_twins():
    with jax.enable_x64(True):
        config = jal.AdaLoRAConfig(r_init=3, r_target=1, score="gsnr", t_init=2, t_final=2, delta_t=1)
        patterns = [_train(model, config) for model in _twins(jnp.float64, config=config)]
    assert patterns[0] == patterns[1]
    assert sum(sum(kept) for kept in patterns[0].values()) == 2  # r_target x 2 matrices


def _train(model, config, steps=8):
    tx = optax.chain(optax.adamw(1e-2), jal.rank_allocator(config, total_steps=steps))
    optimizer = nnx.Optimizer(model, tx, wrt=jal.AdaLoRAParam)

    @nnx.jit
    def step(model, optimizer, batch):
        _, grads, moments = jal.value_grad_and_moments(losses, model, batch)
        optimizer.update(model, grads, moments=moments)

    for i in range(steps):
        x = jax.random.normal(jax.random.key(i), (B, T, D), jnp.float64)
        step(model, optimizer, {"x": x, "y": jnp.argmax(x[:, 0, :C], axis=-1)})
    return jal.rank_pattern(optimizer)


@pytest.mark.parametrize(
    "equation, kernel_ndim, why",
    [
        ("BTNH,NHD->BTND", 3, "in the input and the output"),
        ("BTD,DNH->BTN", 3, "summed on their own"),
        ("BTD,DH->BH", 2, "summed without the kernel"),
        ("BTD,DD->BTD", 2, "repeat"),
        ("...D,...DH->...H", 2, "ellipsis in the kernel"),
    ],
)
def test_einsum_equations_without_one_matrix_are_refused(equation, kernel_ndim, why):
    with pytest.raises(UnadaptableLayerError, match=why):
        einsum_layout(equation, kernel_ndim)


def test_an_ellipsis_einsum_is_adapted_in_its_own_axis_layout():
    model = nnx.Sequential(nnx.Einsum("...D,DNH->...HN", (D, N, H), rngs=nnx.Rngs(0)))
    jal.inject(model, jal.AdaLoRAConfig(r_init=2, r_target=1), targets=r"layers\.0", rngs=nnx.Rngs(1))
    adapter = model.layers[0]
    adapter.lam.set_value(jnp.asarray([0.5, -1.0]))
    x = jax.random.normal(jax.random.key(0), (2, 3, D))
    kernel = np.asarray(adapter.base.kernel[...]) + np.asarray(adapter.delta_kernel())
    np.testing.assert_allclose(model(x), np.einsum("...d,dnh->...hn", x, kernel), rtol=1e-5, atol=1e-6)
    # An equation given at the call: the same kernel axes contracted and produced, another output order.
    np.testing.assert_allclose(adapter(x, "...D,DNH->...NH"), np.einsum("...d,dnh->...nh", x, kernel), atol=1e-5)
    with pytest.raises(ValueError, match="must stay the same"):
        adapter(jnp.ones((2, N)), "...N,DNH->...DH")

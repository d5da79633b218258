import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_adalora.adapters import (
    AdaLoRALinear,
    AdaLoRAParam,
    adapter_modules,
    get_triplets,
    inject_adapters,
    linear_paths,
    merge_adapters,
    set_masks,
    set_triplets,
)
from jax_adalora.config import AdaLoRAConfig


class _Block(nnx.Module):
    def __init__(self, d, *, rngs):
        self.query = nnx.Linear(d, d, rngs=rngs)
        self.up = nnx.Linear(d, 2 * d, rngs=rngs)
        self.down = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, x):
        return x + self.down(jax.nn.gelu(self.up(self.query(x))))


class _Toy(nnx.Module):
    def __init__(self, d=6, n=2, *, rngs):
        self.layers = nnx.List([_Block(d, rngs=rngs) for _ in range(n)])
        self.head = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


TARGETS = r"layers\.\d+\.(query|up|down)"


def _adapted(seed=0, r=4):
    model = _Toy(rngs=nnx.Rngs(seed))
    config = AdaLoRAConfig(r_init=r, r_target=2, alpha=8.0, targets=TARGETS)
    spec = inject_adapters(model, config, rngs=nnx.Rngs(seed + 1))
    return model, spec, config


def _randomise_lambda(model, seed=3):
    triplets = get_triplets(model)
    key = jax.random.key(seed)
    for t in triplets.values():
        key, sub = jax.random.split(key)
        t["lam"] = jax.random.normal(sub, t["lam"].shape)
    set_triplets(model, triplets)
    return triplets


def test_injection_matches_regex_and_returns_the_rank_spec():
    model, spec, _ = _adapted()
    assert sorted(spec) == sorted(f"layers.{i}.{n}" for i in range(2) for n in ("query", "up", "down"))
    assert set(spec.values()) == {4}
    assert "head" in linear_paths(model) and "layers.0.query" not in linear_paths(model)
    modules = adapter_modules(model)
    assert modules["layers.0.up"].P.shape == (12, 4) and modules["layers.0.up"].Q.shape == (4, 6)
    assert modules["layers.0.up"].lam.shape == (4,)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, AdaLoRAParam)))
    assert n_params == sum(4 * (m.base.in_features + m.base.out_features + 1) for m in modules.values())


def test_adapted_model_at_lambda_zero_equals_base():
    base = _Toy(rngs=nnx.Rngs(0))
    model, _, _ = _adapted(seed=0)
    x = jax.random.normal(jax.random.key(1), (5, 6))
    chex.assert_trees_all_close(model(x), base(x), rtol=1e-6, atol=1e-6)


def test_adapter_output_equals_float64_formula():
    model, _, config = _adapted()
    _randomise_lambda(model)
    adapter = adapter_modules(model)["layers.1.up"]
    x = np.asarray(jax.random.normal(jax.random.key(2), (3, 6)), np.float64)
    w = np.asarray(adapter.base.kernel[...], np.float64)
    b = np.asarray(adapter.base.bias[...], np.float64)
    p, lam, q = (np.asarray(v[...], np.float64) for v in (adapter.P, adapter.lam, adapter.Q))
    want = x @ w + b + ((x @ q.T) * lam) @ p.T * (config.alpha / config.r_init)
    np.testing.assert_allclose(adapter(jnp.asarray(x, jnp.float32)), want, rtol=1e-5, atol=1e-5)


def test_merge_equals_adapter_output():
    model, _, _ = _adapted()
    _randomise_lambda(model)
    set_masks(model, {"layers.0.query": jnp.array([1.0, 0.0, 1.0, 0.0])})
    merged = merge_adapters(model)
    assert not adapter_modules(merged) and adapter_modules(model)
    x = jax.random.normal(jax.random.key(4), (7, 6))
    chex.assert_trees_all_close(merged(x), model(x), rtol=1e-5, atol=1e-5)


def test_mask_zero_removes_the_adapter():
    base = _Toy(rngs=nnx.Rngs(0))
    model, spec, _ = _adapted(seed=0)
    _randomise_lambda(model)
    x = jax.random.normal(jax.random.key(5), (2, 6))
    assert not np.allclose(model(x), base(x))
    set_masks(model, {path: jnp.zeros(r) for path, r in spec.items()})
    chex.assert_trees_all_close(model(x), base(x), rtol=1e-6, atol=1e-6)


def test_triplets_round_trip_and_functional_use_under_jit():
    model, _, _ = _adapted()
    triplets = _randomise_lambda(model)
    chex.assert_trees_all_equal(get_triplets(model), triplets)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, triplets, x):
        m = nnx.merge(graphdef, state)
        set_triplets(m, triplets)
        return m(x)

    x = jax.random.normal(jax.random.key(6), (2, 6))
    chex.assert_trees_all_close(forward(state, triplets, x), model(x), rtol=1e-6, atol=1e-6)
    zeroed = jax.tree.map(jnp.zeros_like, triplets)
    base = _Toy(rngs=nnx.Rngs(0))
    chex.assert_trees_all_close(forward(state, zeroed, x), base(x), rtol=1e-6, atol=1e-6)


def test_targets_matching_nothing_list_the_available_paths():
    model = _Toy(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"targets='attention.*nothing' matched no nnx.Linear.*layers\.0\.query"):
        inject_adapters(model, AdaLoRAConfig(targets=r"attention\.nothing"), rngs=nnx.Rngs(1))


def test_set_triplets_rejects_mismatched_paths():
    model, _, _ = _adapted()
    triplets = get_triplets(model)
    triplets.pop("layers.0.up")
    with pytest.raises(ValueError, match="missing.*layers.0.up"):
        set_triplets(model, triplets)


def test_adapter_is_an_adalora_linear_with_the_base_inside():
    model, _, _ = _adapted()
    adapter = model.layers[0].query
    assert isinstance(adapter, AdaLoRALinear) and isinstance(adapter.base, nnx.Linear)


def test_factored_adapter_gradients_equal_autodiff():
    from jax_adalora.adapters import factored_adapter

    keys = jax.random.split(jax.random.key(7), 5)
    x = jax.random.normal(keys[0], (3, 5, 6))
    p, gate, q = (
        jax.random.normal(keys[1], (4, 2)),
        jax.random.normal(keys[2], (2,)),
        jax.random.normal(keys[3], (2, 6)),
    )
    weights = jax.random.normal(keys[4], (3, 5, 4))

    def reference(x, p, gate, q):
        return ((x @ q.T) * gate) @ p.T

    def loss(f):
        return lambda *a: jnp.sum(jnp.tanh(f(*a)) * weights)

    chex.assert_trees_all_close(
        jax.grad(loss(factored_adapter), argnums=(0, 1, 2, 3))(x, p, gate, q),
        jax.grad(loss(reference), argnums=(0, 1, 2, 3))(x, p, gate, q),
        rtol=1e-5,
        atol=1e-6,
    )
    per_example = jax.vmap(jax.grad(loss(factored_adapter), argnums=(1, 2, 3)), in_axes=(0, None, None, None))
    per_example_ref = jax.vmap(jax.grad(loss(reference), argnums=(1, 2, 3)), in_axes=(0, None, None, None))
    chex.assert_trees_all_close(per_example(x, p, gate, q), per_example_ref(x, p, gate, q), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 6), (3, 6)])
def test_probed_adapter_gives_each_examples_gradient_in_its_probes(shape):
    from jax_adalora.adapters import probed_adapter

    keys = jax.random.split(jax.random.key(8), 5)
    x = jax.random.normal(keys[0], shape)
    p, gate, q = (
        jax.random.normal(keys[1], (4, 2)),
        jax.random.normal(keys[2], (2,)),
        jax.random.normal(keys[3], (2, 6)),
    )
    weights = jax.random.normal(keys[4], shape[:-1] + (4,))
    batch = shape[0]
    probes = (jnp.zeros((batch, 2, 4)), jnp.zeros((batch, 2)), jnp.zeros((batch, 2, 6)))

    def reference(x, p, gate, q):
        return ((x @ q.T) * gate) @ p.T

    def probed_loss(x, p, gate, q, *probes):
        return jnp.sum(jnp.tanh(probed_adapter(x, p, gate, q, *probes)) * weights)

    def example_loss(x_one, w_one, p, gate, q):
        return jnp.sum(jnp.tanh(reference(x_one, p, gate, q)) * w_one)

    grads = jax.jit(jax.grad(probed_loss, argnums=tuple(range(7))))(x, p, gate, q, *probes)
    per_example = jax.vmap(jax.grad(example_loss, argnums=(2, 3, 4)), in_axes=(0, 0, None, None, None))(
        x, weights, p, gate, q
    )
    expected_probes = (jnp.swapaxes(per_example[0], -1, -2), per_example[1], per_example[2])
    # atol: a few float32 ulps of the largest gradients (about 7); the two sides sum in different orders.
    chex.assert_trees_all_close(grads[4:], expected_probes, rtol=1e-5, atol=1e-5)
    whole = jax.grad(lambda *a: jnp.sum(jnp.tanh(reference(*a)) * weights), argnums=(0, 1, 2, 3))(x, p, gate, q)
    chex.assert_trees_all_close(grads[:4], whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probed_adapter(x, p, gate, q, *probes), reference(x, p, gate, q), rtol=1e-6)


def _per_example_triplet_grads(model, x, weights):
    """Each example's gradient of the triplets, by ``jax.vmap`` over examples (the reference for probes)."""
    graphdef, state = nnx.split(model)

    def loss_one(triplets, x_one, w_one):
        one = nnx.merge(graphdef, state, copy=True)
        set_triplets(one, triplets)
        return jnp.sum(jnp.tanh(one(x_one[None])) * w_one)

    return jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0))(get_triplets(model), x, weights)


def test_probes_set_on_a_model_hold_per_example_gradients_with_masks():
    from jax_adalora.adapters import probes_to_triplet_layout, set_probes, zero_probes

    model, _, _ = _adapted()
    _randomise_lambda(model)
    path = next(iter(get_triplets(model)))
    set_masks(model, {path: jnp.array([1.0, 0.0, 1.0, 1.0])})
    x = jax.random.normal(jax.random.key(4), (5, 7, 6))
    weights = jax.random.normal(jax.random.key(5), (5, 7, 3))
    graphdef, state = nnx.split(model)

    def probed_loss(probes):
        one = nnx.merge(graphdef, state, copy=True)
        set_probes(one, probes)
        return jnp.sum(jnp.tanh(one(x)) * weights)

    probe_grads = jax.jit(jax.grad(probed_loss))(zero_probes(get_triplets(model), 5))
    expected = _per_example_triplet_grads(model, x, weights)
    chex.assert_trees_all_close(probes_to_triplet_layout(probe_grads), expected, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(probe_grads[path]["lam"][:, 1]))) == 0.0  # the masked triplet
    assert float(jnp.max(jnp.abs(probe_grads[path]["lam"]))) > 0.0
    with pytest.raises(ValueError, match="probes do not match the model's adapters"):
        set_probes(nnx.merge(graphdef, state), {})
    probed = nnx.merge(graphdef, state, copy=True)
    set_probes(probed, zero_probes(get_triplets(model), 5))
    with pytest.raises(ValueError, match="expected a leading batch axis of that size"):
        probed(x[:3])


def test_low_rank_parts_with_probes_are_per_example():
    """An input the batch shares (DeBERTa's relative-position table): with probes, the adapter's rank-r
    parts carry each example's probe, so the probes' gradients are each example's gradients."""
    from jax_adalora.adapters import probes_to_triplet_layout, set_probes, zero_probes

    model, _, _ = _adapted()
    _randomise_lambda(model)
    path = "layers.0.up"
    table = jax.random.normal(jax.random.key(6), (9, 6))
    queries = jax.random.normal(jax.random.key(7), (4, 3, 12))  # (B, N, d_out of `up`)
    graphdef, state = nnx.split(model)

    def scores(module, table):
        base, rank_side, p = module.low_rank_parts(table)  # (T, d), ([B,] T, r), ([B,] d, r)
        return queries @ base.T + (queries @ p) @ jnp.swapaxes(rank_side, -1, -2)

    def probed_loss(probes):
        one = nnx.merge(graphdef, state, copy=True)
        set_probes(one, probes)
        return jnp.sum(jnp.tanh(scores(adapter_modules(one)[path], table)))

    def loss_one(triplets, q_one):
        one = nnx.merge(graphdef, state, copy=True)
        set_triplets(one, triplets)
        module = adapter_modules(one)[path]
        return jnp.sum(jnp.tanh(q_one @ module(table).T))

    probe_grads = jax.grad(probed_loss)(zero_probes(get_triplets(model), 4))
    expected = jax.vmap(jax.grad(loss_one), in_axes=(None, 0))(get_triplets(model), queries)
    chex.assert_trees_all_close(probes_to_triplet_layout(probe_grads)[path], expected[path], rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(expected[path]["Q"]))) > 0


def test_the_merge_for_export_asks_for_full_float32_precision():
    """Off CPU the default matmul precision is one bf16 pass (TPU) or TF32 (GPU); the merged kernel
    ``(P diag(λ·mask·scale) Q)ᵀ`` must request HIGHEST (CPU ignores it, accelerators honour it)."""
    model, _, _ = _adapted()
    adapter = next(iter(adapter_modules(model).values()))
    graphdef, state = nnx.split(adapter)
    hlo = jax.jit(lambda s: nnx.merge(graphdef, s).delta_kernel()).lower(state).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert len(dots) == 1 and "HIGHEST" in dots[0], dots

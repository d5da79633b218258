"""Which layers inject adapts: tied layers, layers it cannot adapt, the preset for other models, ranks, twice."""

import logging
import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import jax_adalora as jal
from jax_adalora.adapters import adapter_modules, get_triplets, set_triplets

ROOT = Path(__file__).resolve().parent.parent


class Tied(nnx.Module):
    """One nnx.Linear used twice; ``untied`` makes the twin with two layers of the same weights."""

    def __init__(self, rngs, untied=False):
        self.enc = nnx.Linear(4, 4, rngs=rngs)
        self.dec = nnx.clone(self.enc) if untied else self.enc
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.dec(jnp.tanh(self.enc(x))))


def _losses(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])


def test_a_tied_layer_gets_one_adapter_at_both_uses_with_the_gradients_of_both():
    config = jal.AdaLoRAConfig(r_init=2, r_target=1)
    tied, untied = Tied(nnx.Rngs(0)), Tied(nnx.Rngs(0), untied=True)
    spec = jal.inject(tied, config, targets="enc", rngs=nnx.Rngs(1))
    assert spec == {"dec": 2}  # named by its first path, the one nnx.state gives it
    assert tied.enc is tied.dec and isinstance(tied.enc, jal.AdaLoRALinear)
    assert list(adapter_modules(tied)) == ["dec"] and list(nnx.state(tied, jal.AdaLoRAParam)) == ["dec"]
    jal.inject(untied, config, targets="enc|dec", rngs=nnx.Rngs(1))
    triplets = {"dec": {**get_triplets(tied)["dec"], "lam": jnp.asarray([0.7, -0.4])}}
    set_triplets(tied, triplets)
    set_triplets(untied, {"enc": triplets["dec"], "dec": triplets["dec"]})
    batch = {"x": jax.random.normal(jax.random.key(0), (4, 4)), "y": jnp.arange(4) % 2}
    chex.assert_trees_all_close(tied(batch["x"]), untied(batch["x"]), rtol=1e-6)

    _, _, moments = jal.value_grad_and_moments(_losses, tied, batch)
    _, _, twin = jal.value_grad_and_moments(_losses, untied, batch)
    both_uses = jax.tree.map(jnp.add, twin.mean["enc"], twin.mean["dec"])
    chex.assert_trees_all_close(moments.mean["dec"], both_uses, rtol=1e-5, atol=1e-7)
    per_example = [
        nnx.to_pure_dict(
            nnx.grad(
                lambda m, b=b: _losses(m, jax.tree.map(lambda a: a[b : b + 1], batch))[0],
                argnums=nnx.DiffState(0, jal.AdaLoRAParam),
            )(tied)
        )
        for b in range(4)
    ]
    sq_mean = jax.tree.map(lambda *g: sum(x * x for x in g) / 4, *per_example)
    chex.assert_trees_all_close(moments.sq_mean, sq_mean, rtol=1e-5, atol=1e-8)

    merged = jal.merge(tied)
    assert merged.enc is merged.dec and type(merged.enc) is nnx.Linear
    chex.assert_trees_all_close(merged(batch["x"]), tied(batch["x"]), rtol=1e-5, atol=1e-6)


class Mixed(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 6, rngs=rngs)
        self.conv = nnx.Conv(6, 6, kernel_size=(3,), rngs=rngs)
        self.per_head = nnx.Einsum("BTNH,NHD->BTND", (2, 3, 6), rngs=rngs)  # one matrix per head
        self.norm = nnx.LayerNorm(6, rngs=rngs)
        self.proj = nnx.Linear(6, 6, rngs=rngs)


def test_layers_that_cannot_be_adapted_are_named_once_and_a_pattern_of_only_those_is_an_error(caplog):
    model = Mixed(nnx.Rngs(0))
    with caplog.at_level(logging.WARNING, logger="jax_adalora.adapters"):
        spec = jal.inject(model, jal.AdaLoRAConfig(r_init=2, r_target=1), targets=".*", rngs=nnx.Rngs(1))
    assert spec == {"proj": 2}
    assert list(spec.skipped) == ["conv", "embed", "per_head"]
    assert "lookup table" in spec.skipped["embed"] and "one matrix per index" in spec.skipped["per_head"]
    [line] = [r.getMessage() for r in caplog.records if r.name.startswith("jax_adalora.adapters")]
    assert all(f"{path} (" in line for path in spec.skipped) and "norm" not in line
    with pytest.raises(ValueError, match=r"matched no layer left to adapt: cannot be adapted: conv \(nnx.Conv"):
        jal.inject(Mixed(nnx.Rngs(0)), jal.AdaLoRAConfig(r_init=2, r_target=1), targets="conv|norm", rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match=r"targets lists layers that cannot be adapted: embed \(nnx.Embed"):
        jal.inject(
            Mixed(nnx.Rngs(0)), jal.AdaLoRAConfig(r_init=2, r_target=1), targets=["proj", "embed"], rngs=nnx.Rngs(1)
        )


class Qwen3Like(nnx.Module):
    def __init__(self, rngs):
        block = lambda: nnx.Dict(q_proj=nnx.Linear(8, 8, rngs=rngs), v_proj=nnx.Linear(8, 8, rngs=rngs))  # noqa: E731
        self.layers = nnx.List([block(), block()])
        self.lm_head = nnx.Linear(8, 16, rngs=rngs)


def test_the_default_paper_preset_on_another_model_says_what_to_pass_and_its_example_works():
    model = Qwen3Like(nnx.Rngs(0))
    no_preset = r"targets='paper' is not a preset of this model \(it offers no presets"
    with pytest.raises(ValueError, match=no_preset) as err:
        jal.inject(model, jal.AdaLoRAConfig(r_init=2, r_target=1), rngs=nnx.Rngs(1))
    message = str(err.value)
    assert "\n" not in message and "pass targets= a regular expression" in message
    example = re.search(r'targets=r"([^"]+)"', message)[1]
    assert example == r"layers\.\d+\.q_proj|layers\.\d+\.v_proj|lm_head"
    assert len(jal.inject(model, jal.AdaLoRAConfig(r_init=2, r_target=1), targets=example, rngs=nnx.Rngs(1))) == 5


def test_a_rank_above_a_layers_size_is_refused_naming_the_layer_and_both_sizes():
    model = nnx.Sequential(nnx.Linear(16, 64, rngs=nnx.Rngs(0)), nnx.Linear(64, 64, rngs=nnx.Rngs(1)))
    with pytest.raises(ValueError, match=r"r_init=32 is above the size of layers\.0 \(d_in=16, d_out=64\): "):
        jal.inject(model, jal.AdaLoRAConfig(r_init=32, r_target=8), targets=r"layers\.\d", rngs=nnx.Rngs(2))
    assert not adapter_modules(model)  # nothing half done


def test_injecting_twice_says_already_adapted():
    model = nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 4, rngs=nnx.Rngs(1)))
    config = jal.AdaLoRAConfig(r_init=2, r_target=1)
    jal.inject(model, config, targets=r"layers\.0", rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match=r"matched no layer left to adapt: already adapted: layers\.0 \(inject once"):
        jal.inject(model, config, targets=r"layers\.0", rngs=nnx.Rngs(2))
    spec = jal.inject(model, config, targets=".*", rngs=nnx.Rngs(3))  # a later call adapts what is new only
    assert spec == {"layers.1": 2} and spec.skipped == {"layers.0": "already adapted"}


def test_the_own_model_guide_snippet_runs(capsys):
    page = (ROOT / "docs" / "guides" / "own-model.md").read_text()
    section = page[page.index("## Which layers can be adapted") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)[1]
    exec(compile(code, "own-model.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "'layers.q_proj': 4" in out and "embed" in out
    assert "(2, 16, 4)" in out and "(1, 8, 32)" in out

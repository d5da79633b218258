"""The public API as a user meets it: the examples, nnx.Optimizer training, adapter files, docstrings."""

import doctest
import importlib.util
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jax_adalora as jal

ROOT = Path(__file__).resolve().parent.parent


def _example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, statistics",
    [("mlp_classifier", "per_example"), ("mlp_classifier", "running"), ("decoder_lm", "per_example")],
)
def test_examples_train_to_the_target_budget_with_pruned_lambdas_zero(name, statistics, capsys):
    """40 steps with nnx.Optimizer: exactly r_target x n_matrices triplets kept, every pruned λ exactly 0."""
    model, optimizer = _example(name).main(["--statistics", statistics, "--steps", "40"])
    assert "final loss" in capsys.readouterr().out
    pattern = jal.rank_pattern(optimizer)
    modules = jal.adapters.adapter_modules(model)
    assert set(pattern) == set(modules)
    assert sum(sum(kept) for kept in pattern.values()) == 4 * len(modules)
    for path, module in modules.items():
        lam = np.asarray(module.lam[...])
        kept = np.asarray(pattern[path])
        assert np.all(lam[~kept] == 0.0), path
        assert np.all(lam[kept] != 0.0), path


def test_the_readme_library_section_is_the_first_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert (ROOT / "examples" / "mlp_classifier.py").read_text() in blocks


class Net(nnx.Module):
    def __init__(self, rngs, width=8):
        self.hidden = nnx.Linear(6, width, rngs=rngs)
        self.classifier = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, x):
        return self.classifier(jnp.tanh(self.hidden(x)))


def _net(r_init=4, width=8, adapter_seed=1):
    """The same 'pretrained' base every time; adapters and head as a fresh injection would have them."""
    net = Net(nnx.Rngs(0), width)
    jal.inject(net, jal.AdaLoRAConfig(r_init=r_init, r_target=2), targets="hidden", rngs=nnx.Rngs(adapter_seed))
    return net


def test_saved_adapters_load_into_a_fresh_model_with_identical_outputs(tmp_path):
    trained = _net()
    adapter = trained.hidden
    adapter.lam.set_value(jnp.asarray([0.5, -0.2, 0.0, 0.9]))
    adapter.P.set_value(adapter.P[...] * 30.0)
    trained.classifier.kernel.set_value(trained.classifier.kernel[...] + 0.25)
    pattern = {"hidden": [True, True, False, True]}
    path = jal.save_adapters(
        tmp_path / "adapters.safetensors", trained, rank_pattern=pattern, include=nnx.PathContains("classifier")
    )
    fresh = _net(adapter_seed=7)
    jal.load_adapters(path, fresh, include=nnx.PathContains("classifier"))
    x = jnp.linspace(-1.0, 1.0, 12).reshape(2, 6)
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(trained(x)))
    np.testing.assert_array_equal(np.asarray(fresh.hidden.mask[...]), [1.0, 1.0, 0.0, 1.0])
    merged = jal.merge(fresh)
    assert not jal.adapters.adapter_modules(merged)
    np.testing.assert_allclose(np.asarray(merged(x)), np.asarray(fresh(x)), atol=1e-6)


def test_an_adapter_file_that_does_not_fit_says_which_parameter(tmp_path):
    path = jal.save_adapters(tmp_path / "a.safetensors", _net(r_init=4))
    with pytest.raises(ValueError, match=r"hidden\.lam has shape \(4,\) in the file, \(6,\) in the model"):
        jal.load_adapters(path, _net(r_init=6))
    with pytest.raises(ValueError, match=r"hidden\.P has shape \(8, 4\) in the file, \(16, 4\) in the model"):
        jal.load_adapters(path, _net(width=16))
    other = Net(nnx.Rngs(0))
    jal.inject(other, jal.AdaLoRAConfig(r_init=3, r_target=2), targets="classifier", rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match=r"missing classifier\.P.*unknown hidden\.P"):
        jal.load_adapters(path, other)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.safetensors: not a readable safetensors file"):
        jal.load_adapters(tmp_path / "cut.safetensors", _net())
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        jal.load_adapters(tmp_path / "nope.safetensors", _net())


@pytest.mark.parametrize("module", ["jax_adalora.adapters", "jax_adalora.moments", "jax_adalora.allocator"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_public_api_is_the_top_level():
    for name in jal.__all__:
        assert getattr(jal, name).__doc__, name


def test_an_adapter_file_is_the_same_bytes_from_every_process(tmp_path):
    """safetensors writes several metadata keys in a per-process random order: the file keeps one, so that a
    resumed run's adapter files equal an uninterrupted run's byte for byte."""
    import subprocess
    import sys

    script = (
        "import sys; from flax import nnx; sys.path.insert(0, sys.argv[2]); import test_library_api as t; "
        "import jax_adalora as jal; jal.save_adapters(sys.argv[1], t._net())"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path in files:
        subprocess.run([sys.executable, "-c", script, str(path), str(ROOT / "tests")], check=True, cwd=ROOT)
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()

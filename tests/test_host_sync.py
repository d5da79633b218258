"""The training loop reads from the device only where it means to: every device-to-host copy is an explicit
``jax.device_get`` (a transfer guard fails any implicit one, such as ``float(x)`` or ``np.asarray(x)`` on a
device array), and a step's loss is read after the next step has been dispatched."""

from __future__ import annotations

import json
import re

import jax
import pytest
from test_train import _flags
from tiny_assets import make_sst2_dir, make_tiny_bert

from jax_adalora.cli.run_config import parse_args
from jax_adalora.cli.train import train_and_evaluate


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return make_tiny_bert(root / "tiny-bert"), make_sst2_dir(root / "sst2", n_train=64, n_dev=8)


def test_training_makes_no_implicit_transfer(assets, tmp_path, monkeypatch):
    """No implicit device-to-host copy anywhere in a run (steps, logging, evaluation, checkpoints, outputs),
    and none in either direction while a step is dispatched (batch, key and step all placed explicitly)."""
    monkeypatch.setattr("jax_adalora.cli.loop.STEP_TRANSFER_GUARD", "disallow")
    monkeypatch.setattr("jax_adalora.cli.loop.RUN_AHEAD", True)  # the accelerators' path, on CPU
    run = parse_args(_flags(assets, tmp_path / "run", "--epochs", "1", "--log-every", "1", "--no-export"))
    with jax.transfer_guard_device_to_host("disallow"):
        final = train_and_evaluate(run)
    assert final["steps"] == 8 and 0.0 <= final["final"]["accuracy"] <= 1.0
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in losses if "loss" in line] == list(range(1, 9))  # every step's loss, read once


def test_a_diverged_step_is_reported_by_its_own_number(assets, tmp_path, capsys, monkeypatch):
    """Read one step late (running ahead, no logging at every step), a NaN is reported for the step that
    produced it: the same step as when every step is read at once (logged and checkpointed), and as in
    lockstep, CPU's default."""
    from jax_adalora.cli.train import main

    assert jax.default_backend() == "cpu"
    steps = []
    for name, run_ahead, extra in (
        ("every", True, ("--log-every", "1", "--checkpoint-every", "1")),
        ("late", True, ("--log-every", "4")),
        ("lockstep", None, ("--log-every", "4")),
    ):
        monkeypatch.setattr("jax_adalora.cli.loop.RUN_AHEAD", run_ahead)
        flags = _flags(assets, tmp_path / name, "--epochs", "1", "--learning-rate", "1e38", "--max-grad-norm", "1e38")
        assert main([*flags, *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "became NaN or infinite at step" in err[0], err
        steps.append(int(re.search(r"at step (\d+)", err[0])[1]))
    assert steps[0] == steps[1] == steps[2] and 1 <= steps[0] <= 8

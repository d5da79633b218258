"""End-to-end tests of ``python -m jax_adalora.train`` on a tiny random BERT and a tiny SST-2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file
from tiny_assets import make_sst2_dir, make_tiny_bert

from jax_adalora.cli.run_config import parse_args
from jax_adalora.cli.train import main, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return make_tiny_bert(root / "tiny-bert"), make_sst2_dir(root / "sst2")


def _flags(assets, out_dir, *extra):
    """A tiny run of the command. α and γ are pinned to AdaLoRAConfig's values (the built-in run's are 32 and 0)
    so that these runs keep exercising the orthogonal regulariser: resume, microbatching, devices, processes."""
    model_dir, data_dir = assets
    return [
        "--task", "sst2", "--model", str(model_dir), "--data-dir", str(data_dir),
        "--output-dir", str(out_dir), "--epochs", "2", "--batch-size", "8", "--eval-batch-size", "8",
        "--r-init", "4", "--r-target", "2", "--t-init", "2", "--t-final", "4", "--delta-t", "1",
        "--learning-rate", "5e-3", "--log-every", "2", "--seed", "3", "--alpha", "16", "--orth-reg-weight", "0.1",
        *extra,
    ]  # fmt: skip


def _run_cli(args, env_extra=None, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "jax_adalora.train", *args], env=env, cwd=REPO, **kwargs)


def _main_in_process(argv, capsys) -> tuple[int, str, str]:
    """The command in this process (``train.main``, argparse's exit included): (exit status, stderr, stdout)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.err, captured.out


def test_end_to_end_writes_every_output(assets, tmp_path):
    out = tmp_path / "run"
    # One epoch: the programs of test_one_and_eight_devices_agree's run on 8 devices, compiled once for both.
    final = train_and_evaluate(
        parse_args(_flags(assets, out, "--score", "gsnr", "--stats", "per-example", "--epochs", "1"))
    )
    for name in (
        "config.json", "metrics.jsonl", "final_metrics.json", "rank_pattern.json", "rank_heatmap.png",
        "best_adapters.safetensors", "final_adapters.safetensors",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    assert any((out / "checkpoints").iterdir())
    ranks = json.loads((out / "rank_pattern.json").read_text())["ranks"]
    assert len(ranks) == 2 * 6  # two layers x the paper's six matrices
    assert sum(ranks.values()) == final["total_budget"] == final["target_budget"] == 2 * len(ranks)
    with Image.open(out / "rank_heatmap.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval" in line for line in lines) and any("loss" in line for line in lines)
    assert 0.0 <= final["final"]["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "score, stats", [("sensitivity", "per-example"), ("fisher", "running"), ("movement", "running")]
)
def test_every_score_trains(assets, tmp_path, score, stats):
    final = train_and_evaluate(
        parse_args(_flags(assets, tmp_path / "run", "--score", score, "--stats", stats, "--epochs", "1", "--no-export"))
    )
    assert final["total_budget"] == final["target_budget"]


def test_training_in_microbatches_gives_the_whole_batch_run(assets, tmp_path):
    """``--microbatch-size`` changes how the step differentiates a batch, not what it computes. The batch is
    sharded over the test session's 8 CPU devices, microbatches included."""
    common = ["--score", "gsnr", "--stats", "per-example", "--batch-size", "16", "--no-export"]
    finals = {}
    for name, extra in (("whole", []), ("micro", ["--microbatch-size", "8"])):
        finals[name] = train_and_evaluate(parse_args(_flags(assets, tmp_path / name, *common, *extra)))
    assert finals["micro"]["final"] == pytest.approx(finals["whole"]["final"], rel=1e-4)
    whole = load_file(tmp_path / "whole" / "final_adapters.safetensors")
    micro = load_file(tmp_path / "micro" / "final_adapters.safetensors")
    for key in whole:
        atol = 5e-4 * float(np.abs(whole[key]).max())  # float32 reassociation through AdamW, as across devices
        np.testing.assert_allclose(micro[key], whole[key], rtol=1e-4, atol=atol, err_msg=key)
    patterns = [json.loads((tmp_path / n / "rank_pattern.json").read_text()) for n in ("whole", "micro")]
    assert patterns[0] == patterns[1]
    with pytest.raises(ValueError, match=r"--microbatch-size 4 must be divisible by the number of devices \(8\)"):
        train_and_evaluate(parse_args(_flags(assets, tmp_path / "bad", *common, "--microbatch-size", "4")))


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(assets, tmp_path):
    common = ["--score", "gsnr", "--checkpoint-every", "2", "--no-export", "--epochs", "3"]
    train_and_evaluate(parse_args(_flags(assets, tmp_path / "straight", *common)))  # in this process: not killed

    killed_dir = tmp_path / "killed"
    victim = _run_cli(_flags(assets, killed_dir, *common), stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpt = killed_dir / "checkpoints"
        steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.exists() else []
        if any(s >= 6 for s in steps):
            break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed_dir / "final_metrics.json").exists(), "the run finished before it could be killed"

    train_and_evaluate(parse_args([*_flags(assets, killed_dir, *common), "--resume"]))
    a = json.loads((tmp_path / "straight" / "final_metrics.json").read_text())
    b = json.loads((killed_dir / "final_metrics.json").read_text())
    assert a["final"] == pytest.approx(b["final"], rel=1e-5)
    wa = load_file(tmp_path / "straight" / "final_adapters.safetensors")
    wb = load_file(killed_dir / "final_adapters.safetensors")
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6, err_msg=key)
    pa = json.loads((tmp_path / "straight" / "rank_pattern.json").read_text())
    pb = json.loads((killed_dir / "rank_pattern.json").read_text())
    assert pa == pb


@pytest.mark.slow
def test_one_and_eight_devices_agree(assets, tmp_path):
    common = ["--score", "gsnr", "--no-export", "--epochs", "1"]
    one = _run_cli(
        _flags(assets, tmp_path / "dev1", *common), env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    )
    train_and_evaluate(parse_args(_flags(assets, tmp_path / "dev8", *common)))  # this session's 8 CPU devices
    assert one.wait(timeout=600) == 0
    one = load_file(tmp_path / "dev1" / "final_adapters.safetensors")
    eight = load_file(tmp_path / "dev8" / "final_adapters.safetensors")
    # Eight devices sum the gradient in another order; AdamW divides each gradient by its own running RMS, so
    # an element whose gradient is near zero turns that float32 rounding into a visible step (seen: one pooler
    # weight of 1,024 off by 1.9e-5, every other parameter within 3e-7). Hence an absolute tolerance scaled to
    # each tensor's size, 5e-4 of its largest entry.
    for key in one:
        atol = 5e-4 * float(np.abs(one[key]).max())
        np.testing.assert_allclose(one[key], eight[key], rtol=1e-4, atol=atol, err_msg=key)
    m1 = json.loads((tmp_path / "dev1" / "final_metrics.json").read_text())
    m8 = json.loads((tmp_path / "dev8" / "final_metrics.json").read_text())
    assert m1["final"] == pytest.approx(m8["final"], rel=1e-4)


def test_bad_flags_give_one_clear_line_and_write_nothing(assets, tmp_path, capsys):
    out = tmp_path / "never"
    status, err, _ = _main_in_process(_flags(assets, out, "--r-target", "9"), capsys)
    assert status == 2 and "Traceback" not in err
    assert "--r-target" in err.strip().splitlines()[-1] and "r_init" in err
    assert not out.exists()

    status, err, _ = _main_in_process(_flags(assets, out, "--score", "magnitudes"), capsys)
    assert status == 2 and "--score 'magnitudes': expected one of" in err
    assert "Traceback" not in err and not out.exists()


def test_missing_data_file_names_the_file_and_writes_nothing(assets, tmp_path, capsys):
    model_dir, _ = assets
    out = tmp_path / "never"
    missing = tmp_path / "nope" / "train.json"
    flags = _flags((model_dir, tmp_path), out, "--train-file", str(missing), "--validation-file", str(missing))
    flags = [f for f in flags]
    i = flags.index("--data-dir")
    del flags[i : i + 2]
    status, err, _ = _main_in_process(flags, capsys)
    assert status == 2 and "Traceback" not in err
    assert str(missing) in err
    assert not out.exists()


def test_output_dir_with_a_run_needs_resume(assets, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "2").mkdir(parents=True)
    (out / "run_manifest.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume"):
        train_and_evaluate(parse_args(_flags(assets, out)))


SCORE_MODULE = '''
import jax
import jax.numpy as jnp

from jax_adalora.scores import register_score


def gradient_squared_over_weight(params, moments):
    """E[g²] / (|w| + 1): a score of a user's own, reading second moments."""
    return jax.tree.map(lambda w, s: s / (jnp.abs(w) + 1.0), params, moments.sq_mean)


register_score("test_user_score", gradient_squared_over_weight, reads="moments")
'''


def test_a_score_of_the_users_own_is_selected_by_name_and_trains(assets, tmp_path, capsys):
    """``--score-module FILE --score NAME``: the module registers the score, the run scores with it (a score
    of second moments, so with per-example statistics) and reaches the target budget; without the module the
    name is one line naming --score."""
    module = tmp_path / "my_scores.py"
    module.write_text(SCORE_MODULE)
    run = parse_args(_flags(assets, tmp_path / "run", "--score-module", str(module), "--score", "test_user_score",
                            "--epochs", "1", "--no-export"))  # fmt: skip
    from jax_adalora.training import statistics_mode

    assert statistics_mode(run.adalora) == "per_example"
    final = train_and_evaluate(run)
    assert final["total_budget"] == final["target_budget"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["score_module"] == str(module)

    code, err, _ = _main_in_process(_flags(assets, tmp_path / "bad", "--score", "no_such_score"), capsys)
    assert code == 2 and "--score 'no_such_score': expected one of sensitivity, movement" in err
    assert not (tmp_path / "bad").exists()
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('my module is broken')\n")
    code, err, _ = _main_in_process(_flags(assets, tmp_path / "bad", "--score-module", str(broken)), capsys)
    assert code == 2 and f"--score-module '{broken}': importing it failed: RuntimeError: my module is broken" in err
    assert len(err.strip().splitlines()) == 1 and "--help" in err and not (tmp_path / "bad").exists()

"""Bad input, faults and resumes of ``python -m jax_adalora.train``: each ends in one line or a correct result.

Each case asserts the exit status, the one ``error:`` line naming the flag, file or field, that nothing of
the user's was overwritten and that no half-written output remains. docs/RELIABILITY.md lists the cases.
Most run the command in-process (``train.main``); the faults that need a real file system (a read-only
mount, a full tmpfs) and the kill run it as a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import _flags, _main_in_process, _run_cli
from tiny_assets import make_sst2_dir, make_tiny_bert

from jax_adalora.cli import checkpoint as checkpoint_module
from jax_adalora.cli.checkpoint import Checkpointer, NonFiniteState
from jax_adalora.cli.run_config import parse_args
from jax_adalora.cli.run_dir import MANIFEST
from jax_adalora.cli.train import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return make_tiny_bert(root / "tiny-bert"), make_sst2_dir(root / "sst2")


def _cli(argv, capsys) -> tuple[int, list[str], str]:
    """Runs the command in-process: (exit status, stderr's ``error:`` lines, stdout)."""
    status, err, out = _main_in_process(argv, capsys)
    assert "Traceback" not in err
    return status, [line for line in err.splitlines() if "error:" in line], out


def _one_error(argv, capsys, status: int, *needles: str) -> str:
    got, errors, _ = _cli(argv, capsys)
    assert got == status, errors
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---- usage and configuration errors: exit status 2, nothing written --------------------------------


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--learning-rate", "-1"),
        ("--learning-rate", "nan"),
        ("--warmup-ratio", "5"),
        ("--b1", "7"),
        ("--b2", "1"),
        ("--eps", "0"),
        ("--max-grad-norm", "-1"),
        ("--weight-decay", "-0.1"),
        ("--checkpoint-minutes", "inf"),
        ("--pad-to-multiple-of", "0"),
    ],
)
def test_bad_optimiser_values_name_the_flag(tmp_path, capsys, flag, value):
    out = tmp_path / "never"
    line = _one_error(["--output-dir", out, flag, value], capsys, 2, f"error: {flag} ", ": expected")
    assert "Config." not in line  # the flag, not the internal field
    assert not out.exists()


def test_a_compilation_cache_path_that_is_a_file_names_the_flag(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("a file of the user's")
    out = tmp_path / "never"
    _one_error(
        ["--output-dir", out, "--compilation-cache-dir", taken], capsys, 2, "--compilation-cache-dir", str(taken)
    )
    assert taken.read_text() == "a file of the user's"
    assert not out.exists()


def test_a_config_file_that_raises_or_mistypes_names_the_file_and_field(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(profile):\n    return undefined_name\n")
    _one_error(["--config", broken], capsys, 2, f"--config {broken}", "NameError")
    crashing = tmp_path / "crashing.py"
    crashing.write_text("raise RuntimeError('no such cluster')\n")
    _one_error(["--config", crashing], capsys, 2, str(crashing), "RuntimeError: no such cluster")
    mistyped = tmp_path / "mistyped.py"
    mistyped.write_text("def get_config(profile):\n    return {'epochs': '3'}\n")
    _one_error(["--config", mistyped], capsys, 2, "--epochs '3': expected an integer", str(mistyped))


def test_a_config_that_is_not_a_python_file_or_is_a_directory_is_one_line(tmp_path, capsys):
    as_json = tmp_path / "x.json"
    as_json.write_text("{}")
    line = _one_error(["--config", as_json], capsys, 2)
    assert line.endswith(
        f"error: --config {as_json}: expected a Python file (.py) defining get_config(profile), such as "
        "configs/glue.py:mrpc; x.json is not one (all flags: python -m jax_adalora.train --help)"
    )
    line = _one_error(["--config", tmp_path], capsys, 2)
    assert f"error: --config {tmp_path}: {tmp_path} is a directory; expected a Python file" in line


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--seed", "-1"], "error: --seed -1: expected an integer >= 0 ("),
        (["--head-pattern", "["], "error: --head-pattern '[': not a regular expression (unterminated character set"),
        (["--targets", "(q"], "error: --targets '(q': neither a target preset (such as 'paper', 'attention' or 'qv')"),
    ],
)
def test_a_bad_seed_or_pattern_names_the_flag_at_parse_time(capsys, extra, needle):
    line = _one_error(extra, capsys, 2, needle)
    assert line.count("error:") == 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--max-seq-length", "500"], "--max-seq-length 500: "),  # the tiny BERT numbers 128 positions
        (  # issue 36: once silently the same as 32 (the tokenizer cannot truncate below its special tokens)
            ["--max-seq-length", "2"],
            "error: --max-seq-length 2: too short: the tokenizer adds 2 special tokens to each text, which leaves no "
            "room for the text; pass --max-seq-length 3 or more",
        ),
        (["--t-init", "100"], "--t-init 100 must be < total_steps - --t-final"),
        (["--eval-batch-size", "4"], "--eval-batch-size 4 must be divisible by the number of devices (8)"),
    ],
)
def test_errors_found_after_loading_still_come_before_any_write(assets, tmp_path, capsys, extra, needle):
    out = tmp_path / "never"
    _one_error(_flags(assets, out, *extra), capsys, 2, needle)
    assert not out.exists()


def test_debug_adds_the_traceback(assets, tmp_path, capsys):
    assert main(_flags(assets, tmp_path / "never", "--max-seq-length", "500", "--debug")) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: --max-seq-length 500: ")


def test_an_output_dir_that_is_not_ours_is_refused_untouched(assets, tmp_path, capsys):
    model_dir, _ = assets
    model_copy = tmp_path / "model"
    shutil.copytree(model_dir, model_copy)
    before = _tree_bytes(model_copy)
    _one_error(_flags(assets, model_copy), capsys, 2, f"--output-dir {model_copy} is not empty", MANIFEST)
    _one_error(_flags(assets, model_copy, "--resume"), capsys, 2, f"--output-dir {model_copy} is not empty")
    assert _tree_bytes(model_copy) == before

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    _one_error(_flags(assets, a_file), capsys, 2, f"{a_file} is a file")
    _one_error(_flags(assets, a_file / "run"), capsys, 2, f"{a_file} is a file")
    assert a_file.read_text() == "mine"


def test_resume_with_other_settings_names_each_flag_and_rewrites_nothing(assets, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "4").mkdir(parents=True)
    (out / MANIFEST).write_text("{}")
    (out / "config.json").write_text(json.dumps(parse_args(_flags(assets, out, "--score", "gsnr")).to_dict()))
    before = _tree_bytes(out)
    line = _one_error(
        _flags(assets, out, "--resume", "--score", "fisher", "--r-target", "1", "--eval-every", "3"),
        capsys,
        2,
        '--score "fisher" (checkpointed: "gsnr")',
        "--r-target 1 (checkpointed: 2)",
    )
    assert "--eval-every 3 (" not in line  # eval cadence may change on resume
    assert _tree_bytes(out) == before


# ---- model directories -----------------------------------------------------------------------------


def _model_copy(assets, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(assets[0], copy)
    return copy


def test_a_truncated_weights_file_names_the_file(assets, tmp_path, capsys):
    model = _model_copy(assets, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "never"
    _one_error(_flags((model, assets[1]), out), capsys, 2, f"{weights}: truncated safetensors file")
    assert not out.exists()


def test_a_config_that_does_not_fit_the_weights_fails_before_allocating(assets, tmp_path, capsys):
    model = _model_copy(assets, tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1_000_000}))
    _one_error(
        _flags((model, assets[1]), tmp_path / "never"),
        capsys,
        2,
        f"{model / 'config.json'}: num_hidden_layers=1000000 but {model / 'model.safetensors'} holds 2 layers",
    )
    # tests/test_pretrained.py checks the other sizes, and a config.json that is not a Hugging Face config
    assert not (tmp_path / "never").exists()


# ---- disk and permissions: exit status 1, naming the path ------------------------------------------


def _cli_on_tmpfs(mount: Path, options: str, argv) -> tuple[int, list[str], str] | None:
    """Runs the command in a new user and mount namespace with a tmpfs (``options``) mounted on ``mount``:
    (exit status, ``error:`` lines, what is left on the tmpfs), or None where the system forbids namespaces."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        return None
    script = 'mount -t tmpfs -o "$2" tmpfs "$1" && m="$1" && shift 2 && "$@"; echo "exit=$?"; ls -A "$m"'
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "jax_adalora.train", *map(str, argv)]
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(mount), options, *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "Traceback" not in done.stderr
    status, _, left = done.stdout.rpartition("exit=")[2].partition("\n")
    return int(status), [line for line in done.stderr.splitlines() if "error:" in line], left.strip()


def _read_only(path, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", str(path))


@pytest.mark.parametrize(
    "options, expected, patch",
    [
        ("ro,size=512m", "read-only file system", ("jax_adalora.cli.run_dir.Path.mkdir", _read_only)),
        (
            "size=1m",
            "not enough free disk space",
            ("jax_adalora.cli.run_dir.shutil.disk_usage", lambda path: SimpleNamespace(free=0)),
        ),
    ],
    ids=["read-only", "full"],
)
def test_a_read_only_or_full_file_system_is_one_line_naming_the_path(
    assets, tmp_path, capsys, monkeypatch, options, expected, patch
):
    """On a real tmpfs where mount namespaces are allowed; elsewhere the same error raised where the real
    one would be. The full disk is found before training, by the free-space check."""
    mount = tmp_path / "fs"
    mount.mkdir()
    out = mount / "run"
    done = _cli_on_tmpfs(mount, options, _flags(assets, out))
    if done is None:
        monkeypatch.setattr(*patch)
        done = _cli(_flags(assets, out), capsys)[:2] + ("",)
    status, errors, left = done
    assert status == 1 and len(errors) == 1, errors
    assert str(mount) in errors[0] and expected in errors[0]
    assert not left and not out.exists()


def test_a_disk_that_fills_during_training_leaves_no_half_run(assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def no_space(self, step, state, progress):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / str(step)))

    monkeypatch.setattr(Checkpointer, "save", no_space)
    flags = _flags(assets, out, "--epochs", "1", "--checkpoint-every", "2")  # the stop-and-resume test's programs
    _one_error(flags, capsys, 1, f"{out / 'checkpoints' / '2'}: no space left on device")
    assert not out.exists()  # nothing to resume from: the failed run's files are gone


def test_a_checkpoint_past_the_file_size_limit_is_one_line_and_leaves_no_partial_files(
    assets, tmp_path, capsys, monkeypatch, caplog
):
    """A real write failure inside orbax / tensorstore (not a simulated OSError): a file-size limit of 4 KB while
    the first checkpoint is written. One line naming the step, the directory and the reason; no orbax temporary
    directory is left, and with nothing to resume from the run's files are removed, so the same command can be
    run again."""
    import resource

    real_save = Checkpointer.save

    def limited(self, step, state, progress):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
        try:
            return real_save(self, step, state, progress)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    monkeypatch.setattr(Checkpointer, "save", limited)
    out = tmp_path / "run"
    flags = _flags(assets, out, "--epochs", "1", "--checkpoint-every", "2")
    line = _one_error(flags, capsys, 1, f"cannot write the checkpoint of step 2 to {out / 'checkpoints'}")
    assert "file-size limit" in line and "no earlier checkpoint exists" in line, line
    assert "Traceback" not in caplog.text
    assert not out.exists()


# ---- checkpoints -------------------------------------------------------------------------------------


def test_a_diverged_state_is_never_checkpointed(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, {"w": np.ones(3, np.float32)}, {"step": 1})
    with pytest.raises(NonFiniteState, match=r"\['w'\] hold NaN or inf at step 2"):
        checkpointer.save(2, {"w": np.array([1.0, np.nan, 0.0], np.float32)}, {"step": 2})
    assert checkpointer.manager.all_steps() == [1]


def test_a_corrupt_latest_checkpoint_is_named_and_the_previous_one_used(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=3)
    for step in (2, 4):
        checkpointer.save(step, {"w": np.full(2, step, np.float32)}, {"step": step})
    (tmp_path / "ckpt" / "4" / "progress" / "metadata").write_text('{"step": ')  # truncated
    state, progress = checkpointer.restore_latest_usable({"w": np.zeros(2, np.float32)})
    assert progress == {"step": 2} and np.asarray(state["w"]).tolist() == [2.0, 2.0]
    assert f"checkpoint {tmp_path / 'ckpt' / '4'} cannot be read" in caplog.text
    checkpointer.save(4, {"w": np.full(2, 4, np.float32)}, {"step": 4})  # the step can be written again
    assert checkpoint_module.Checkpointer(tmp_path / "ckpt").latest_step() == 4


def test_stop_corrupt_checkpoint_and_resume_end_like_a_straight_run(assets, tmp_path, capsys):
    """A stale metrics.jsonl of a failed attempt is not appended to; ``--stop-after-steps`` checkpoints
    before it stops; a metrics row logged after that checkpoint (as by a killed run) is dropped on resume;
    the corrupt latest checkpoint is named and the one before it used."""
    common = ["--checkpoint-every", "2", "--no-export", "--score", "sensitivity", "--epochs", "1"]
    assert _cli(_flags(assets, tmp_path / "straight", *common), capsys)[0] == 0

    out = tmp_path / "stopped"
    out.mkdir()  # ours, from an attempt that failed before its first checkpoint: started afresh, not appended to
    (out / MANIFEST).write_text("{}")
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    status, _, stdout = _cli(_flags(assets, out, *common, "--stop-after-steps", "5"), capsys)
    assert status == 0 and "checkpoint of step 5" in stdout
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 6, "loss": 0.0, "budget": 0, "grad_norm": 0.0}) + "\n")
    (out / "checkpoints" / "5" / "progress" / "metadata").write_text("{")
    status, errors, stdout = _cli(_flags(assets, out, *common, "--resume"), capsys)
    assert status == 0 and not errors
    assert "resumed from step 4" in stdout and "dropped" in stdout
    straight = tmp_path / "straight"
    assert (out / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    for name in ("final_adapters.safetensors", "best_adapters.safetensors", "rank_pattern.json"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def test_a_run_that_diverges_stops_with_one_line_and_keeps_finite_checkpoints(assets, tmp_path, capsys):
    out = tmp_path / "run"
    line = _one_error(
        _flags(
            assets,
            out,
            "--learning-rate",
            "1e38",
            "--max-grad-norm",
            "1e38",
            "--checkpoint-every",
            "1",
            "--epochs",
            "1",
        ),
        capsys,
        1,
        "became NaN or infinite",
        "--learning-rate",
    )
    checkpointer = Checkpointer(out / "checkpoints")
    for step in checkpointer.manager.all_steps():
        restored = checkpointer.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        assert not checkpoint_module.non_finite_leaves(restored["state"]), step
    assert "Last good checkpoint" in line


@pytest.mark.slow
def test_a_default_style_run_killed_between_evaluations_resumes_exactly(assets, tmp_path, capsys):
    """No --checkpoint-every: checkpoints come from the time cadence (--checkpoint-minutes), between the
    evaluations at the end of each 8-step epoch. Killed after one of them, the resumed run ends with the same
    adapters and the same metrics.jsonl, byte for byte, no row twice."""
    common = ["--score", "sensitivity", "--no-export", "--epochs", "3", "--checkpoint-minutes", "0.001"]
    assert _cli(_flags(assets, tmp_path / "straight", *common), capsys)[0] == 0  # in this process: not killed

    killed = tmp_path / "killed"
    victim = _run_cli(_flags(assets, killed, *common), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpt = killed / "checkpoints"
        steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.exists() else []
        if any(10 <= s < 16 for s in steps):
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "final_metrics.json").exists(), "the run finished before it could be killed"

    status, errors, stdout = _cli([*_flags(assets, killed, *common), "--resume"], capsys)
    assert status == 0 and not errors and "resumed from step" in stdout
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    keys = [(row["step"], "eval" in row) for row in rows]
    assert len(keys) == len(set(keys))
    assert (killed / "metrics.jsonl").read_bytes() == (tmp_path / "straight" / "metrics.jsonl").read_bytes()
    for name in ("final_adapters.safetensors", "best_adapters.safetensors", "rank_pattern.json"):
        assert (killed / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_an_unexpected_error_is_one_line_too(assets, tmp_path, capsys, monkeypatch):
    def broken(run):
        raise KeyError("accuracy")

    monkeypatch.setattr("jax_adalora.cli.train.train_and_evaluate", broken)
    _one_error(_flags(assets, tmp_path / "never"), capsys, 1, "error: KeyError: 'accuracy' (rerun with --debug")


def test_a_bad_pattern_found_after_parsing_is_a_usage_error_without_a_doubled_error_word():
    import re

    from jax_adalora.cli.errors import error_line

    try:
        re.compile("[")
    except re.error as err:
        status, line = error_line(err)
    assert (status, line) == (2, "unterminated character set at position 0")

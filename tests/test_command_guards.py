"""The command's guards of issue 36: Ctrl-C keeps the run's progress, a plug-in score's output is checked,
divergence advice that works, checksummed checkpoints, and data files that must not change under a resume."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import jax.numpy as jnp
import pytest
from test_reliability import _cli
from test_train import _flags, _main_in_process
from tiny_assets import make_sst2_dir, make_tiny_bert

from jax_adalora.cli import train as train_module


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return make_tiny_bert(root / "tiny-bert"), make_sst2_dir(root / "sst2")


@pytest.fixture(scope="module")
def straight(assets, tmp_path_factory):
    """An uninterrupted run of the settings the interrupted runs use: two 8-step epochs, the first checkpoint
    at step 8 (the first evaluation)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train_module.main([str(a) for a in _flags(assets, out, *COMMON)]) == 0
    return out


COMMON = ["--score", "sensitivity", "--no-export", "--checkpoint-minutes", "0"]


def _interrupt_at(monkeypatch, call: int, how: str) -> None:
    """The ``call``-th training step is interrupted: by SIGINT as it is dispatched (what Ctrl-C sends), or by a
    KeyboardInterrupt raised before it runs."""
    real = train_module.make_train_step

    def make(*args, **kwargs):
        step, calls = real(*args, **kwargs), [0]

        def interrupted(*a, **k):
            calls[0] += 1
            if calls[0] == call:
                if how == "signal":
                    signal.raise_signal(signal.SIGINT)
                else:
                    raise KeyboardInterrupt
            return step(*a, **k)

        return interrupted

    monkeypatch.setattr(train_module, "make_train_step", make)


@pytest.mark.parametrize("how, saved_step", [("signal", 3), ("raise", 2)])
def test_ctrl_c_before_the_first_checkpoint_keeps_the_progress(
    assets, straight, tmp_path, capsys, monkeypatch, how, saved_step
):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 3, how)
    status, errors, _ = _cli(_flags(assets, out, *COMMON), capsys)
    assert status == 130 and len(errors) == 1, errors
    assert (
        f"interrupted at step {saved_step}; saved a checkpoint of it in {out / 'checkpoints' / str(saved_step)}"
        in errors[0]
    )
    assert "--resume" in errors[0]
    monkeypatch.undo()
    status, errors, stdout = _cli([*_flags(assets, out, *COMMON), "--resume"], capsys)
    assert status == 0 and not errors and f"resumed from step {saved_step}" in stdout
    for name in ("final_adapters.safetensors", "best_adapters.safetensors", "rank_pattern.json", "metrics.jsonl"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


# ---- a plug-in score's output ------------------------------------------------------------------------

BAD_SCORES = {
    "nan_score": "jax.tree.map(lambda w: w * jnp.nan, params)",
    "scalar_score": "jax.tree.map(lambda w: jnp.sum(w**2), params)",
    "shape_score": "jax.tree.map(lambda w: w.T, params)",
    "tree_score": "jax.tree.leaves(params)",
}


@pytest.mark.parametrize(
    "score, status, needles",
    [
        ("nan_score", 1, ["the score 'nan_score' gave NaN or infinite importance at a re-allocation"]),
        ("scalar_score", 2, ["the score 'scalar_score' returned shape () for ", "expected (32, 4)"]),
        ("shape_score", 2, ["the score 'shape_score' returned shape (4, 32) for ", "expected (32, 4)"]),
        ("tree_score", 2, ["the score 'tree_score' returned a tree of another structure"]),
    ],
)
def test_a_plug_in_score_that_gives_nan_or_the_wrong_shapes_is_refused(
    assets, tmp_path, capsys, score, status, needles
):
    module = tmp_path / f"{score}.py"  # one module per score: a name is registered once per process
    module.write_text(
        "import jax\nimport jax.numpy as jnp\nfrom jax_adalora.scores import register_score\n\n"
        f"register_score({score!r}, lambda params, moments: {BAD_SCORES[score]}, reads='gradient')\n"
    )
    out = tmp_path / "run"
    argv = _flags(assets, out, "--score-module", module, "--score", score, "--epochs", "1", "--no-export")
    got, errors, _ = _cli(argv, capsys)
    assert got == status and len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (out / "final_metrics.json").exists()


def test_a_score_that_ties_every_triplet_warns_that_the_pattern_is_below_its_budget(assets, tmp_path, capsys):
    """A constant score ties every triplet at the threshold; PEFT's rule masks ties together, so the pattern
    drops to no triplet at all: the run finishes, with one warning line naming the score."""
    module = tmp_path / "flat_score.py"
    module.write_text(
        "import jax\nimport jax.numpy as jnp\nfrom jax_adalora.scores import register_score\n\n"
        "register_score('flat_score', lambda params, moments: jax.tree.map(jnp.zeros_like, params), "
        "reads='gradient')\n"
    )
    out = tmp_path / "run"
    argv = _flags(assets, out, "--score-module", module, "--score", "flat_score", "--epochs", "1", "--no-export")
    status, err, _ = _main_in_process(argv, capsys)
    warnings = [line for line in err.splitlines() if "warning: at step" in line]
    assert status == 0 and len(warnings) == 1, err[-2000:]
    assert "keeps 0 triplets, fewer than the budget" in warnings[0] and "'flat_score'" in warnings[0]
    assert json.loads((out / "final_metrics.json").read_text())["total_budget"] == 0


# ---- divergence ------------------------------------------------------------------------------------------


def _diverge_at(monkeypatch, call: int) -> None:
    """The ``call``-th training step reports a NaN loss (as a diverging run's would)."""
    real = train_module.make_train_step

    def make(*args, **kwargs):
        step, calls = real(*args, **kwargs), [0]

        def diverging(*a, **k):
            calls[0] += 1
            state, metrics = step(*a, **k)
            if calls[0] == call:
                metrics = {**metrics, "loss": jnp.float32(jnp.nan)}
            return state, metrics

        return diverging

    monkeypatch.setattr(train_module, "make_train_step", make)


def test_a_diverged_run_resumes_with_the_lower_learning_rate_its_advice_names(assets, tmp_path, capsys, monkeypatch):
    """A run that diverges at step 5 (checkpoint at 4): the advice (--resume with a lower --learning-rate)
    works, and config.json records the change; without a divergence the learning rate may not change."""
    out = tmp_path / "run"
    common = ["--checkpoint-every", "2", "--epochs", "1", "--no-export"]
    _diverge_at(monkeypatch, 5)
    got, errors, _ = _cli(_flags(assets, out, *common, "--max-grad-norm", "5"), capsys)
    assert got == 1 and len(errors) == 1, errors
    assert "at step 5" in errors[0] and f"Last good checkpoint: {out / 'checkpoints' / '4'} (step 4)" in errors[0]
    assert "Continue from it with --resume and a lower --learning-rate or --max-grad-norm" in errors[0]
    monkeypatch.undo()
    got, errors, stdout = _cli([*_flags(assets, out, *common, "--learning-rate", "1e-3"), "--resume"], capsys)
    assert got == 0 and not errors and "resumed from step 4" in stdout, (errors, stdout[-2000:])
    saved = json.loads((out / "config.json").read_text())
    assert saved["optim"]["learning_rate"] == 1e-3 and saved["optim"]["max_grad_norm"] == 1.0
    assert saved["changed_on_resume"] == [
        {"diverged_at_step": 5, "learning_rate": [5e-3, 1e-3], "max_grad_norm": [5.0, 1.0]}
    ]
    assert not (out / "diverged.json").exists()
    # without a divergence the learning rate may not change on resume
    got, errors, _ = _cli([*_flags(assets, out, *common, "--learning-rate", "2e-3"), "--resume"], capsys)
    assert got == 2 and "--learning-rate 0.002 (checkpointed: 0.001)" in errors[0]


def test_a_loss_that_grows_a_hundredfold_warns_once(assets, tmp_path, capsys):
    out = tmp_path / "run"
    status, err, _ = _main_in_process(
        _flags(assets, out, "--learning-rate", "300", "--epochs", "1", "--no-export"), capsys
    )
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert status == 0 and max(losses) > 1e4, losses
    warnings = [line for line in err.splitlines() if "warning: the training loss has grown" in line]
    assert len(warnings) == 1 and "times the first step's" in warnings[0] and "--learning-rate" in warnings[0]
    assert "Traceback" not in err


# ---- checkpoints: checksums, truncation, nothing readable ---------------------------------------------------


def _biggest_file(directory: Path) -> Path:
    return max(
        (p for p in directory.rglob("*") if p.is_file() and p.name != "checksums.json"), key=lambda p: p.stat().st_size
    )


def test_a_checkpoint_changed_in_place_is_found_by_its_checksum(assets, straight, tmp_path, capsys, caplog):
    """A checkpoint file overwritten at the same size is refused before it is read (the one before is used,
    and the run ends as a straight one); a truncated one is one warning line, not orbax's tracebacks."""
    out = tmp_path / "run"
    common = [*COMMON, "--checkpoint-every", "2"]
    status, _, _ = _cli(_flags(assets, out, *common, "--stop-after-steps", "6"), capsys)
    assert status == 0
    changed = _biggest_file(out / "checkpoints" / "6")
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed.write_bytes(bytes(data))  # same size, one byte changed
    status, errors, stdout = _main_in_process([*_flags(assets, out, *common), "--resume"], capsys)
    assert status == 0 and "resumed from step 4" in stdout, errors
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and f"{changed} has changed since it was saved (checksum mismatch)" in warned[0]
    assert "Traceback" not in errors
    for name in ("final_adapters.safetensors", "best_adapters.safetensors", "rank_pattern.json", "metrics.jsonl"):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def test_unreadable_checkpoints_are_one_line_each_and_never_deleted_by_a_fresh_start(assets, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    common = [*COMMON, "--checkpoint-every", "2"]
    assert _cli(_flags(assets, out, *common, "--stop-after-steps", "6"), capsys)[0] == 0
    for step in (4, 6):  # truncated: without the checksum, orbax logs a traceback per array
        (out / "checkpoints" / str(step) / "checksums.json").unlink()
        victim = _biggest_file(out / "checkpoints" / str(step))
        victim.write_bytes(victim.read_bytes()[:10])
    status, err, _ = _main_in_process([*_flags(assets, out, *common), "--resume"], capsys)
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert status == 1 and "Traceback" not in err and len(lines) == 1, lines
    assert "error: no checkpoint in" in lines[-1] and "can be read" in lines[-1]
    logged = [r for r in caplog.records if r.levelno >= 30]
    assert len(logged) == 2 and all("cannot be read" in r.getMessage() and not r.exc_info for r in logged), [
        r.getMessage()[:300] for r in logged
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["corrupt-4", "corrupt-6"]
    # the second --resume (or a run without it) refuses instead of starting afresh and deleting them
    for extra in (["--resume"], []):
        status, errors, _ = _cli([*_flags(assets, out, *common), *extra], capsys)
        assert status == 2 and len(errors) == 1 and "holds only checkpoints that could not be read" in errors[0]
        assert "corrupt-4, corrupt-6" in errors[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["corrupt-4", "corrupt-6"]


# ---- data that changed under a resume ------------------------------------------------------------------------


def test_a_resume_on_a_data_file_edited_at_the_same_path_is_refused(assets, tmp_path, capsys):
    model_dir, data_dir = assets
    own_data = tmp_path / "sst2"
    shutil.copytree(data_dir, own_data)
    out = tmp_path / "run"
    common = [*COMMON, "--checkpoint-every", "2"]
    flags = [*_flags((model_dir, own_data), out, *common)]
    assert _cli([*flags, "--stop-after-steps", "4"], capsys)[0] == 0
    saved = json.loads((out / "config.json").read_text())["data_files"]
    train_file = next(own_data / name for name in sorted(p.name for p in own_data.iterdir()) if "train" in name)
    assert str(train_file) in saved
    original = train_file.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    train_file.write_text("".join([lines[0], *reversed(lines[1:])]))  # the same rows, in another order
    before = (out / "config.json").read_bytes()
    status, errors, _ = _cli([*flags, "--resume"], capsys)
    assert status == 2 and len(errors) == 1, errors
    assert f"--resume: {train_file} has changed since {out} was trained on it" in errors[0]
    assert (out / "config.json").read_bytes() == before
    train_file.write_bytes(original)  # restored: the resume goes on
    status, errors, stdout = _cli([*flags, "--resume"], capsys)
    assert status == 0 and not errors and "resumed from step 4" in stdout


def test_the_fresh_head_warning_is_not_repeated_on_resume(assets, tmp_path, capsys, caplog):
    """A checkpoint without a classifier: the first start says the head is freshly initialised; the resume,
    which restores the trained head, does not say it again."""
    from transformers import BertModel

    model_dir, data_dir = assets
    bare = tmp_path / "bare-encoder"
    BertModel.from_pretrained(model_dir).save_pretrained(bare)
    for path in model_dir.iterdir():
        if path.is_file() and not (bare / path.name).exists():
            shutil.copy(path, bare / path.name)
    flags = _flags((bare, data_dir), tmp_path / "run", *COMMON, "--checkpoint-every", "2")
    pretrained = "jax_adalora.models.pretrained"  # at INFO here: predict raises it to ERROR for its process
    with caplog.at_level("INFO", logger=pretrained):
        assert _cli([*flags, "--stop-after-steps", "4"], capsys)[0] == 0
    assert "freshly initialised (the run trains it): classifier" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger=pretrained):
        status, errors, stdout = _cli([*flags, "--resume"], capsys)
    assert status == 0 and not errors and "resumed from step 4" in stdout
    assert "freshly initialised" not in caplog.text


def test_printed_summaries_round_to_six_significant_digits():
    """What a command prints carries no float noise (``0.8266666666666667``); files keep full precision."""
    from jax_adalora.cli.report import for_display

    shown = for_display({"final": {"accuracy": 0.8266666666666667, "step": 297, "perplexity": 982.5798455729254},
                         "history": [1.2345678e-7], "task": "movie-sentiment"})  # fmt: skip
    assert shown == {"final": {"accuracy": 0.826667, "step": 297, "perplexity": 982.58},
                     "history": [1.23457e-7], "task": "movie-sentiment"}  # fmt: skip


def test_pooled_gsnr_trains_checkpoints_and_resumes(assets, tmp_path, capsys):
    """``--smoothing pooled`` keeps its pool of moments in the allocator state: it survives a checkpoint, and the
    resumed run ends with the adapters of the uninterrupted one."""
    import numpy as np
    from safetensors.numpy import load_file

    common = ["--score", "gsnr", "--smoothing", "pooled", "--no-export", "--checkpoint-minutes", "0"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _cli(_flags(assets, whole, *common), capsys)[0] == 0
    assert _cli(_flags(assets, parts, *common, "--checkpoint-every", "2", "--stop-after-steps", "4"), capsys)[0] == 0
    assert _cli(_flags(assets, parts, *common, "--checkpoint-every", "2", "--resume"), capsys)[0] == 0
    a, b = (load_file(d / "final_adapters.safetensors") for d in (whole, parts))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert json.loads((whole / "rank_pattern.json").read_text()) == json.loads(
        (parts / "rank_pattern.json").read_text()
    )

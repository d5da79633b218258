"""scripts/studies/like_for_like.py: the plan, the imported runs, two workers sharing it, the report (no training);
and peft_baseline's --trained-head on a tiny random BERT (no training)."""

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts.studies import like_for_like as study
from scripts.studies import peft_baseline

ROOT = Path(__file__).resolve().parent.parent
# The runs docs/default_run_seeds.json holds at the study's settings: (cell name, seeds).
EXPECTED_IMPORTS = {
    "ours-sensitivity-lr2e-3-pc": [0, 1, 2, 3, 4],
    "ours-sensitivity-lr1e-3-pc": [0, 1, 2, 3, 4],
    "peft-common-lr1e-3-c": [0, 1, 2, 3, 4],
    "peft-common-lr2e-3-c": [0],
    "ours-sensitivity-lr1e-3-c": [0],
}


def make_args(tmp_path, *extra):
    return study.parse_args(["--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch"), *extra])


def fake_accuracy(cell, seed) -> float:
    """A known accuracy per run: a per-seed offset (removed by pairing) plus an effect per choice."""
    value = 0.80 + 0.003 * seed
    value += 0.004 * (cell.implementation == "ours") + 0.002 * (cell.learning_rate == 2e-3)
    value += 0.001 * (cell.head == "classifier") - 0.01 * (cell.score != "sensitivity")
    return value


class FakeTraining:
    """Stands in for ``train_one``: records each call, waits a little so that two workers overlap."""

    def __init__(self, pause=0.0):
        self.calls, self.pause, self.lock = [], pause, threading.Lock()

    def __call__(self, cell, seed, args, log):
        with self.lock:
            self.calls.append((cell.name, seed, args.worker))
        time.sleep(self.pause)
        return {"accuracy": fake_accuracy(cell, seed), "imported": False, "wall_seconds": 1.0, "command": "fake"}


# ---- the plan --------------------------------------------------------------------------------------


def test_the_grid_and_the_scores_each_cell_once():
    grid = study.grid_cells()
    assert len(grid) == len(set(grid)) == 8 == len({cell.name for cell in grid})
    assert {(c.implementation, c.learning_rate, c.head) for c in grid} == {
        (impl, lr, head) for impl in ("ours", "peft-common") for lr in (1e-3, 2e-3) for head in study.HEADS
    }
    assert all(cell.score == "sensitivity" for cell in grid)
    assert [c.name for c in study.score_cells()] == [f"ours-{s}-lr2e-3-pc" for s in ("gsnr", "fisher", "movement")]


def test_the_plan_goes_seed_major_through_the_grid_then_through_the_scores():
    runs = study.plan()
    assert len(runs) == len({study.run_key(c, s) for c, s in runs}) == 8 * 5 + 3 * 5
    grid, scores = runs[:40], runs[40:]
    assert [seed for _, seed in grid] == [s for s in range(5) for _ in range(8)]
    assert all(cell in study.grid_cells() for cell, _ in grid)
    assert [seed for _, seed in scores] == [s for s in range(5) for _ in range(3)]
    assert all(cell in study.score_cells() for cell, _ in scores)
    assert study.plan(parts=["scores"]) == scores and study.plan(seeds=[3], parts=["grid"]) == grid[24:32]


def test_the_earlier_runs_are_imported_with_their_source_and_not_planned_to_run(tmp_path):
    records = study.imported_records(study.SEEDS)
    assert sorted(records) == sorted(
        f"movie-sentiment/{name}-s{seed}" for name, seeds in EXPECTED_IMPORTS.items() for seed in seeds
    )
    source = json.loads((ROOT / "docs" / "default_run_seeds.json").read_text())
    record = records["movie-sentiment/peft-common-lr1e-3-c-s3"]
    assert record["accuracy"] == source["defaults_lr_1e-3"]["accuracy_by_seed"]["peft_common"]["3"]
    assert record["imported"] is True and record["settings"]["max_train_examples"] == 0
    assert record["source"]["file"] == "docs/default_run_seeds.json"
    assert record["source"]["entry"] == "defaults_lr_1e-3.accuracy_by_seed.peft_common[3]"
    assert "--peft-style common" in record["command"] and "--seed 3" in record["command"]
    assert records["movie-sentiment/ours-sensitivity-lr2e-3-pc-s4"]["accuracy"] == pytest.approx(0.834280303030303)

    lines = []
    counts = study.list_plan(make_args(tmp_path), lines.append)
    assert counts == {"imported": 17, "done": 0, "claimed": 0, "to do": 38}
    assert lines[0].split()[1:] == ["movie-sentiment/ours-sensitivity-lr2e-3-pc-s0", "imported"]
    assert not (tmp_path / "out").exists()  # --list writes nothing
    assert study.importable(make_args(tmp_path, "--max-train-examples", "64")) == {}  # other settings


@pytest.mark.parametrize(
    "name", ["ours-sensitivity-lr2e-3-pc", "ours-sensitivity-lr1e-3-pc", "ours-sensitivity-lr1e-3-c"]
)
def test_an_imported_run_of_ours_had_the_settings_the_study_runs_with(name, tmp_path):
    from jax_adalora.cli.run_config import parse_args

    cell = next(c for c in study.grid_cells() if c.name == name)
    imported = study.imported_records([0])[study.run_key(cell, 0)]["command"].split("  (")[0]
    ours = study.run_command(cell, 0, 0, tmp_path)
    made_then = parse_args(shlex.split(imported)[3:] + ["--output-dir", str(tmp_path / "run")]).to_dict()
    made_now = parse_args(ours[3:]).to_dict()
    assert made_now == made_then
    assert made_now["train"]["export"] is False and made_now["train"]["max_train_examples"] == 0


def test_the_commands_of_a_cell():
    ours = study.run_command(study.Cell("ours", 1e-3, "classifier", "gsnr"), 2, 0, Path("/s/x"))
    assert shlex.join(ours) == (
        "python -m jax_adalora.train --seed 2 --learning-rate 0.001 --score gsnr --head-pattern 'classifier\\..*' "
        "--no-export --output-dir /s/x/run"
    )
    peft = study.run_command(study.Cell("peft-common", 2e-3, "pooler+classifier"), 1, 64, Path("/s/y"))
    assert shlex.join(peft) == (
        "python -m scripts.studies.peft_baseline --config configs/movie.py:sentiment --peft-style common "
        "--trained-head pooler-classifier --learning-rate 0.002 --seed 1 --threads 1 --out /s/y/peft.json "
        "--max-train-examples 64"
    )
    assert set(study.PEFT_HEADS.values()) == set(peft_baseline.TRAINED_HEADS)


# ---- running: records, claims, two workers ------------------------------------------------------


def test_two_workers_share_the_plan_without_making_a_run_twice(tmp_path):
    training = FakeTraining(pause=0.01)
    args = [make_args(tmp_path, "--worker", str(k)) for k in (0, 1)]
    workers = [
        threading.Thread(target=study.run_study, args=(a, "cmd"), kwargs={"train_run": training, "log": lambda _: None})
        for a in args
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    made = [(name, seed) for name, seed, _ in training.calls]
    assert len(made) == len(set(made)) == 38
    assert {worker for *_, worker in training.calls} == {0, 1}
    records = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert len(records) == 55 and sum(r["imported"] for r in records.values()) == 17
    assert not list((tmp_path / "scratch" / "claims").iterdir())  # every claim released
    # a second invocation finds nothing to do
    again = FakeTraining()
    assert study.run_study(args[0], "cmd", train_run=again, log=lambda _: None) == (0, 0) and not again.calls
    assert "55 of 55" in (tmp_path / "out" / "REPORT.md").read_text()


def test_runs_are_taken_in_plan_order_and_a_stopped_process_claim_is_taken_over(tmp_path):
    args = make_args(tmp_path, "--seeds", "0", "--max-train-examples", "64")
    first, second = study.plan([0])[:2]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = study.claim_path(tmp_path / "scratch", *first)
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"pid": dead.pid, "host": study.socket.gethostname(), "worker": 1}))
    logs = []
    assert study.claim_next(args, set(), logs.append) == first  # its owner is gone
    assert "taking over" in logs[0] and json.loads(stale.read_text())["pid"] == study.os.getpid()
    assert study.claim_next(args, set(), logs.append) == second  # the first is claimed now, by a live process
    study.release(tmp_path / "scratch", *first)
    assert not stale.exists()
    assert study.claim_next(args, {study.run_key(*first)}, logs.append) == study.plan([0])[2]  # skipped


def test_a_record_made_at_other_settings_is_refused(tmp_path):
    args = make_args(tmp_path, "--seeds", "0")
    study.run_study(args, "cmd", train_run=FakeTraining(), log=lambda _: None)  # the whole plan, seed 0
    smoke = make_args(tmp_path, "--seeds", "0", "--max-train-examples", "64")
    with pytest.raises(ValueError, match="max_train_examples=0, this study asks max_train_examples=64"):
        study.run_study(smoke, "cmd", train_run=FakeTraining(), log=lambda _: None)


def test_a_failed_run_is_left_unrecorded_and_the_worker_goes_on(tmp_path):
    args = make_args(tmp_path, "--seeds", "0", "--parts", "scores")
    training = FakeTraining()

    def flaky(cell, seed, args, log):
        if cell.score == "gsnr":
            raise study.RunFailed("exit status 1")
        return training(cell, seed, args, log)

    assert study.run_study(args, "cmd", train_run=flaky, log=lambda _: None) == (2, 1)
    records = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert "movie-sentiment/ours-gsnr-lr2e-3-pc-s0" not in records and len(records) == 2  # no import in the plan


# ---- the report ----------------------------------------------------------------------------------


def test_the_report_pairs_by_seed_as_computed_by_hand(tmp_path):
    args = make_args(tmp_path)
    study.run_study(args, "cmd", train_run=FakeTraining(), log=lambda _: None)
    # The imported runs' values replaced with fake ones too, then two cells' values on every seed with hand-picked
    # ones: ours − PEFT at lr 2e-3, pooler + classifier.
    records = json.loads((tmp_path / "out" / "runs.json").read_text())
    for record in records.values():
        record["accuracy"] = fake_accuracy(study.Cell(**record["cell"]), record["seed"])
    ours = [0.80, 0.82, 0.81, 0.83, 0.84]
    peft = [0.79, 0.815, 0.82, 0.81, 0.835]
    for seed in range(5):
        records[f"movie-sentiment/ours-sensitivity-lr2e-3-pc-s{seed}"]["accuracy"] = ours[seed]
        records[f"movie-sentiment/peft-common-lr2e-3-pc-s{seed}"]["accuracy"] = peft[seed]
    del records["movie-sentiment/ours-fisher-lr2e-3-pc-s3"]  # a cell with a seed missing
    (tmp_path / "out" / "runs.json").write_text(json.dumps(records))
    study.write_outputs(args, "cmd")

    # Differences ×100: +1.0, +0.5, −1.0, +2.0, +0.5; mean 0.6; deviations 0.4, −0.1, −1.6, 1.4, −0.1, squares
    # summing to 4.70; sample std √(4.70 / 4) = 1.0840; standard error 1.0840 / √5 = 0.4848; 4 seeds ahead.
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = [r for r in results["summary"]["comparisons"] if r["label"] == "ours − PEFT, lr 2e-3, pooler + classifier"]
    assert row["mean"] == pytest.approx(0.006) and row["se"] == pytest.approx(0.004848, abs=1e-6)
    assert row["ahead"] == 4 and row["n"] == 5 and row["differs"].startswith("implementation")
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert (
        "| ours − PEFT, lr 2e-3, pooler + classifier | implementation: ours (JAX, sensitivity) vs PEFT's AdaLoRA "
        "(PyTorch; no task type, lora_alpha 32) | +0.60 ± 0.48 (4 of 5) | +1.00 / +0.50 / -1.00 / +2.00 / +0.50 |"
    ) in report
    # each side's learning rate and head, from the fake effects: +0.2 and −0.1 points on every seed
    assert (
        "| ours, classifier only: lr 2e-3 − lr 1e-3 | learning rate: 2e-3 vs 1e-3 | +0.20 ± 0.00 (5 of 5) |" in report
    )
    assert (
        "| PEFT as commonly run, lr 1e-3: pooler + classifier − classifier only | trained head: pooler + classifier "
        "vs classifier only | -0.10 ± 0.00 (0 of 5) |"
    ) in report
    assert "| ours, lr 2e-3, pooler + classifier: GSNR − sensitivity | score: GSNR vs sensitivity | " in report
    gsnr, gsnr_peft = [r for r in results["summary"]["comparisons"] if r["a"] == "ours-gsnr-lr2e-3-pc"]
    gsnr_cell = study.Cell("ours", 2e-3, "pooler+classifier", "gsnr")
    assert gsnr["mean"] == pytest.approx(sum(fake_accuracy(gsnr_cell, s) - ours[s] for s in range(5)) / 5)
    # the command's own score against PEFT at the same learning rate and head: two things differ, both named
    assert gsnr_peft["b"] == "peft-common-lr2e-3-pc" and gsnr_peft["group"] == "another score − PEFT"
    assert gsnr_peft["mean"] == pytest.approx(sum(fake_accuracy(gsnr_cell, s) - peft[s] for s in range(5)) / 5)
    assert "| ours with GSNR − PEFT, lr 2e-3, pooler + classifier | score: GSNR vs sensitivity; implementation:" in (
        report
    )
    # a cell or comparison short of a seed: only its count
    assert "| ours, Fisher, lr 2e-3, pooler + classifier | `ours-fisher-lr2e-3-pc` | 4 of 5 seeds |" in report
    assert (
        "| ours, lr 2e-3, pooler + classifier: Fisher − sensitivity | score: Fisher vs sensitivity | 4 of 5 seeds |"
        in (report)
    )
    assert "| ours, sensitivity, lr 1e-3, classifier only | `ours-sensitivity-lr1e-3-c` |" in report
    assert "| 1 of 5 |" in report  # seeds imported: the classifier-only run at lr 1e-3, seed 0
    assert results["runs_recorded"] == 54 and results["runs_imported"] == 17
    assert "(i)" in report and "docs/default_run_seeds.json" in report


# ---- peft_baseline: the trained head -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tiny_assets import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", num_labels=2)


def _trained_head(tiny_bert, style, trained_head):
    from transformers import AutoModelForSequenceClassification

    from jax_adalora.cli.run_config import build_run_config

    adalora = build_run_config({"r_init": 4, "r_target": 2}).adalora
    model = peft_baseline.build_peft_model(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
        adalora,
        style=style,
        total_steps=100,
        trained_head=trained_head,
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    return (
        model.peft_config["default"],
        {"pooler" for n in trainable if ".pooler." in n} | {"classifier" for n in trainable if ".classifier." in n},
        trainable,
    )


def test_common_style_with_the_pooler_trained_too(tiny_bert):
    config, heads, trainable = _trained_head(tiny_bert, "common", "pooler-classifier")
    assert heads == {"pooler", "classifier"} and all(".pooler." in n or ".classifier." in n for n in trainable)
    assert config.lora_alpha == 32.0 and config.task_type is None  # otherwise as commonly run
    assert _trained_head(tiny_bert, "common", None)[1] == {"classifier"}  # the style's own head by default
    assert _trained_head(tiny_bert, "ours", "classifier")[1] == {"classifier"}


def test_the_trained_head_is_recorded_with_the_style_settings():
    from jax_adalora.cli.run_config import build_run_config

    adalora = build_run_config({}).adalora
    settings = peft_baseline.peft_style_settings("common", adalora, "pooler-classifier")
    assert settings == {
        "lora_alpha": 32.0,
        "task_type": None,
        "trained_head": "pooler-classifier",
        "modules_to_save": ["classifier", "pooler"],
        "orth_reg_applied": False,
    }
    assert peft_baseline.peft_style_settings("common", adalora)["modules_to_save"] == ["classifier"]
    with pytest.raises(ValueError, match="trained head 'pooler'"):
        peft_baseline.peft_style_settings("common", adalora, "pooler")

"""scripts/studies/defaults_study.py: the grid, the run order, resumption and the table (no training)."""

import json
from pathlib import Path

import pytest

from scripts.studies import defaults_study as study

EFFECTS = {"alpha": 0.02, "gamma": 0.01, "head": -0.005, "score": 0.003}  # of the second level of each factor
SCHEDULES = {
    task: {"train_examples": 64, "dev_examples": 10, "total_steps": 20, "t_init": 2, "t_final": 4, "delta_t": 5}
    for task in study.TASKS
}


def fake_metric(overrides: dict) -> float:
    """A metric with known main effects, plus a per-seed offset that pairing by seed removes."""
    value = 0.7 + 0.01 * overrides["seed"] ** 2
    value += EFFECTS["alpha"] * (overrides["alpha"] == 32.0) + EFFECTS["gamma"] * (overrides["orth_reg_weight"] == 0)
    value += EFFECTS["head"] * (overrides["head_pattern"] == study.HEAD_PATTERNS["classifier"])
    return value + EFFECTS["score"] * (overrides["score"] == "gsnr")


class FakeTraining:
    def __init__(self):
        self.calls = []

    def __call__(self, overrides: dict, revision: str) -> dict:
        self.calls.append(overrides)
        metric = study.MAIN_METRICS[overrides["task"]]
        return {"metrics": {metric: fake_metric(overrides)}, "wall_seconds": 1.0, "git_revision": revision}


def test_grid_holds_every_combination_once_defaults_first():
    grid = study.settings_grid()
    assert len(grid) == len(set(grid)) == 16 and len({s.name for s in grid}) == 16
    assert grid[:2] == [study.FORMER, study.PEFT_COMMON]
    assert all(min(study.changes(s, study.FORMER), study.changes(s, study.PEFT_COMMON)) == 1 for s in grid[2:10])
    assert study.FORMER.overrides() == {
        "alpha": 16.0,
        "orth_reg_weight": 0.1,
        "head_pattern": r"(classifier|pooler|qa_outputs)\..*",
        "score": "sensitivity",
    }


def test_the_training_commands_defaults_are_the_chosen_setting_as_the_docs_say():
    from jax_adalora.cli.profiles import DEFAULT_RUN
    from jax_adalora.cli.run_config import TrainConfig, parse_args

    run = parse_args([])  # the built-in run
    assert (run.adalora.alpha, run.adalora.orth_reg_weight) == (study.CHOSEN.alpha, study.CHOSEN.gamma) == (32.0, 0.0)
    assert run.train.head_pattern == TrainConfig.head_pattern == study.HEAD_PATTERNS[study.CHOSEN.head]
    assert (DEFAULT_RUN["alpha"], DEFAULT_RUN["orth_reg_weight"]) == (32.0, 0.0)
    page = (Path(__file__).resolve().parent.parent / "docs" / "DEFAULTS_STUDY.md").read_text()
    assert "| adapter scale α (`--alpha`) | 16 | **32** |" in page
    assert "| orthogonal regularisation γ (`--orth-reg-weight`) | 0.1 | **0** |" in page
    assert "| trained head (`--head-pattern`) | pooler + classifier | **pooler + classifier** |" in page
    assert DEFAULT_RUN["learning_rate"] == run.optim.learning_rate == 2e-3
    assert "| learning rate (`--learning-rate`) | 1e-3 | **2e-3** |" in page


def test_default_grid_crosses_the_choices_with_the_default_score_only():
    args = study.parse_args([])
    grid = study.settings_grid(args.scores)
    assert len(grid) == 8 and {s.score for s in grid} == {"sensitivity"}
    assert grid[:2] == [study.FORMER, study.PEFT_COMMON]
    assert len(study.plan(args.tasks, args.seeds, grid)) == 72


def test_plan_finishes_one_task_and_seed_across_the_grid_first():
    runs = study.plan(["subjectivity", "movie-rating"], [0, 1], study.settings_grid())
    assert len(runs) == 64
    assert {(seed, task) for seed, task, _ in runs[:16]} == {(0, "subjectivity")}
    assert [s for _, _, s in runs[:16]] == study.settings_grid()
    assert {seed for seed, _, _ in runs[:32]} == {0}


def test_settings_flag_runs_a_named_part_of_the_grid_in_grid_order(tmp_path):
    chain = ["a32-g0-c-sensitivity", "a16-g0.1-pc-sensitivity"]  # given out of grid order
    argv = ["--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "s"), "--tasks", "movie-rating"]
    args = study.parse_args([*argv, "--seeds", "1", "2", "--settings", *chain])
    training = FakeTraining()
    assert study.run_study(args, SCHEDULES, "cmd", train_run=training, log=print) == 4
    ran = [(o["seed"], o["alpha"], o["head_pattern"] == study.HEAD_PATTERNS["classifier"]) for o in training.calls]
    assert ran == [(1, 16.0, False), (1, 32.0, True), (2, 16.0, False), (2, 32.0, True)]
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "4 of 16" in report  # the whole grid stays the plan the report counts against
    part = json.loads((tmp_path / "out" / "results.json").read_text())["summary"]["movie-rating"]
    assert part["main_effects"]["alpha"]["n"] == 0  # no seed has the whole grid: no main effect
    assert part["path"][-1]["n"] == 0 and part["path"][0]["n"] == 0  # nor both ends of a step


def test_study_resumes_from_result_files_and_reports_paired_effects(tmp_path):
    argv = ["--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch"), "--seeds", "0", "1", "2"]
    argv += ["--scores", "sensitivity", "gsnr"]
    args = study.parse_args([*argv, "--tasks", "subjectivity", "--max-runs", "5"])
    lines = []
    first = FakeTraining()
    assert study.run_study(args, SCHEDULES, "cmd", train_run=first, log=lines.append) == 5
    assert sum("training" in line for line in lines) == 5 and sum("not run" in line for line in lines) == 43
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs_done"] == 5

    args = study.parse_args([*argv, "--tasks", "subjectivity"])
    lines.clear()
    second = FakeTraining()
    assert study.run_study(args, SCHEDULES, "cmd", train_run=second, log=lines.append) == 43
    assert sum("reused" in line for line in lines) == 5
    trained = {(o["seed"], o["alpha"], o["orth_reg_weight"], o["head_pattern"], o["score"]) for o in first.calls}
    assert trained.isdisjoint(
        {(o["seed"], o["alpha"], o["orth_reg_weight"], o["head_pattern"], o["score"]) for o in second.calls}
    )
    assert first.calls[0]["max_train_examples"] == study.DEFAULT_MAX_TRAIN_EXAMPLES
    assert first.calls[0]["t_init"] == 2 and first.calls[0]["eval_every"] == 20

    summary = json.loads((tmp_path / "out" / "results.json").read_text())["summary"]["subjectivity"]
    for factor, effect in EFFECTS.items():
        measured = summary["main_effects"][factor]
        assert measured["n"] == 3 and measured["mean"] == pytest.approx(effect, abs=1e-9)
        assert measured["se"] == pytest.approx(0.0, abs=1e-9)  # the seed offsets cancel in the pairs
    path = summary["path"]
    assert [step["choice"] for step in path] == ["gamma", "alpha", "head"]
    assert path[0]["from"] == study.FORMER.name and path[-1]["to"] == study.PEFT_COMMON.name
    for step in path:
        assert step["n"] == 3 and step["mean"] == pytest.approx(EFFECTS[step["choice"]], abs=1e-9)
    peft = summary["settings"][study.PEFT_COMMON.name]["minus_former"]
    assert peft["mean"] == pytest.approx(EFFECTS["alpha"] + EFFECTS["gamma"] + EFFECTS["head"], abs=1e-9)
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "48 of 48" in report and "a32-g0-c-sensitivity (PEFT as commonly run) | 3 |" in report
    assert "| α 32 − α 16 | +2.00 ± 0.00 (n 3) |" in report


def test_a_result_made_at_other_settings_is_refused(tmp_path):
    argv = ["--out", str(tmp_path), "--scratch", str(tmp_path / "scratch"), "--tasks", "movie-rating"]
    study.run_study(
        study.parse_args([*argv, "--seeds", "0", "--max-runs", "1"]),
        SCHEDULES,
        "cmd",
        train_run=FakeTraining(),
        log=print,
    )
    args = study.parse_args([*argv, "--seeds", "0", "--max-train-examples", "512"])
    made = f"movie-rating/a16-g0.1-pc-sensitivity-s0: made with max_train_examples={study.DEFAULT_MAX_TRAIN_EXAMPLES}"
    with pytest.raises(ValueError, match=made):
        study.run_study(args, SCHEDULES, "cmd", train_run=FakeTraining(), log=print)


def test_bad_flags_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["--seeds", "0", "0"])
    assert "--seeds [0, 0]: a seed is given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.parse_args(["--settings", "a32-g0-pc-gsnr"])  # gsnr settings exist only with --scores ... gsnr
    assert (
        "--settings a32-g0-pc-gsnr: not in the grid; expected one of a16-g0-c-sensitivity," in capsys.readouterr().err
    )

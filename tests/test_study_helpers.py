"""The helpers of scripts/studies/compare_stats.py and scripts/studies/score_study.py (no training, no timing)."""

import json
import math

import numpy as np
import pytest

from scripts.studies import study_helpers as helpers


def test_compare_stats_spearman_is_scipys_and_nan_for_a_constant_side():
    from scipy import stats

    from scripts.studies.compare_stats import spearman

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)  # many ties
    b = a + rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert math.isnan(spearman(np.ones(3), np.arange(3.0)))


def test_jaccard():
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    assert helpers.jaccard(a, b) == pytest.approx(1 / 3)
    assert helpers.jaccard(a, a) == 1.0
    assert helpers.jaccard(a, ~a) == 0.0
    assert helpers.jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        helpers.jaccard(a, a[:3])


def test_chance_jaccard():
    assert helpers.chance_jaccard(288, 576) == pytest.approx(1 / 3)
    assert helpers.chance_jaccard(576, 576) == 1.0
    assert helpers.chance_jaccard(0, 576) == 1.0
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(2000):
        a, b = np.zeros(100, bool), np.zeros(100, bool)
        a[rng.choice(100, 70, replace=False)] = True
        b[rng.choice(100, 70, replace=False)] = True
        draws.append(helpers.jaccard(a, b))
    assert np.mean(draws) == pytest.approx(helpers.chance_jaccard(70, 100), abs=0.01)
    with pytest.raises(ValueError):
        helpers.chance_jaccard(5, 4)


def test_mean_std_is_the_sample_std():
    mean, std = helpers.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert helpers.mean_std([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="no values"):
        helpers.mean_std([])


def test_format_mean_std_scales_then_rounds():
    assert helpers.format_mean_std([0.81, 0.83], scale=100) == "82.00 ± 1.41"
    assert helpers.format_mean_std([1.0], digits=1) == "1.0 ± 0.0"


def test_mean_se_is_the_standard_error_of_the_mean():
    values = [0.1, -0.3, 0.2, 0.6]
    mean, se = helpers.mean_se(values)
    assert mean == pytest.approx(0.15)
    assert se == pytest.approx(np.std(values, ddof=1) / 2.0)
    assert np.isnan(helpers.mean_se([0.4])[1])


def test_format_paired_counts_the_seeds_ahead():
    # differences ×100: +1, -1, +3 -> mean +1, sample std 2, SE 2/√3
    assert helpers.format_paired([0.01, -0.01, 0.03], scale=100) == f"+1.00 ± {2 / 3**0.5:.2f} (2 of 3)"
    assert helpers.format_paired([-0.005], scale=100) == "-0.50 (0 of 1)"
    assert helpers.format_paired([0.0, 0.0]) == "+0.00 ± 0.00 (0 of 2)"


def test_mean_ranks():
    runs = [{"a": 4, "b": 8}, {"a": 6, "b": 9}, {"b": 10, "a": 5}]
    assert helpers.mean_ranks(runs) == {"a": 5.0, "b": 9.0}
    with pytest.raises(ValueError, match="different matrices"):
        helpers.mean_ranks([{"a": 1}, {"b": 1}])


def test_scaled_schedule_rounds_fractions():
    assert helpers.scaled_schedule(64, init_fraction=0.1, final_fraction=0.2, delta_t=2) == {
        "t_init": 6,
        "t_final": 13,
        "delta_t": 2,
    }
    # a run too short for the rounded phases keeps one step to decrease in
    tiny = helpers.scaled_schedule(2, init_fraction=0.4, final_fraction=0.5, delta_t=1)
    assert tiny["t_init"] < 2 - tiny["t_final"]
    with pytest.raises(ValueError):
        helpers.scaled_schedule(10, init_fraction=0.6, final_fraction=0.5, delta_t=1)


def test_markdown_table():
    text = helpers.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]])
    assert text == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |\n"
    with pytest.raises(ValueError, match="2 cells"):
        helpers.markdown_table(["a", "b", "c"], [[1, 2]])


def test_outputs_write_files(tmp_path):
    helpers.write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert (tmp_path / "x.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    ranks = {f"encoder.layers.{i}.{k}": 4 + i for i in range(2) for k in ("attention.query", "intermediate")}
    helpers.save_rank_panels({"one": ranks, "mean": {p: r + 0.5 for p, r in ranks.items()}}, tmp_path / "r.png")
    helpers.save_line_plot({"s": ([1, 2], [0.5, 0.9])}, tmp_path / "l.png", xlabel="step", ylabel="rho")
    for name in ("r.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rank_panels_wrap_into_rows(tmp_path):
    ranks = {f"encoder.layers.{i}.{k}": 4 + i for i in range(2) for k in ("attention.query", "intermediate")}

    def png_size(path):
        header = path.read_bytes()[16:24]
        return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")

    panels = {f"score {i}": ranks for i in range(5)}
    helpers.save_rank_panels(panels, tmp_path / "strip.png", per_row=5)
    helpers.save_rank_panels(panels, tmp_path / "grid.png", per_row=2)
    (strip_width, strip_height), (grid_width, grid_height) = (
        png_size(tmp_path / "strip.png"),
        png_size(tmp_path / "grid.png"),
    )
    assert grid_width < strip_width / 2 and grid_height > 2 * strip_height  # 2 panels a row, 3 rows


def test_rank_table_puts_layers_then_paper_matrix_order():
    from jax_adalora.cli.report import rank_table

    kinds_seen = ("output", "pooler", "attention.key", "attention.query")
    paths = [f"encoder.layers.{i}.{k}" for i in (1, 0) for k in kinds_seen]
    ranks = {p: n for n, p in enumerate(sorted(paths))}  # sorted keys, as a pytree hands them back
    layers, kinds, table = rank_table(ranks)
    assert layers == [0, 1]
    assert kinds == ["attention.query", "attention.key", "output", "pooler"]
    for i in layers:
        for j, kind in enumerate(kinds):
            assert table[i, j] == ranks[f"encoder.layers.{i}.{kind}"]


def test_scaled_run_overrides_scale_the_built_in_run_and_let_fields_win(tmp_path):
    import argparse

    from jax_adalora.cli.profiles import DEFAULT_RUN
    from jax_adalora.cli.run_config import build_run_config

    parser = argparse.ArgumentParser()
    helpers.add_scale_arguments(parser)
    args = parser.parse_args(["--max-train-examples", "64", "--delta-t", "3"])
    overrides = helpers.scaled_run_overrides("movie-rating", 5, 40, args, tmp_path / "run", score="gsnr")
    assert overrides["learning_rate"] == DEFAULT_RUN["learning_rate"]  # --learning-rate not given
    assert (overrides["task"], overrides["seed"], overrides["score"]) == ("movie-rating", 5, "gsnr")
    assert (overrides["t_init"], overrides["t_final"], overrides["delta_t"]) == (4, 8, 3)
    assert overrides["eval_every"] == 40 and overrides["export"] is False
    build_run_config(overrides)  # a valid configuration
    args = parser.parse_args(["--learning-rate", "0.01"])
    assert helpers.scaled_run_overrides("movie-sentiment", 0, 40, args, tmp_path)["learning_rate"] == 0.01


def test_adapter_flags_default_to_the_built_in_run_and_reproduce_other_values(tmp_path):
    import argparse

    from jax_adalora.cli.profiles import DEFAULT_RUN

    parser = argparse.ArgumentParser()
    helpers.add_scale_arguments(parser)
    helpers.add_adapter_arguments(parser)
    built_in = helpers.scaled_run_overrides("movie-rating", 0, 40, parser.parse_args([]), tmp_path)
    assert (built_in["alpha"], built_in["orth_reg_weight"]) == (DEFAULT_RUN["alpha"], DEFAULT_RUN["orth_reg_weight"])
    args = parser.parse_args(["--alpha", "16", "--orth-reg-weight", "0.1"])  # the former defaults
    former = helpers.scaled_run_overrides("movie-rating", 0, 40, args, tmp_path)
    assert (former["alpha"], former["orth_reg_weight"]) == (16.0, 0.1)
    assert helpers.adapter_scale_text(args) == "α = 16, γ = 0.1"


def test_scale_title_names_the_reduced_scale_or_the_whole_split():
    from argparse import Namespace

    assert helpers.scale_title(Namespace(max_train_examples=1024)) == "reduced scale — read this first"
    assert helpers.scale_title(Namespace(max_train_examples=0)) == "the built-in run's scale"


def test_score_study_variants_set_score_statistics_and_smoothing(tmp_path):
    from scripts.studies import score_study

    args = score_study.parse_args(["--scores", "gsnr-running", "magnitude", "fixed", "--tasks", "subjectivity"])
    fields = {v: score_study.run_overrides("subjectivity", v, 0, 100, args, tmp_path / v) for v in args.scores}
    assert (fields["gsnr-running"]["score"], fields["gsnr-running"]["statistics"]) == ("gsnr", "running")
    assert (fields["magnitude"]["score"], fields["magnitude"]["smoothing"]) == ("magnitude", "none")
    assert fields["fixed"]["r_init"] == fields["fixed"]["r_target"] == 8 and fields["fixed"]["score"] == "sensitivity"
    assert set(score_study.VARIANTS) <= set(score_study.ROW_NAMES)
    assert score_study.parse_args([]).scores == [*score_study.ADALORA_SCORES, score_study.BASELINE]


def test_score_study_refuses_to_reuse_a_run_made_at_other_settings(tmp_path):
    from jax_adalora.cli.run_config import build_run_config
    from scripts.studies import score_study

    args = score_study.parse_args(["--tasks", "subjectivity", "--scores", "gsnr"])
    run_dir = tmp_path / "subjectivity-gsnr-s0"
    overrides = score_study.run_overrides("subjectivity", "gsnr", 0, 100, args, run_dir)
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(build_run_config(overrides).to_dict()))
    score_study.check_same_run(run_dir, build_run_config(overrides).to_dict())  # the same settings: reused
    older = build_run_config({**overrides, "alpha": 8.0}).to_dict()
    with pytest.raises(ValueError, match=r"subjectivity-gsnr-s0: made with alpha=.*, this study asks alpha=8.0"):
        score_study.check_same_run(run_dir, older)


def test_compare_stats_reuses_a_finished_run_of_the_same_settings_whatever_else_its_config_holds(tmp_path):
    from jax_adalora.cli.run_config import build_run_config
    from scripts.studies import compare_stats

    run = build_run_config({"task": "movie-rating", "alpha": 32.0, "output_dir": str(tmp_path / "ours")})
    made = dict(run.to_dict(), task={"label_names": None}, schedule={"t_init": 3})  # what a run adds to its config
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.json").write_text(json.dumps(made))
    assert not compare_stats.reusable_run(run, tmp_path / "theirs")  # not finished
    (tmp_path / "theirs" / "final_metrics.json").write_text("{}")
    assert compare_stats.reusable_run(run, tmp_path / "theirs")
    other = build_run_config({"task": "movie-rating", "alpha": 16.0, "output_dir": str(tmp_path / "ours")})
    assert not compare_stats.reusable_run(other, tmp_path / "theirs")


def test_run_records_from_several_processes_are_all_kept(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(helpers.save_run_record, [(tmp_path, f"task/run-s{i}", {"seed": i}) for i in range(16)])
    records = helpers.load_run_records(tmp_path)
    assert records == {f"task/run-s{i}": {"seed": i} for i in range(16)}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs.json"]  # no lock file left beside it
    helpers.save_run_record(tmp_path, "task/run-s3", {"seed": 33})  # a record is replaced, the others kept
    assert (
        helpers.load_run_records(tmp_path)["task/run-s3"] == {"seed": 33}
        and len(helpers.load_run_records(tmp_path)) == 16
    )


def test_score_study_records_each_run_and_reuses_the_record_only_at_the_same_settings(tmp_path, monkeypatch):
    from scripts.studies import score_study

    trained = []

    def fake_run(overrides, revision):
        trained.append(overrides["seed"])
        return {"git_revision": revision, "metrics": {"accuracy": 0.5 + overrides["seed"] / 10}, "ranks": {}}

    monkeypatch.setattr(score_study, "one_run", fake_run)
    args = score_study.parse_args(["--tasks", "subjectivity", "--scores", "gsnr"])
    overrides = score_study.run_overrides("subjectivity", "gsnr", 1, 96, args, tmp_path / "scratch" / "run")
    key = helpers.run_key("subjectivity", "gsnr", 1)
    first = score_study.recorded_or_new_run(tmp_path, key, overrides, "abc")
    assert trained == [1] and first["metrics"] == {"accuracy": 0.6}
    assert helpers.load_run_records(tmp_path)[key]["overrides"] == overrides
    elsewhere = dict(overrides, output_dir=str(tmp_path / "other-scratch"))  # the folder is not a setting
    assert score_study.recorded_or_new_run(tmp_path, key, elsewhere, "abc") == first and trained == [1]
    with pytest.raises(ValueError, match=r"runs.json: subjectivity/gsnr-s1: made with alpha=.*asks alpha=8.0"):
        score_study.recorded_or_new_run(tmp_path, key, dict(overrides, alpha=8.0), "abc")


def test_compare_stats_finds_the_score_study_run_of_each_statistics_mode(tmp_path):
    from jax_adalora.cli.run_config import build_run_config
    from scripts.studies import compare_stats, score_study

    args = score_study.parse_args(["--tasks", "subjectivity"])
    compare_args = compare_stats.parse_args(["--tasks", "subjectivity"])
    for variant, (score, mode) in {"gsnr": ("gsnr", "per_example"), "gsnr-running": ("gsnr", "running")}.items():
        assert score_study.variant_of(score, mode) == variant
        folder = score_study.run_folder(tmp_path, "subjectivity", variant, 2)
        assert folder == tmp_path / f"subjectivity-{variant}-s2"
        study_run = score_study.run_overrides("subjectivity", variant, 2, 96, args, folder)
        assert (study_run["score"], study_run["statistics"]) == (score, mode)
        folder.mkdir()  # the study's finished run, as it writes it: compare_stats' own run of that mode reuses it
        (folder / "config.json").write_text(json.dumps(build_run_config(study_run).to_dict()))
        (folder / "final_metrics.json").write_text("{}")
        own = compare_stats.make_run("subjectivity", score, mode, 2, compare_args, 96, tmp_path / "own")
        assert compare_stats.reusable_run(own, folder)


def test_score_study_lists_its_plan_with_the_recorded_runs(tmp_path, capsys):
    from scripts.studies import score_study

    helpers.save_run_record(tmp_path, helpers.run_key("subjectivity", "fixed", 1), {"metrics": {}})
    argv = ["--out", str(tmp_path), "--tasks", "subjectivity", "--scores", "gsnr", "fixed", "--seeds", "0", "1"]
    assert score_study.main([*argv, "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[-1].strip() for line in lines[:4]] == ["to do", "to do", "to do", "recorded"]
    assert "subjectivity     fixed           seed 1" in lines[3]
    assert lines[4] == f"1 of 4 runs recorded in {tmp_path / 'runs.json'}"

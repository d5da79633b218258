"""The score study's summary: Table-1 style averages and paired differences to sensitivity (no training)."""

import numpy as np
import pytest

from scripts.studies import score_study


def _results(metrics_by_score: dict) -> dict:
    """``{task: {score: {seed: {"metrics": ...}}}}`` from ``{score: {seed: (accuracy, pearson)}}``."""
    results = {"movie-sentiment": {}, "movie-rating": {}}
    for score, by_seed in metrics_by_score.items():
        results["movie-sentiment"][score] = {str(s): {"metrics": {"accuracy": a}} for s, (a, _) in by_seed.items()}
        results["movie-rating"][score] = {
            str(s): {"metrics": {"pearson": p, "spearman": 0.0}} for s, (_, p) in by_seed.items()
        }
    return results


def test_summary_averages_the_main_metrics_then_pairs_by_seed():
    results = _results(
        {
            "sensitivity": {0: (0.80, 0.60), 1: (0.82, 0.62), 2: (0.84, 0.58)},
            "fisher": {0: (0.81, 0.61), 1: (0.81, 0.62), 2: (0.86, 0.60)},
        }
    )
    tasks, seeds = ["movie-sentiment", "movie-rating"], [0, 1, 2]
    summary = score_study.summarize(results, tasks, ["sensitivity", "fisher"], seeds)

    assert summary["fisher"]["average"]["values"] == pytest.approx([0.71, 0.715, 0.73])
    gaps = summary["fisher"]["average_minus_sensitivity"]
    expected = np.array([0.71 - 0.70, 0.715 - 0.72, 0.73 - 0.71])
    assert gaps["values"] == pytest.approx(expected.tolist())
    assert gaps["mean"] == pytest.approx(expected.mean())
    assert gaps["se"] == pytest.approx(expected.std(ddof=1) / np.sqrt(3))
    assert (gaps["seeds_better"], gaps["seeds_worse"]) == (2, 1)
    accuracy_gaps = summary["fisher"]["movie-sentiment/accuracy_minus_sensitivity"]
    assert accuracy_gaps["values"] == pytest.approx([0.01, -0.01, 0.02])
    assert accuracy_gaps["seeds_better"] == 2
    assert summary["sensitivity"]["average_minus_sensitivity"]["values"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("variant", ["gsnr-magnitude", "gsnr-pooled", "fisher-pooled", "movement-ema", "movement-sum"])
def test_the_like_for_like_variants_are_valid_runs(variant, tmp_path):
    from jax_adalora.cli.run_config import build_run_config

    args = score_study.parse_args(["--scores", variant])
    run = build_run_config(score_study.run_overrides("movie-sentiment", variant, 0, 40, args, tmp_path))
    assert {k: getattr(run.adalora, k) for k in score_study.VARIANTS[variant]} == score_study.VARIANTS[variant]


def test_fixed_rank_at_the_same_scale_halves_alpha_with_the_rank(tmp_path):
    """LoRA at AdaLoRA's final rank and scale: r 8 -> 8 with α 32 · 8 / 16 = 16, so α / r_init is AdaLoRA's 32 / 16."""
    from jax_adalora.cli.run_config import build_run_config

    args = score_study.parse_args(["--scores", score_study.SAME_SCALE])
    run = build_run_config(score_study.run_overrides("movie-sentiment", score_study.SAME_SCALE, 0, 40, args, tmp_path))
    assert (run.adalora.r_init, run.adalora.r_target, run.adalora.alpha) == (8, 8, 16.0)
    assert run.adalora.alpha / run.adalora.r_init == 32.0 / 16


def test_a_score_is_ahead_on_a_task_when_its_mean_gap_is_positive_and_it_leads_on_most_seeds():
    results = _results(
        {
            "sensitivity": {0: (0.80, 0.60), 1: (0.82, 0.62), 2: (0.84, 0.58)},
            # sentiment: +0.01, -0.01, +0.02 (ahead); rating: +0.05, -0.01, -0.01 (mean ahead, 1 seed of 3: not)
            "fisher": {0: (0.81, 0.65), 1: (0.81, 0.61), 2: (0.86, 0.57)},
        }
    )
    summary = score_study.summarize(results, ["movie-sentiment", "movie-rating"], ["sensitivity", "fisher"], [0, 1, 2])
    assert summary["fisher"]["movie-rating/pearson_minus_sensitivity"]["mean"] > 0
    assert summary["fisher"]["tasks_ahead"] == ["movie-sentiment"]
    assert summary["sensitivity"]["tasks_ahead"] == []


def test_the_report_marks_its_tables_for_the_docs_and_describes_each_variant(tmp_path):
    scores = ["sensitivity", "gsnr-pooled", score_study.SAME_SCALE]
    args = score_study.parse_args(["--scores", *scores, "--seeds", "0", "1", "--out", str(tmp_path)])
    metrics = {0: (0.80, 0.60), 1: (0.82, 0.62)}
    results = _results(dict.fromkeys(scores, metrics))
    for task in results.values():
        for by_seed in task.values():
            for run in by_seed.values():
                run.update(total_budget=288, wall_seconds=1.0)
    summary = score_study.summarize(results, args.tasks, scores, args.seeds)
    schedule = {"train_examples": 64, "dev_examples": 32, "total_steps": 6, "t_init": 1, "t_final": 2, "delta_t": 1}
    machine = {"cpu_count": 2, "platform": "p", "jax": "j", "backend": "cpu", "git_revision": "r"}
    text = score_study.report_markdown(
        args, [], summary, results, dict.fromkeys(args.tasks, schedule), machine, elapsed=1.0
    )
    for name in ("results", "paired"):
        assert f"<!-- --8<-- [start:{name}] -->" in text and f"<!-- --8<-- [end:{name}] -->" in text
    assert score_study.VARIANT_NOTES["gsnr-pooled"] in text
    assert score_study.VARIANT_NOTES[score_study.SAME_SCALE] in text
    assert "Baseline **fixed rank" not in text  # the r 8 -> 8 baseline at twice the scale is not in this study
    assert "| 0 of 2 |" in text  # tasks ahead: level with sensitivity everywhere

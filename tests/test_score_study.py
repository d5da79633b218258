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

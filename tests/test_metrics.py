"""Metrics against hand-computed values: classification, correlations, the GLUE average, SQuAD v1.1/v2.0."""

from __future__ import annotations

import math

import pytest

from jax_adalora.tasks.metrics import (
    compute_metrics,
    exact_match_score,
    f1_score_v1,
    f1_score_v2,
    glue_average,
    glue_table_row,
    normalize_answer,
    squad_v1_metrics,
    squad_v2_metrics,
)


def test_classification_metrics_by_hand():
    predictions, labels = [1, 0, 1, 1], [1, 0, 0, 1]  # TP 2, TN 1, FP 1, FN 0
    result = compute_metrics(("accuracy", "f1", "matthews_correlation"), predictions, labels)
    assert result["accuracy"] == 0.75
    assert result["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # precision 2/3, recall 1
    assert result["matthews_correlation"] == pytest.approx((2 * 1 - 1 * 0) / math.sqrt(3 * 2 * 2 * 1))
    assert compute_metrics(("matthews_correlation",), [1, 1, 1], [0, 1, 0]) == {"matthews_correlation": 0.0}


def test_correlations_by_hand():
    x, y = [1, 2, 3, 4], [2, 4, 5, 9]  # centred: (-1.5, -.5, .5, 1.5), (-3, -1, 0, 4)
    assert compute_metrics(("pearson",), x, y)["pearson"] == pytest.approx(11 / math.sqrt(5 * 26))
    assert compute_metrics(("spearman",), x, [2, 5, 4, 9])["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert compute_metrics(("pearson", "spearman"), [3, 3, 3, 3], y) == {"pearson": 0.0, "spearman": 0.0}
    assert compute_metrics(("mse",), [1, 2], [2, 4])["mse"] == pytest.approx(2.5)


def test_compute_metrics_rejects_bad_calls():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(("bleu",), [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        compute_metrics(("accuracy",), [1, 0], [1, 0, 1])


# Kim et al.'s Table 1: MRPC, SST-2, CoLA, QQP, QNLI, RTE, MNLI-m, MNLI-mm, STS-B, and the paper's average.
TABLE_1 = {
    "sensitivity": ([89.95, 95.41, 67.58, 89.81, 93.86, 83.39, 89.38, 89.37, 91.77], 87.84),
    "movement": ([90.44, 94.49, 68.23, 90.51, 93.70, 86.28, 89.78, 89.61, 91.27], 88.26),
    "fisher": ([89.46, 95.64, 69.69, 91.64, 93.89, 85.56, 90.41, 90.39, 91.33], 88.67),
    "gsnr": ([88.73, 94.38, 67.28, 91.60, 93.76, 85.56, 90.36, 90.50, 90.35], 88.06),
}


def _results(row):
    mrpc, sst2, cola, qqp, qnli, rte, m, mm, stsb = row
    return {
        "mrpc": {"accuracy": mrpc, "f1": 99.0},
        "sst2": {"accuracy": sst2},
        "cola": {"matthews_correlation": cola, "accuracy": 1.0},
        "qqp": {"accuracy": qqp, "f1": 1.0},
        "qnli": {"accuracy": qnli},
        "rte": {"accuracy": rte},
        "mnli": {"validation_matched/accuracy": m, "validation_mismatched/accuracy": mm},
        "stsb": {"pearson": stsb, "spearman": 1.0},
    }


@pytest.mark.parametrize("score", sorted(TABLE_1))
def test_glue_average_reproduces_the_papers_column(score):
    row, average = TABLE_1[score]
    assert round(glue_average(_results(row)), 2) == average
    assert list(glue_table_row(_results(row)).values()) == row


def test_glue_average_names_what_is_missing():
    results = _results(TABLE_1["gsnr"][0])
    del results["mnli"]["validation_mismatched/accuracy"]
    del results["rte"]
    with pytest.raises(KeyError, match=r"rte\['accuracy'\], mnli\['validation_mismatched/accuracy'\]"):
        glue_average(results)


# ---- SQuAD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, normalised",
    [
        ("The  Eiffel-Tower!", "eiffeltower"),
        ("An apple a day", "apple day"),
        ("  Hello,\t  World. ", "hello world"),
        ("theater another", "theater another"),  # articles only as whole words
        ("A", ""),
        ("the (1990s) 'a' band", "1990s band"),
    ],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


def test_em_and_f1_of_single_answers():
    assert exact_match_score("the Eiffel Tower", "Eiffel tower.") == 1.0
    assert exact_match_score("Eiffel", "Eiffel tower") == 0.0
    # pred (big, red, barn), gold (red, barn, door): 2 common, precision = recall = 2/3.
    assert f1_score_v1("the big red barn", "red barn door") == pytest.approx(2 / 3)
    assert f1_score_v1("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score_v1("", "") == 0.0 and f1_score_v2("", "") == 1.0 and f1_score_v2("a", "x") == 0.0


def test_squad_v1_takes_the_best_gold_and_scores_missing_as_zero():
    gold = {"q1": ["Eiffel tower", "tower"], "q2": ["red barn door", "big"], "q3": ["x"]}
    result = squad_v1_metrics({"q1": "the Eiffel Tower", "q2": "the big red barn"}, gold)
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)  # q2: max(2/3, F1 vs "big" = 0.5)


def test_squad_v2_breakdown_and_best_threshold():
    gold = {"a": ["Paris"], "b": [], "c": ["blue sky"], "d": [" "]}  # b and d unanswerable (blank = none)
    predictions = {"a": "Paris", "b": "", "c": "sky", "d": "something"}
    na_probs = {"a": -3.0, "b": 2.0, "c": -2.0, "d": -1.0}
    result = squad_v2_metrics(predictions, gold, na_probs)
    # Raw exact (1, 1, 0, 0), raw F1 (1, 1, 2/3, 0); only b passes the 1.0 threshold and it is right anyway.
    assert result["exact"] == 50.0 and result["f1"] == pytest.approx(100 * (8 / 3) / 4) and result["total"] == 4
    assert result["HasAns_exact"] == 50.0 and result["HasAns_f1"] == pytest.approx(100 * (5 / 3) / 2)
    assert result["NoAns_exact"] == 50.0 and result["NoAns_f1"] == 50.0
    assert result["HasAns_total"] == 2 and result["NoAns_total"] == 2
    # Start at 2 (no answer anywhere); admit a (+1 -> 3), c (+0 exact, +2/3 F1), d (-1), b (0).
    assert result["best_exact"] == 75.0 and result["best_exact_thresh"] == -3.0
    assert result["best_f1"] == pytest.approx(100 * (11 / 3) / 4) and result["best_f1_thresh"] == -2.0
    # Thresholding: a's odds above the threshold turn it into "no answer" (0 for an answerable question).
    low = squad_v2_metrics(predictions, gold, {**na_probs, "a": 5.0}, na_prob_thresh=1.0)
    assert low["HasAns_exact"] == 0.0
    plain = squad_v2_metrics(predictions, gold)
    assert "best_f1" not in plain and plain["exact"] == 50.0
    with pytest.raises(ValueError, match="no prediction for 1 question"):
        squad_v2_metrics({"a": "Paris"}, {"a": ["Paris"], "b": []})

"""Task metrics: GLUE-style classification and correlation scores, the GLUE average, SQuAD EM/F1.

Classification and regression metrics are fractions in [0, 1] (or correlations in [-1, 1]), as the
Hugging Face GLUE metric returns them; SQuAD scores are percentages, as the official evaluation
scripts print them. ``glue_average`` keeps the units it is given.

SQuAD follows the official v1.1 and v2.0 evaluation scripts: answers are normalised (lower case,
punctuation removed, the articles a/an/the removed, whitespace collapsed), EM and token F1 take the
maximum over the gold answers; v2.0 scores an unanswerable question against the single gold answer
``""``, breaks results down into HasAns/NoAns, and searches the no-answer threshold over the null
odds for ``best_exact`` / ``best_f1``.

    >>> squad_v1_metrics({"q1": "the Eiffel Tower"}, {"q1": ["Eiffel tower", "tower"]})
    {'exact_match': 100.0, 'f1': 100.0}
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Mapping, Sequence

import numpy as np

# ---- classification and regression ---------------------------------------------------------------


def accuracy(predictions, labels) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(predictions == labels))


def f1(predictions, labels) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports it for MRPC and QQP."""
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(labels), np.asarray(predictions), pos_label=1, zero_division=0.0))


def macro_f1(predictions, labels) -> float:
    """F1 averaged over the classes present in labels or predictions, each class weighing the same."""
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(labels), np.asarray(predictions), average="macro", zero_division=0.0))


def matthews_correlation(predictions, labels) -> float:
    """Matthews correlation (CoLA); 0.0 when undefined (a constant prediction), as scikit-learn does."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(np.asarray(labels), np.asarray(predictions)))


def _constant(a: np.ndarray) -> bool:
    return a.size < 2 or bool(np.all(a == a.flat[0]))


def pearson(predictions, labels) -> float:
    """Pearson correlation; 0.0 when undefined (a constant side), so checkpoint selection stays ordered."""
    from scipy.stats import pearsonr

    x, y = np.asarray(predictions, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    return 0.0 if _constant(x) or _constant(y) else float(pearsonr(x, y)[0])


def spearman(predictions, labels) -> float:
    """Spearman rank correlation; 0.0 when undefined."""
    from scipy.stats import spearmanr

    x, y = np.asarray(predictions, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    return 0.0 if _constant(x) or _constant(y) else float(spearmanr(x, y)[0])


def mse(predictions, labels) -> float:
    x, y = np.asarray(predictions, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    return float(np.mean((x - y) ** 2))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
    "mse": mse,
}


def compute_metrics(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """``{name: METRICS[name](predictions, labels)}`` in the order of ``names``."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    if len(np.asarray(predictions)) != len(np.asarray(labels)):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return {name: METRICS[name](predictions, labels) for name in names}


# ---- the GLUE average ----------------------------------------------------------------------------

# One number per column of Kim et al.'s Table 1: MRPC and QQP accuracy (the AdaLoRA convention; their F1 is
# reported beside it but not averaged), CoLA Matthews correlation, STS-B Pearson, MNLI matched and
# mismatched as two columns. The mean of these nine numbers reproduces the table's "avg" column for
# all four rows (e.g. sensitivity: 87.84), whereas 8 columns with m/mm merged gives 87.64.
GLUE_TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("MRPC", "mrpc", "accuracy"),
    ("SST-2", "sst2", "accuracy"),
    ("CoLA", "cola", "matthews_correlation"),
    ("QQP", "qqp", "accuracy"),
    ("QNLI", "qnli", "accuracy"),
    ("RTE", "rte", "accuracy"),
    ("MNLI-m", "mnli", "validation_matched/accuracy"),
    ("MNLI-mm", "mnli", "validation_mismatched/accuracy"),
    ("STS-B", "stsb", "pearson"),
)


def glue_table_row(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The nine Table 1 numbers from ``{task: metrics}`` (a task's flat metric dict, MNLI keys prefixed
    by split as ``jax_adalora.cli.train`` records them: ``validation_matched/accuracy``)."""
    missing = [f"{task}[{key!r}]" for _, task, key in GLUE_TABLE_COLUMNS if key not in results.get(task, {})]
    if missing:
        raise KeyError(f"glue average needs {', '.join(missing)}")
    return {column: float(results[task][key]) for column, task, key in GLUE_TABLE_COLUMNS}


def glue_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """The paper's GLUE average: the mean of the nine numbers of ``glue_table_row`` (same units as given)."""
    return float(np.mean(list(glue_table_row(results).values())))


# ---- SQuAD v1.1 and v2.0 -------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (the official rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score_v1(prediction: str, gold: str) -> float:
    """v1.1 token F1 (no overlap, including two empty answers, scores 0)."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def f1_score_v2(prediction: str, gold: str) -> float:
    """v2.0 token F1: when either side is empty, 1 if both are, else 0."""
    prediction_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    return _token_f1(prediction_tokens, gold_tokens)


def squad_v1_metrics(predictions: Mapping[str, str], gold: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Official v1.1 EM and F1 (percent) over the questions of ``gold``; a missing prediction scores 0."""
    if not gold:
        raise ValueError("no questions to score")
    exact = f1 = 0.0
    for qid, answers in gold.items():
        if qid not in predictions:
            continue
        exact += max(exact_match_score(predictions[qid], a) for a in answers)
        f1 += max(f1_score_v1(predictions[qid], a) for a in answers)
    return {"exact_match": 100.0 * exact / len(gold), "f1": 100.0 * f1 / len(gold)}


def squad_v2_metrics(
    predictions: Mapping[str, str],
    gold: Mapping[str, Sequence[str]],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """Official v2.0 scores (percent): exact, f1, HasAns_*/NoAns_* (when such questions exist), totals,
    and with ``na_probs`` (null odds: higher means more likely unanswerable) ``best_exact``, ``best_f1``
    and their thresholds. A question whose ``na_probs`` exceeds ``na_prob_thresh`` counts as answered
    with no answer. ``gold[qid]`` lists the answer texts; an empty list (or only blank texts) is
    unanswerable.
    """
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[:3]}")
    if not gold:
        raise ValueError("no questions to score")
    has_answer, exact_raw, f1_raw = {}, {}, {}
    for qid, answers in gold.items():
        answers = [a for a in answers if normalize_answer(a)] or [""]
        has_answer[qid] = answers != [""]
        exact_raw[qid] = max(exact_match_score(predictions[qid], a) for a in answers)
        f1_raw[qid] = max(f1_score_v2(predictions[qid], a) for a in answers)
    probs = {qid: 0.0 for qid in gold} if na_probs is None else {qid: float(na_probs[qid]) for qid in gold}

    def thresholded(raw):
        return {q: float(not has_answer[q]) if probs[q] > na_prob_thresh else s for q, s in raw.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids, prefix=""):
        return {
            f"{prefix}exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
            f"{prefix}f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
            f"{prefix}total": float(len(qids)),
        }

    out = summary(list(gold))
    has_qids = [q for q in gold if has_answer[q]]
    no_qids = [q for q in gold if not has_answer[q]]
    if has_qids:
        out.update(summary(has_qids, "HasAns_"))
    if no_qids:
        out.update(summary(no_qids, "NoAns_"))
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, threshold = _best_threshold(predictions, raw, probs, has_answer)
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best, threshold
    return out


def _best_threshold(predictions, raw, probs, has_answer) -> tuple[float, float]:
    """Start from "no answer everywhere" and admit answers in increasing null odds; keep the best score."""
    score = best = float(sum(not h for h in has_answer.values()))
    threshold = 0.0
    for qid in sorted(raw, key=lambda q: probs[q]):
        if has_answer[qid]:
            score += raw[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, threshold = score, probs[qid]
    return 100.0 * best / len(raw), threshold

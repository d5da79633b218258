"""Score study: importance-score variants and a fixed-rank baseline, over seeds, on the offline text tasks.

For every task × variant × seed, one ordinary run of ``jax_adalora.cli.train.train_and_evaluate`` (pretrained
MiniLM-L6, r 16 → 8 on the six matrices of each layer). A variant (``VARIANTS``) is a score with its statistics
and smoothing: by default the score-function study's four (Fisher and GSNR with exact per-example
statistics); also Fisher and GSNR with running statistics, magnitude (unsmoothed, as the official code's
"mag") and saliency. The baseline ``fixed`` is the same SVD adapter with ``r_init = r_target = 8``, so the
budget never shrinks and nothing is ever masked (its score is irrelevant; sensitivity is computed and
ignored). Runs write into ``--scratch``; only summaries go to ``--out``: ``results.json``, ``REPORT.md``
and one rank heatmap per task (mean kept rank over seeds, per score).

The schedule scales with the run: ``t_init`` and ``t_final`` are fractions of the total steps.
Resumable: each finished run's summary (metrics, kept ranks, times, commit) and settings go to
``<out>/runs.json`` under ``<task>/<variant>-s<seed>`` as soon as it ends, and a later invocation reuses that
record (refusing one made at other settings), so the records can be committed while a long study is under way
and the report rewritten in seconds. A finished run folder in ``--scratch`` is reused too. Several processes may
share one ``--out`` (e.g. one per seed, each pinned to a core with ``taskset``); the last invocation over all
seeds writes the report. The "Reading" of the report is ``reading.md`` in ``--out``, written by hand.

    # the committed results (docs/studies/score_study_full), the built-in run's scale at the former defaults
    # (α 16, γ 0.1, lr 1e-3; docs/results.md has the paper-length study's command too):
    python -m scripts.studies.score_study --tasks movie-sentiment --max-train-examples 0 --epochs 1 \
        --max-seq-length 48 --delta-t 5 --final-fraction 0.202 --seeds 0 1 2 3 4 --alpha 16 --orth-reg-weight 0.1 \
        --learning-rate 0.001 --scratch /tmp/score_study_full --out docs/studies/score_study_full
    # which runs of a study are recorded so far (its flags plus --list):
    python -m scripts.studies.score_study --tasks movie-sentiment --seeds 0 1 --out docs/studies/score_study_full --list
    # a smoke test:
    python -m scripts.studies.score_study --max-train-examples 64 --epochs 1 --seeds 0 --scratch /tmp/ss_smoke \
        --out /tmp/ss_smoke/out
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from jax_adalora.cli.report import machine_summary
from scripts.studies import study_helpers as helpers

ADALORA_SCORES = ("sensitivity", "movement", "fisher", "gsnr")  # the four of the score-function study: the default
BASELINE = "fixed"
# Every variant the study can run: the training command's fields it sets (the rest is the scaled built-in run).
VARIANTS = {
    "sensitivity": {"score": "sensitivity"},
    "movement": {"score": "movement"},
    "fisher": {"score": "fisher", "statistics": "per_example"},
    "gsnr": {"score": "gsnr", "statistics": "per_example"},
    "fisher-running": {"score": "fisher", "statistics": "running"},
    "gsnr-running": {"score": "gsnr", "statistics": "running"},
    "magnitude": {"score": "magnitude", "smoothing": "none"},  # as the official code's "mag": unsmoothed |w|
    "saliency": {"score": "saliency", "statistics": "per_example"},
    # The variants of the like-for-like issue: GSNR made weight-aware, GSNR and Fisher from every example since
    # the last re-allocation, movement without the uncertainty factor (plain EMA) or accumulated as movement
    # pruning does (cumulative sum).
    "gsnr-magnitude": {"score": "gsnr_magnitude", "statistics": "per_example"},
    "gsnr-pooled": {"score": "gsnr", "statistics": "per_example", "smoothing": "pooled"},
    "fisher-pooled": {"score": "fisher", "statistics": "per_example", "smoothing": "pooled"},
    "movement-ema": {"score": "movement", "smoothing": "ema"},
    "movement-sum": {"score": "movement", "smoothing": "sum"},
}
# Fixed-rank LoRA at AdaLoRA's final rank and adapter scale: r_init = r_target and α scaled by r_target / r_init,
# so α / r is the same as the adaptive runs' (the SVD adapter divides by r_init).
SAME_SCALE = "fixed-same-scale"
# What a variant changes, for the report's setup (the ones not listed need no more than their row name).
VARIANT_NOTES = {
    "gsnr-magnitude": "GSNR × |w|: the GSNR of each weight times its magnitude (ours: GSNR made weight-aware, as "
    "sensitivity is), exact per-example statistics, AdaLoRA smoothing",
    "gsnr-pooled": "GSNR of the exact per-example moments pooled over every example since the last re-allocation "
    "(ΔT × batch examples, not one batch; ours), no further smoothing",
    "fisher-pooled": "Fisher `E[g²]` of the same pooled moments (ours), no further smoothing",
    "movement-ema": "movement `−w·g` with a plain EMA (β1) and no uncertainty factor",
    "movement-sum": "movement `−w·g` summed over the steps since training began, as movement pruning (Sanh et al., "
    "2020) accumulates it",
    SAME_SCALE: "fixed rank 8 with α scaled by r_target / r_init, so its adapter scale α / r equals the AdaLoRA "
    "runs' (a LoRA-against-AdaLoRA comparison at equal scale)",
}
TASK_COLUMNS = {  # task -> the metrics reported (the first is the task's main metric)
    "movie-sentiment": ("accuracy",),
    "movie-rating": ("pearson", "spearman"),
    "subjectivity": ("accuracy",),
}
TASK_DESCRIPTIONS = {
    "movie-sentiment": "binary, dev accuracy",
    "movie-rating": "regression, dev Pearson / Spearman",
    "subjectivity": "binary, dev accuracy",
}
ROW_NAMES = {
    "sensitivity": "sensitivity (AdaLoRA orig.)",
    "movement": "movement",
    "fisher": "Fisher (per-example)",
    "gsnr": "GSNR (per-example)",
    "fisher-running": "Fisher (running)",
    "gsnr-running": "GSNR (running)",
    "magnitude": "magnitude (unsmoothed)",
    "saliency": "saliency ½w²E[g²] (per-example)",
    "gsnr-magnitude": "GSNR × weight magnitude (per-example)",
    "gsnr-pooled": "GSNR pooled since the last re-allocation",
    "fisher-pooled": "Fisher pooled since the last re-allocation",
    "movement-ema": "movement, plain EMA",
    "movement-sum": "movement, cumulative sum",
    BASELINE: "fixed rank 8 (no masking)",
    SAME_SCALE: "fixed rank 8 at AdaLoRA's α / r",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["movie-sentiment", "movie-rating"], choices=list(TASK_COLUMNS))
    parser.add_argument(
        "--scores",
        nargs="+",
        default=[*ADALORA_SCORES, BASELINE],
        choices=[*VARIANTS, BASELINE, SAME_SCALE],
        help="variants: a score, a score with running statistics (-running), or the fixed-rank baseline",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--r-init", type=int, default=16)
    parser.add_argument("--r-target", type=int, default=8)
    helpers.add_scale_arguments(parser)
    helpers.add_adapter_arguments(parser)
    parser.add_argument("--scratch", default="/tmp/score_study", help="run directories (outside the repo)")
    parser.add_argument("--out", default="docs/studies/score_study", help="where the summaries go")
    parser.add_argument("--list", action="store_true", help="print the plan and which runs are recorded; train nothing")
    return parser.parse_args(argv)


def plan(args) -> list[tuple[int, str, str]]:
    """Every run of the study as ``(seed, task, variant)``, in the order it makes them: seed-major, so an
    interrupted study still has whole seeds."""
    return [(seed, task, variant) for seed in args.seeds for task in args.tasks for variant in args.scores]


def list_plan(args) -> None:
    """Prints every planned run, in the order the study makes them, as recorded in ``<out>/runs.json`` or to do."""
    records = helpers.load_run_records(args.out)
    recorded = 0
    runs = plan(args)
    for number, (seed, task, variant) in enumerate(runs, start=1):
        is_recorded = helpers.run_key(task, variant, seed) in records
        recorded += is_recorded
        print(f"{number:4d} {task:16s} {variant:15s} seed {seed}: {'recorded' if is_recorded else 'to do'}")
    print(f"{recorded} of {len(runs)} runs recorded in {Path(args.out) / helpers.RUN_RECORDS}")


def run_folder(scratch: Path, task: str, variant: str, seed: int) -> Path:
    """The folder of one run of the study in ``--scratch``."""
    return Path(scratch) / f"{task}-{variant}-s{seed}"


def variant_of(score: str, statistics: str) -> str:
    """The variant (a key of :data:`VARIANTS`) that runs ``score`` with ``statistics`` and nothing else."""
    wanted = {"score": score, "statistics": statistics}
    matches = [name for name, fields in VARIANTS.items() if fields == wanted]
    if not matches:
        raise ValueError(f"no score-study variant runs {score} with {statistics} statistics alone")
    return matches[0]


def run_overrides(task: str, variant: str, seed: int, total_steps: int, args, output_dir: Path) -> dict:
    """The training command's fields for one run of ``variant`` (a key of :data:`VARIANTS`, or the baseline)."""
    fixed = variant in (BASELINE, SAME_SCALE)
    fields = {"statistics": "per_example", **VARIANTS["sensitivity" if fixed else variant]}
    if variant == SAME_SCALE:
        fields["alpha"] = helpers.adapter_values(args)[0] * args.r_target / args.r_init
    return helpers.scaled_run_overrides(
        task,
        seed,
        total_steps,
        args,
        output_dir,
        **fields,
        r_init=args.r_target if fixed else args.r_init,
        r_target=args.r_target,
    )


def recorded_or_new_run(out: Path, key: str, overrides: dict, fallback_revision: str) -> dict:
    """The summary of run ``key``: from its record in ``<out>/runs.json`` when one was made with ``overrides``
    (``ValueError`` when made otherwise), else from :func:`one_run`, whose summary is then recorded there."""
    records = helpers.load_run_records(out)
    if key in records:
        record = records[key]
        helpers.check_reusable(f"{Path(out) / helpers.RUN_RECORDS}: {key}", record["overrides"], overrides)
        return {name: value for name, value in record.items() if name != "overrides"}
    summary = one_run(overrides, fallback_revision)
    helpers.save_run_record(out, key, {**summary, "overrides": overrides})
    return summary


def one_run(overrides: dict, fallback_revision: str) -> dict:
    """Trains (or reuses a finished run in ``output_dir``); returns its summary.

    Each run records the commit it was made with (``git_revision.txt`` in its directory); a reused run
    without one is attributed to ``fallback_revision``, the commit the scratch folder was started at."""
    from jax_adalora.cli.run_config import build_run_config
    from jax_adalora.cli.train import train_and_evaluate

    out = Path(overrides["output_dir"])
    if (out / "final_metrics.json").exists():
        check_same_run(out, build_run_config(overrides).to_dict())
    else:
        shutil.rmtree(out, ignore_errors=True)  # a crashed, partial run: start it again
        started = time.time()
        train_and_evaluate(build_run_config(overrides))
        wall = time.time() - started
        (out / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
        (out / "git_revision.txt").write_text(helpers.git_revision() + "\n")
    final = json.loads((out / "final_metrics.json").read_text())
    ranks = json.loads((out / "rank_pattern.json").read_text())["ranks"]
    wall_file = out / "wall_seconds.txt"
    revision_file = out / "git_revision.txt"
    return {
        "git_revision": revision_file.read_text().strip() if revision_file.exists() else fallback_revision,
        "metrics": {k: v for k, v in final["final"].items() if k != "step"},
        "ranks": ranks,
        "total_budget": final["total_budget"],
        "target_budget": final["target_budget"],
        "steps": final["steps"],
        "train_seconds": final["train_seconds_this_process"],
        "wall_seconds": float(wall_file.read_text()) if wall_file.exists() else None,
    }


def check_same_run(run_dir: Path, wanted: dict) -> None:
    """Raises ``ValueError`` naming the run folder and the first differing field when the finished run there
    was made with other settings than ``wanted`` (a ``RunConfig.to_dict()``), e.g. before a default changed."""
    difference = helpers.config_difference(run_dir, wanted)
    if difference:
        raise ValueError(f"{run_dir}: {difference}; pass another --scratch (or remove the folder to run it again)")


def summarize(results: dict, tasks, scores, seeds) -> dict:
    """Per score: mean ± std over seeds of every reported metric, the cross-task average, and paired gaps."""
    summary = {}
    for score in scores:
        row = {}
        for task in tasks:
            for metric in TASK_COLUMNS[task]:
                values = [results[task][score][str(s)]["metrics"][metric] for s in seeds]
                mean, std = helpers.mean_std(values)
                row[f"{task}/{metric}"] = {"values": values, "mean": mean, "std": std}
        averages = [average_main_metric(results, tasks, score, s) for s in seeds]
        mean, std = helpers.mean_std(averages)
        row["average"] = {"values": averages, "mean": mean, "std": std}
        summary[score] = row
    if "sensitivity" in scores:
        for score in scores:
            gaps = [
                a - b
                for a, b in zip(
                    summary[score]["average"]["values"], summary["sensitivity"]["average"]["values"], strict=True
                )
            ]
            summary[score]["average_minus_sensitivity"] = paired_gaps(gaps)
            for task in tasks:
                key = f"{task}/{TASK_COLUMNS[task][0]}"
                gaps = [
                    a - b
                    for a, b in zip(summary[score][key]["values"], summary["sensitivity"][key]["values"], strict=True)
                ]
                summary[score][f"{key}_minus_sensitivity"] = paired_gaps(gaps)
            summary[score]["tasks_ahead"] = tasks_ahead(summary[score], tasks)
    return summary


def tasks_ahead(row: dict, tasks) -> list[str]:
    """The tasks on which a score is ahead of sensitivity: its paired difference in the task's main metric is
    positive on average and on more than half of the seeds."""
    ahead = []
    for task in tasks:
        gap = row[f"{task}/{TASK_COLUMNS[task][0]}_minus_sensitivity"]
        if gap["mean"] > 0 and gap["seeds_better"] > len(gap["values"]) / 2:
            ahead.append(task)
    return ahead


def paired_gaps(gaps: list[float]) -> dict:
    """Per-seed differences to sensitivity: the values, mean, sample std, standard error, seeds ahead / behind."""
    mean, std = helpers.mean_std(gaps)
    _, se = helpers.mean_se(gaps)
    return {
        "values": gaps,
        "mean": mean,
        "std": std,
        "se": se,
        "seeds_better": sum(g > 0 for g in gaps),
        "seeds_worse": sum(g < 0 for g in gaps),
    }


def average_main_metric(results, tasks, score, seed) -> float:
    """The paper's "avg" column: the mean over tasks of each task's main metric, for one seed."""
    return sum(results[t][score][str(seed)]["metrics"][TASK_COLUMNS[t][0]] for t in tasks) / len(tasks)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        list_plan(args)
        return 0
    helpers.enable_compilation_cache(args.cache_dir)
    scratch, out = Path(args.scratch), Path(args.out)
    revision = helpers.recorded_revision(scratch)
    started = time.time()
    results: dict = {}
    schedules: dict = {}
    for task in args.tasks:
        n_train, n_dev = helpers.split_sizes(task, args)
        total_steps = args.epochs * (n_train // args.batch_size)
        schedules[task] = {
            "train_examples": n_train,
            "dev_examples": n_dev,
            "total_steps": total_steps,
            **helpers.scaled_schedule(
                total_steps, init_fraction=args.init_fraction, final_fraction=args.final_fraction, delta_t=args.delta_t
            ),
        }
        results[task] = {score: {} for score in args.scores}
    runs = plan(args)
    for number, (seed, task, score) in enumerate(runs, start=1):
        print(f"[{time.time() - started:7.0f} s] run {number}/{len(runs)}: {task} {score} seed {seed}", flush=True)
        output_dir = run_folder(scratch, task, score, seed)
        overrides = run_overrides(task, score, seed, schedules[task]["total_steps"], args, output_dir)
        try:
            summary = recorded_or_new_run(out, helpers.run_key(task, score, seed), overrides, revision)
        except ValueError as err:
            print(f"score_study: {err}", file=sys.stderr)
            return 2
        results[task][score][str(seed)] = summary
        shown = ", ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items())
        print(f"    -> {shown}; budget {summary['total_budget']}; wall {summary['wall_seconds']} s", flush=True)
    summary = summarize(results, args.tasks, args.scores, args.seeds)
    elapsed = time.time() - started
    write_outputs(out, args, argv, results, summary, schedules, elapsed, revision)
    print(f"done in {elapsed:.0f} s; wrote {out}/REPORT.md", flush=True)
    return 0


# ---- outputs -------------------------------------------------------------------------------------


def runs_revisions(results: dict, scratch_revision: str) -> str:
    """The commit(s) the runs were made with: one hash, or each hash with the scores whose runs used it."""
    by_revision: dict[str, set] = {}
    for per_score in results.values():
        for score, per_seed in per_score.items():
            for run in per_seed.values():
                by_revision.setdefault(run.get("git_revision", scratch_revision), set()).add(score)
    if len(by_revision) <= 1:
        return next(iter(by_revision), scratch_revision)
    return "; ".join(f"{rev} ({', '.join(sorted(scores))})" for rev, scores in sorted(by_revision.items()))


def write_outputs(out: Path, args, argv, results, summary, schedules, elapsed, revision) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        panels = {
            ROW_NAMES[s]: helpers.mean_ranks([results[task][s][str(seed)]["ranks"] for seed in args.seeds])
            for s in args.scores
            if s not in (BASELINE, SAME_SCALE)
        }
        if panels:
            helpers.save_rank_panels(
                panels,
                out / f"rank_heatmap_{task}.png",
                title=f"{task}: kept rank per matrix, mean over seeds {args.seeds}",
            )
    machine = {
        **machine_summary(),
        "git_revision": runs_revisions(results, revision),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    payload = {
        "command": helpers.command_line("score_study", argv),
        "scale": {k: v for k, v in vars(args).items() if k not in ("scratch", "out", "cache_dir")},
        "schedules": schedules,
        "machine": machine,
        "elapsed_seconds": round(elapsed, 1),
        "summary": summary,
        "runs": results,
    }
    helpers.write_json(out / "results.json", payload)
    text = report_markdown(args, argv, summary, results, schedules, machine, elapsed)
    helpers.write_text(out / "REPORT.md", text)


def metric_headers(tasks) -> list[tuple[str, str]]:
    return [(task, metric) for task in tasks for metric in TASK_COLUMNS[task]]


def format_wall(seconds: float | None) -> str:
    """A run's wall time for the report: whole seconds, or "—" for a reused run that recorded none."""
    return "—" if seconds is None else f"{seconds:.0f}"


def total_run_seconds(results) -> float:
    return sum(run["wall_seconds"] or 0.0 for task in results.values() for s in task.values() for run in s.values())


def report_markdown(args, argv, summary, results, schedules, machine, elapsed) -> str:
    alpha, _ = helpers.adapter_values(args)
    lr_text = helpers.learning_rate_text(args)
    columns = metric_headers(args.tasks)
    headers = ["score"] + [f"{t} {m}" for t, m in columns] + ["avg"]
    rows = []
    for score in args.scores:
        row = [ROW_NAMES[score]]
        row += [helpers.format_mean_std(summary[score][f"{t}/{m}"]["values"], scale=100) for t, m in columns]
        row.append(helpers.format_mean_std(summary[score]["average"]["values"], scale=100))
        rows.append(row)
    main_table = helpers.markdown_table(headers, rows)

    seed_headers = ["score", "seed"] + [f"{t} {m}" for t, m in columns] + ["avg", "final budget", "wall s"]
    seed_rows = []
    for score in args.scores:
        for seed in args.seeds:
            cells = [ROW_NAMES[score], seed]
            cells += [f"{100 * results[t][score][str(seed)]['metrics'][m]:.2f}" for t, m in columns]
            cells.append(f"{100 * average_main_metric(results, args.tasks, score, seed):.2f}")
            budgets = "/".join(str(results[t][score][str(seed)]["total_budget"]) for t in args.tasks)
            walls = "/".join(format_wall(results[t][score][str(seed)]["wall_seconds"]) for t in args.tasks)
            seed_rows += [cells + [budgets, walls]]
    seed_table = helpers.markdown_table(seed_headers, seed_rows)

    gap_table = ""
    if "sensitivity" in args.scores:
        gap_rows = []
        for score in args.scores:
            if score == "sensitivity":
                continue
            gap = summary[score]["average_minus_sensitivity"]
            per_task = [
                helpers.format_paired(
                    summary[score][f"{t}/{TASK_COLUMNS[t][0]}_minus_sensitivity"]["values"], scale=100
                )
                for t in args.tasks
            ]
            gap_rows.append(
                [
                    ROW_NAMES[score],
                    *per_task,
                    helpers.format_paired(gap["values"], scale=100),
                    " / ".join(f"{100 * g:+.2f}" for g in gap["values"]),
                    f"{len(summary[score]['tasks_ahead'])} of {len(args.tasks)}",
                ]
            )
        gap_table = helpers.markdown_table(
            ["score"]
            + [f"Δ {t} {TASK_COLUMNS[t][0]}" for t in args.tasks]
            + ["Δ avg", "Δ avg per seed", "tasks ahead"],
            gap_rows,
        )

    schedule_rows = [
        [t, s["train_examples"], s["dev_examples"], s["total_steps"], s["t_init"], s["t_final"], s["delta_t"]]
        for t, s in schedules.items()
    ]
    schedule_table = helpers.markdown_table(
        ["task", "train examples", "dev examples", "total steps", "t_init", "t_final", "ΔT"], schedule_rows
    )
    heatmaps = "\n".join(f"![{t}](rank_heatmap_{t}.png)" for t in args.tasks)
    baseline_note = (
        f"""* Baseline **fixed rank {args.r_target}**: the same SVD-form adapter (`P diag(λ) Q`, λ starting at 0, the
  same γ) with r_init = r_target = {args.r_target}: the budget starts at its target, so no triplet is ever
  masked. It has the same final number of triplets as the AdaLoRA runs and is, up to the SVD parameterisation (and the
  orthogonal regulariser when γ > 0), LoRA at rank {args.r_target} on the same 36 matrices. Its adapter scale
  is α / r_init = {alpha:g} / {args.r_target} (the AdaLoRA runs use {alpha:g} / {args.r_init}).
"""
        if BASELINE in args.scores
        else ""
    )
    notes = "".join(f"* **{ROW_NAMES[v]}**: {VARIANT_NOTES[v]}.\n" for v in args.scores if v in VARIANT_NOTES)
    reduced = bool(args.max_train_examples)
    training_data = (
        f"a **seeded random subset of {args.max_train_examples} training examples** (a different subset per seed)"
        if reduced
        else "**the whole train split**"
    )
    task_names = " and ".join(f"`{t}` ({TASK_DESCRIPTIONS[t]})" for t in args.tasks)
    steps = " / ".join(str(s["total_steps"]) for s in schedules.values())
    seed_sets = ("the training subset, " if reduced else "") + "the head and adapter init, the data order and dropout"
    return f"""# Score study: sensitivity vs movement vs Fisher vs GSNR (and a fixed-rank baseline)

Generated by `scripts/studies/score_study.py`; the "Reading" section at the end is written by hand after the run
(it is `reading.md` beside this file, pasted in by the script).

## Setup ({helpers.scale_title(args)})

Command (from the repository root):

    {helpers.command_line("score_study", argv)}

* Model: pretrained all-MiniLM-L6-v2 (`minilm-l6`, BERT, 6 layers, hidden 384) with a fresh classifier; the
  task head (BERT pooler + classifier) trains fully alongside the adapters, the encoder is frozen.
* Tasks: {task_names}, the Rotten-Tomatoes sentences of `vadersentiment==3.3.2`; the dev split is fixed (sizes
  below) and always evaluated in full. Training uses {training_data}, {args.epochs} epoch(s), batch
  {args.batch_size}, max sequence length {args.max_seq_length}.
* AdaLoRA: adapters on the six matrices of each layer (36 matrices), r_init = {args.r_init} → r_target =
  {args.r_target} (final budget {args.r_target} × 36 = {args.r_target * 36} triplets),
  {helpers.adapter_scale_text(args)}, β1 = β2 = 0.85, AdaLoRA smoothing (EMA × uncertainty); AdamW lr
  {lr_text} with 6 % warm-up and linear decay, weight decay 0.01, clip 1.0; dropout on. Fisher and GSNR
  use exact per-example statistics unless the variant says running; every score is smoothed as AdaLoRA does
  unless the variant says otherwise.
{notes}* Schedule scaled to the run (t_init = {args.init_fraction:.0%}, t_final = {args.final_fraction:.0%} of the
  steps):

{schedule_table}
{baseline_note}* Seeds {args.seeds}: the seed sets {seed_sets}.
  Each run evaluates once, at the end; the number reported is that final dev metric (no checkpoint selection).
* Machine: {machine["cpu_count"]} CPU cores shared with other jobs ({machine["platform"]}, JAX {machine["jax"]},
  backend {machine["backend"]}); library at commit(s) `{machine["git_revision"]}`. The runs took
  {total_run_seconds(results) / 60:.1f} min of wall time in all (sum over the runs this study made, compilation
  included; reused runs, "—" below, are not counted; the invocation that wrote this report: {elapsed / 60:.1f} min).

This is far from the paper's setting (DeBERTa-v3-base, full GLUE, 3 epochs or more, tuned learning rates):
each run here takes {steps} optimizer steps with a 6-layer MiniLM.

## Results (dev, ×100, mean ± sample std over {len(args.seeds)} seeds)

"avg" is the mean over the tasks of each task's main metric (accuracy; Pearson), per seed, then mean ± std.

{helpers.snippet_section("results", main_table)}
### Paired differences to sensitivity (same seed = same data subset, init and order)

Δ = score − sensitivity for the same seed, ×100: mean ± standard error over seeds (sample std / √n), and in
brackets the number of seeds on which the score is ahead of sensitivity. "Tasks ahead": the tasks on which the
score's mean difference is positive and it is ahead on more than half of the seeds.

{helpers.snippet_section("paired", gap_table) if gap_table else "(sensitivity not in this study)"}
### Every run

Final budget is the number of kept triplets at the end (per task, `/`-separated); wall s is the wall time of the
run (load, compile or cache hit, training, one evaluation) per task.

{seed_table}
## Rank patterns (kept rank per matrix, mean over seeds)

Rows are layers, columns the six matrices (Wq, Wk, Wv, Wo: attention query, key, value, output; Wf1, Wf2: the
feed-forward up and down projections). The fixed-rank baseline is 8 everywhere and not drawn.

{heatmaps}

## Reading

{helpers.reading_text(args.out)}"""


if __name__ == "__main__":
    sys.exit(main())

"""Defaults study: which adapter scale, regulariser and trained head make the built-in run win, per task.

Issue 22: PEFT's AdaLoRA as its users commonly run it (lora_alpha 32, no task type so no orthogonal
regulariser, only the classifier trained) beat our defaults (α 16, γ 0.1, pooler + classifier) by 4-7
points on one seed. This study measures each choice, paired by seed, next to the choice of score.

Grid (``settings_grid()``): adapter scale α ∈ {16, 32} (α / r_init ∈ {1, 2} at r_init 16), orthogonal
regularisation γ ∈ {0.1, 0}, trained head ∈ {pooler + classifier (the training command's default
``--head-pattern``), classifier only}: 8 settings with the training command's default score, sensitivity
(``--scores sensitivity gsnr`` crosses them with GSNR too, 16 settings); on ``subjectivity``,
``movie-sentiment`` and ``movie-rating``; seeds 0, 1, 2 (the seed sets the training subset, the head and adapter
init, the data order and dropout). Everything else is the built-in run (``DEFAULT_RUN``: MiniLM-L6, r 16 → 8 on
the six matrices of each layer, AdamW, 48 tokens, batch 32, 1 epoch) on a seeded training subset
(``--max-train-examples``, default 3,072: 96 steps, a third of the built-in run's 297), the AdaLoRA schedule
scaled to the run (t_init 10 %, t_final 20 % of the steps, as the built-in run's 30 / 60; ΔT 2, as
``score_study.py``, so that the budget decreases in ~33 re-allocations, the built-in run's 41), one evaluation
on the whole dev split at the end. The learning rate is the built-in run's unless ``--learning-rate`` says
otherwise: the study is about its defaults, and a short run favours whatever trains faster (α 32 doubles the
adapters' effective step), so the chosen defaults must be checked at full length (issue 22's five-seed built-in
run). The committed study ran at lr 1e-3, the built-in run's then (it is 2e-3 since, chosen at full length:
docs/DEFAULTS_STUDY.md), so its commands pass ``--learning-rate 0.001``. The score is not crossed by
default: how much the score matters is the score study's question (``score_study.py``), and crossing it
doubles the cost.

Budget: "about 4 CPU-hours". Shorter runs do not measure what matters: at 48 steps the classifier-only runs
had not started to learn (subjectivity, seed 0, dev accuracy: former defaults 83.3, α 32 γ 0 classifier only
53.2, α 16 γ 0.1 classifier only 50.8, where chance is 50), while at 64 steps α 32 γ 0 classifier only reached
84.8 (former defaults 84.3); a study in that regime would measure how fast a cold classifier starts, not which
settings win. So the default is 96 steps, and the 72 runs (8 settings × 3 tasks × 3 seeds) would take about
72 × 200 s on the 2 free cores, a little over the budget. The committed study ran the whole grid on seed 0 and,
on seeds 1 and 2, the four settings of ``PATH`` (the former defaults, then γ 0, then α 32, then classifier only:
PEFT's common settings), so that every choice between the two ends is measured paired on three seeds; 48 runs:

    python -m scripts.studies.defaults_study --seeds 0 --learning-rate 0.001
    python -m scripts.studies.defaults_study --seeds 1 2 --learning-rate 0.001 --settings a16-g0.1-pc-sensitivity \
        a16-g0-pc-sensitivity a32-g0-pc-sensitivity a32-g0-c-sensitivity

Every result file records its wall and training seconds.

Resumable: each finished run adds its record (metrics, kept ranks, times, commit, the run's settings) to
``<out>/runs.json`` under ``<task>/<setting>-s<seed>``; a later invocation reuses it instead of training again
(and refuses one made at other settings). After every run ``results.json`` and ``REPORT.md`` are rewritten from
all records there, so an interrupted study always has its table. Runs go seed-major, then task, then
setting (the former defaults, PEFT's common settings, then the settings one choice away from either), so
the whole grid on one task and seed is finished before the next one starts.

    python -m scripts.studies.defaults_study                                  # the study, into docs/studies/defaults
    python -m scripts.studies.defaults_study --list --learning-rate 0.001     # the plan and what is done
    python -m scripts.studies.defaults_study --report-only --learning-rate 0.001   # rewrite the table, train nothing
    python -m scripts.studies.defaults_study --max-runs 1 --out /tmp/ds --tasks subjectivity --seeds 0   # time one
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scripts.studies import score_study
from scripts.studies import study_helpers as helpers

TASKS = ("subjectivity", "movie-sentiment", "movie-rating")
MAIN_METRICS = {"subjectivity": "accuracy", "movie-sentiment": "accuracy", "movie-rating": "pearson"}
HEAD_PATTERNS = {"pooler+classifier": r"(classifier|pooler|qa_outputs)\..*", "classifier": r"classifier\..*"}
SCORES = ("sensitivity", "gsnr")
# The factors, each as (field, first level, second level): effects are "second minus first".
FACTORS = (
    ("alpha", 16.0, 32.0),
    ("gamma", 0.1, 0.0),
    ("head", "pooler+classifier", "classifier"),
    ("score", "sensitivity", "gsnr"),
)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SCORES = ("sensitivity",)  # the training command's default score; gsnr doubles the grid
DEFAULT_MAX_TRAIN_EXAMPLES = 3072


@dataclasses.dataclass(frozen=True)
class Setting:
    """One cell of the grid: adapter scale numerator, orthogonal regularisation weight, trained head, score."""

    alpha: float
    gamma: float
    head: str
    score: str

    @property
    def name(self) -> str:
        head = "pc" if self.head == "pooler+classifier" else "c"
        return f"a{self.alpha:g}-g{self.gamma:g}-{head}-{self.score}"

    def overrides(self) -> dict:
        """The training command's fields this setting sets."""
        return {
            "alpha": float(self.alpha),
            "orth_reg_weight": float(self.gamma),
            "head_pattern": HEAD_PATTERNS[self.head],
            "score": self.score,
        }

    def replace(self, **changes) -> Setting:
        return dataclasses.replace(self, **changes)


FORMER = Setting(alpha=16.0, gamma=0.1, head="pooler+classifier", score="sensitivity")  # before this study
CHOSEN = Setting(alpha=32.0, gamma=0.0, head="pooler+classifier", score="sensitivity")  # the defaults it chose
PEFT_COMMON = Setting(alpha=32.0, gamma=0.0, head="classifier", score="sensitivity")  # PEFT as commonly run
# From the former defaults to PEFT's common settings, one choice at a time: the settings the seeds after the
# first are run on (``--settings``), so that each choice is measured paired by seed on every seed.
PATH = (
    FORMER,
    FORMER.replace(gamma=0.0),
    CHOSEN,
    PEFT_COMMON,
)


def changes(a: Setting, b: Setting) -> int:
    """How many of the four choices differ between two settings."""
    return sum(getattr(a, factor) != getattr(b, factor) for factor, _, _ in FACTORS)


def settings_grid(scores: Sequence[str] = SCORES) -> list[Setting]:
    """Every combination of the choices with ``scores`` (all 16 by default), the most telling first: the current
    defaults, PEFT's common settings, the settings one choice away from either (each choice's effect from both
    ends), then the rest; ties in grid order."""
    grid = [
        Setting(alpha, gamma, head, score)
        for score in scores
        for alpha in (16.0, 32.0)
        for gamma in (0.1, 0.0)
        for head in HEAD_PATTERNS
    ]
    return sorted(grid, key=lambda s: (min(changes(s, FORMER), changes(s, PEFT_COMMON)), s != FORMER))


def select_settings(grid: Sequence[Setting], names: Sequence[str]) -> list[Setting]:
    """The settings of ``grid`` named in ``names`` (all of it when ``names`` is empty), in grid order.

    Raises ``ValueError`` naming an unknown setting and the known ones."""
    known = {setting.name for setting in grid}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--settings {unknown[0]}: not in the grid; expected one of {', '.join(sorted(known))}")
    return [setting for setting in grid if not names or setting.name in names]


def plan(tasks: Sequence[str], seeds: Sequence[int], settings: Sequence[Setting]) -> list[tuple[int, str, Setting]]:
    """``(seed, task, setting)`` in run order: seed-major, then task, then setting."""
    return [(seed, task, setting) for seed in seeds for task in tasks for setting in settings]


def _digest(overrides: dict) -> str:
    """A short hash of a run's settings (output folder excluded): names its scratch folder."""
    settings = {k: v for k, v in overrides.items() if k != "output_dir"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


# ---- running -------------------------------------------------------------------------------------


def task_schedule(task: str, args) -> dict:
    """Train and dev sizes of ``task`` at the study's scale and the scaled AdaLoRA schedule."""
    n_train, n_dev = helpers.split_sizes(task, args)
    total_steps = args.epochs * (n_train // args.batch_size)
    schedule = helpers.scaled_schedule(
        total_steps, init_fraction=args.init_fraction, final_fraction=args.final_fraction, delta_t=args.delta_t
    )
    return {"train_examples": n_train, "dev_examples": n_dev, "total_steps": total_steps, **schedule}


def run_study(
    args,
    schedules: dict[str, dict],
    command: str,
    *,
    train_run: Callable[[dict, str], dict] = score_study.one_run,
    log: Callable[[str], None] = print,
) -> int:
    """Runs (or reuses) every run of the plan; after each, rewrites the outputs. Returns the runs trained.

    ``train_run(overrides, revision)`` trains one run and returns its summary (``score_study.one_run``);
    ``command`` is how the study was invoked, for the report.
    """
    out, scratch = Path(args.out), Path(args.scratch)
    revision = helpers.recorded_revision(out)
    runs = plan(args.tasks, args.seeds, select_settings(settings_grid(args.scores), args.settings))
    done = helpers.load_run_records(out)
    started, trained = time.time(), 0
    for number, (seed, task, setting) in enumerate(runs, start=1):
        key = helpers.run_key(task, setting.name, seed)
        overrides = helpers.scaled_run_overrides(
            task, seed, schedules[task]["total_steps"], args, Path("."), **setting.overrides()
        )
        overrides["output_dir"] = str(scratch / f"{task}-{setting.name}-s{seed}-{_digest(overrides)}")
        head = f"[{time.time() - started:7.0f} s] run {number}/{len(runs)}: {task} {setting.name} seed {seed}"
        if key in done:
            helpers.check_reusable(f"{out / helpers.RUN_RECORDS}: {key}", done[key]["overrides"], overrides)
            log(f"{head}: done before, reused")
            continue
        if args.max_runs and trained >= args.max_runs:
            log(f"{head}: not run (--max-runs {args.max_runs} reached)")
            continue
        log(f"{head}: training")
        summary = train_run(overrides, revision)
        record = {"task": task, "seed": seed, "setting": dataclasses.asdict(setting), "overrides": overrides}
        done[key] = {**record, **summary}
        helpers.save_run_record(out, key, done[key])
        trained += 1
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items())
        log(f"    -> {metrics}; wall {summary['wall_seconds']} s")
        write_outputs(args, schedules, command)
    write_outputs(args, schedules, command)
    return trained


# ---- statistics ----------------------------------------------------------------------------------


def load_results(out: Path) -> dict[str, dict[str, dict[int, dict]]]:
    """``{task: {setting name: {seed: record}}}`` of every finished run in ``out/runs.json``."""
    results: dict = {}
    for _, record in sorted(helpers.load_run_records(out).items()):
        setting = Setting(**record["setting"])
        results.setdefault(record["task"], {}).setdefault(setting.name, {})[int(record["seed"])] = record
    return results


def main_metric(task: str, record: dict) -> float:
    return float(record["metrics"][MAIN_METRICS[task]])


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """``b - a`` on the seeds both have: values by seed, mean, standard error (nan below 2 seeds), n."""
    seeds = sorted(set(a) & set(b))
    differences = [b[s] - a[s] for s in seeds]
    return difference_summary(dict(zip(seeds, differences, strict=True)))


def difference_summary(by_seed: dict[int, float]) -> dict:
    """Mean and standard error (sample std / √n; nan below 2 values) of per-seed differences."""
    values = list(by_seed.values())
    if not values:
        return {"by_seed": {}, "mean": float("nan"), "se": float("nan"), "n": 0}
    mean, se = helpers.mean_se(values)
    return {"by_seed": by_seed, "mean": mean, "se": se, "n": len(values)}


def main_effect(values: dict[str, dict[int, float]], factor: str, first, second) -> dict:
    """Per seed, the mean over the other factors' cells of (``second`` − ``first`` level of ``factor``); then
    mean and standard error over seeds. Only seeds that have every pair some seed has count, so that each
    seed's value averages the same cells (a seed run on part of the grid is left out here; the path table
    uses it)."""
    pairs = []
    for setting in settings_grid():
        if getattr(setting, factor) == first:
            low, high = values.get(setting.name, {}), values.get(setting.replace(**{factor: second}).name, {})
            if set(low) & set(high):
                pairs.append((low, high))
    seeds = set.intersection(*(set(low) & set(high) for low, high in pairs)) if pairs else set()
    return difference_summary(
        {seed: sum(high[seed] - low[seed] for low, high in pairs) / len(pairs) for seed in sorted(seeds)}
    )


def path_steps(values: dict[str, dict[int, float]]) -> list[dict]:
    """Each step of :data:`PATH`, one choice at a time: the choice, the two settings, and the paired
    difference (``paired``) over the seeds both have."""
    steps = []
    for before, after in zip(PATH, PATH[1:], strict=False):
        (factor,) = [f for f, _, _ in FACTORS if getattr(before, f) != getattr(after, f)]
        difference = paired(values.get(before.name, {}), values.get(after.name, {}))
        steps.append({"choice": factor, "from": before.name, "to": after.name, **difference})
    return steps


def summarize(results: dict) -> dict:
    """Per task: per setting mean ± std and the paired difference to the former defaults; the main effects."""
    summary = {}
    for task, per_setting in results.items():
        values = {name: {s: main_metric(task, r) for s, r in runs.items()} for name, runs in per_setting.items()}
        rows = {}
        for setting in settings_grid():
            if setting.name not in values:
                continue
            by_seed = values[setting.name]
            mean, std = helpers.mean_std(list(by_seed.values()))
            rows[setting.name] = {
                "values": by_seed,
                "mean": mean,
                "std": std,
                "minus_former": paired(values.get(FORMER.name, {}), by_seed),
            }
        effects = {factor: main_effect(values, factor, a, b) for factor, a, b in FACTORS}
        summary[task] = {
            "metric": MAIN_METRICS[task],
            "settings": rows,
            "main_effects": effects,
            "path": path_steps(values),
        }
    return summary


# ---- outputs -------------------------------------------------------------------------------------

FACTOR_LABELS = {
    "alpha": "α 32 − α 16",
    "gamma": "γ 0 − γ 0.1",
    "head": "classifier only − pooler + classifier",
    "score": "gsnr − sensitivity",
}


def _mean_se(d: dict) -> str:
    if not d["n"]:
        return "—"
    se = "" if d["n"] < 2 else f" ± {100 * d['se']:.2f}"
    return f"{100 * d['mean']:+.2f}{se} (n {d['n']})"


def report_markdown(args, command: str, schedules: dict, summary: dict, n_done: int, n_planned: int) -> str:
    """The study's table: per task, every setting (mean ± std, paired Δ to the former defaults) and the
    main effect of each choice (paired by seed, mean ± standard error)."""
    lr = helpers.learning_rate_value(args)
    sections = []
    for task in args.tasks:
        if task not in summary:
            continue
        part = summary[task]
        rows = []
        for setting in settings_grid():
            row = part["settings"].get(setting.name)
            if row is None:
                continue
            label = setting.name + (" (former defaults)" if setting == FORMER else "")
            label += " (the defaults now)" if setting == CHOSEN else ""
            label += " (PEFT as commonly run)" if setting == PEFT_COMMON else ""
            values = list(row["values"].values())
            cell = helpers.format_mean_std(values, scale=100)
            rows.append([label, len(values), cell, _mean_se(row["minus_former"])])
        table = helpers.markdown_table(
            ["setting", "seeds", f"dev {part['metric']} ×100 (mean ± std)", "Δ to former defaults (± SE)"], rows
        )
        effects = helpers.markdown_table(
            ["choice", "Δ ×100 (mean ± SE over seeds)", "per seed"],
            [
                [
                    FACTOR_LABELS[factor],
                    _mean_se(part["main_effects"][factor]),
                    " / ".join(f"{100 * v:+.2f}" for v in part["main_effects"][factor]["by_seed"].values()),
                ]
                for factor, _, _ in FACTORS
            ],
        )
        path = helpers.markdown_table(
            ["choice", "from", "to", "Δ ×100 (mean ± SE over seeds)", "per seed"],
            [
                [
                    FACTOR_LABELS[step["choice"]],
                    step["from"],
                    step["to"],
                    _mean_se(step),
                    " / ".join(f"s{seed} {100 * v:+.2f}" for seed, v in step["by_seed"].items()),
                ]
                for step in part["path"]
            ],
        )
        s = schedules[task]
        scale = f"{s['train_examples']} train examples, {s['total_steps']} steps, dev {s['dev_examples']}"
        sections.append(
            f"## {task} ({scale})\n\n{table}\n"
            "From the former defaults to PEFT's common settings, one choice at a time (paired by seed):\n\n"
            f"{path}\nMain effects (each averaged over the other choices' cells; seeds run on the whole grid):"
            f"\n\n{effects}"
        )
    body = "\n".join(sections) or "(no finished runs yet)\n"
    return f"""# Defaults study (issue 22)

Generated by `scripts/studies/defaults_study.py` from the run records in `runs.json`; {n_done} of {n_planned}
planned runs are done. Command:

    {command}

Settings are named `a<α>-g<γ>-<head>-<score>`: head `pc` = pooler + classifier (the training command's default
`--head-pattern`), `c` = classifier only. The former defaults are `{FORMER.name}`, the defaults now (chosen
from this study) `{CHOSEN.name}`; PEFT as commonly run (lora_alpha 32, no task type so no regulariser, classifier
only) corresponds to `{PEFT_COMMON.name}`.
Everything else is the built-in run at a reduced scale: a seeded subset of {args.max_train_examples or "all"}
training examples, {args.epochs} epoch, {args.max_seq_length} tokens, learning rate {lr:g}, schedule t_init
{args.init_fraction:.0%} / t_final {args.final_fraction:.0%} of the steps, ΔT {args.delta_t}. Δ are paired by seed
(same subset, init and order); SE = sample std of the per-seed differences / √n. Metrics ×100.

{body}"""


def write_outputs(args, schedules: dict, command: str) -> None:
    """``results.json`` and ``REPORT.md`` in ``--out`` from every result file there."""
    out = Path(args.out)
    results = load_results(out)
    summary = summarize(results)
    planned = plan(args.tasks, args.seeds, settings_grid(args.scores))
    n_planned = len(planned)
    done = helpers.load_run_records(out)
    n_done = sum(helpers.run_key(task, setting.name, seed) in done for seed, task, setting in planned)
    payload = {
        "command": command,
        "scale": {
            k: v for k, v in vars(args).items() if k not in ("scratch", "out", "cache_dir", "list", "report_only")
        },
        "schedules": schedules,
        "runs_done": n_done,
        "runs_planned": n_planned,
        "summary": summary,
    }
    helpers.write_json(out / "results.json", payload)
    helpers.write_text(out / "REPORT.md", report_markdown(args, command, schedules, summary, n_done, n_planned))


# ---- command line --------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument(
        "--scores",
        nargs="+",
        default=list(DEFAULT_SCORES),
        choices=list(SCORES),
        help="the scores to cross with the other choices (default: the training command's, sensitivity)",
    )
    helpers.add_scale_arguments(parser)
    parser.set_defaults(max_train_examples=DEFAULT_MAX_TRAIN_EXAMPLES)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[],
        metavar="NAME",
        help="run only these settings of the grid, by name (e.g. a32-g0-pc-sensitivity; default: all of them)",
    )
    parser.add_argument("--max-runs", type=int, default=0, help="train at most this many new runs (0: all)")
    parser.add_argument("--list", action="store_true", help="print the plan and what is done; train nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite the table from the result files")
    parser.add_argument("--scratch", default="/tmp/defaults_study", help="run folders (checkpoints), outside the repo")
    parser.add_argument("--out", default="docs/studies/defaults", help="result files, results.json, REPORT.md")
    args = parser.parse_args(argv)
    if args.max_runs < 0:
        parser.error(f"--max-runs {args.max_runs}: expected >= 0")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: a seed is given twice")
    try:
        select_settings(settings_grid(args.scores), args.settings)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.list:
        runs = plan(args.tasks, args.seeds, select_settings(settings_grid(args.scores), args.settings))
        done = helpers.load_run_records(out)
        for number, (seed, task, setting) in enumerate(runs, start=1):
            state = "done" if helpers.run_key(task, setting.name, seed) in done else "to do"
            print(f"{number:4d} {task:16s} {setting.name:28s} seed {seed}: {state}")
        return 0
    command = helpers.command_line("defaults_study", argv)
    schedules = {task: task_schedule(task, args) for task in args.tasks}
    if args.report_only:
        write_outputs(args, schedules, command)
        print(f"wrote {out}/REPORT.md", flush=True)
        return 0
    helpers.enable_compilation_cache(args.cache_dir)
    started = time.time()
    try:
        trained = run_study(args, schedules, command, log=lambda line: print(line, flush=True))
    except ValueError as err:
        print(f"defaults_study: {err}", file=sys.stderr)
        return 2
    print(f"trained {trained} runs in {time.time() - started:.0f} s; wrote {out}/REPORT.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

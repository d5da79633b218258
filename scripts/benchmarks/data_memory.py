"""Memory and time of reading and tokenising a large sentence-pair csv through the data layer (a benchmark).

Writes a synthetic csv of ``--rows`` sentence pairs (MNLI/QQP size by default: 400,000) with three string
classes, then, as ``python -m jax_adalora.train --train-file ... --validation-file ...`` does, reads it
with ``datasets`` (Arrow, cached), infers the task, checks every row, and tokenises it with the MiniLM
tokenizer into the padded arrays training batches come from; twice, the second time from the cache.
Prints a table and writes JSON: per phase, wall seconds and the process's peak RSS so far.

    python -m scripts.benchmarks.data_memory --out runs/data_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = (
    "the a film market team phone cell vote bank goal chip star court ship rain city song road light plan "
    "price game book news storm field glass river stone wind fire cloud paper music story dream"
).split()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = np.array(["entailment", "neutral", "contradiction"])
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sentence1,sentence2,label\n")
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            lengths = rng.integers(8, 30, size=(n, 2))
            ids = rng.integers(len(WORDS), size=(n, 60))
            for i in range(n):
                first = " ".join(WORDS[j] for j in ids[i, : lengths[i, 0]])
                second = " ".join(WORDS[j] for j in ids[i, 30 : 30 + lengths[i, 1]])
                handle.write(f"{first},{second},{labels[ids[i, 0] % 3]}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000, help="sentence pairs in the train csv")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--out", default="", help="JSON results file")
    args = parser.parse_args(argv)

    from jax_adalora.models import load_tokenizer
    from jax_adalora.tasks import load_task

    work = Path(tempfile.mkdtemp(prefix="data_memory-"))
    try:
        phases = []
        started = time.time()
        write_csv(work / "train.csv", args.rows)
        write_csv(work / "dev.csv", 2_000, seed=1)
        phases.append({"phase": f"write the {args.rows:,}-row csv", "seconds": time.time() - started})
        tokenizer = load_tokenizer("minilm-l6")
        baseline = peak_rss_mb()
        for attempt in ("first run (read, check, tokenise)", "second run (from the datasets cache)"):
            started = time.time()
            data = load_task(
                "",
                tokenizer=tokenizer,
                max_seq_length=args.max_seq_length,
                train_file=work / "train.csv",
                validation_file=work / "dev.csv",
                datasets_cache_dir=work / "cache",
            )
            phases.append(
                {
                    "phase": attempt,
                    "seconds": time.time() - started,
                    "peak_rss_mb": peak_rss_mb(),
                    "rows": len(data.train),
                }
            )
            arrays_mb = sum(
                a.nbytes for a in (data.train.input_ids, data.train.attention_mask, data.train.token_type_ids)
            )
            del data
        result = {
            "benchmark": "data_memory",
            "rows": args.rows,
            "max_seq_length": args.max_seq_length,
            "csv_mb": (work / "train.csv").stat().st_size / 2**20,
            "token_arrays_mb": arrays_mb / 2**20,
            "peak_rss_before_loading_mb": baseline,
            "phases": phases,
            "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.rows:,} pairs, csv {result['csv_mb']:.0f} MB, token arrays {result['token_arrays_mb']:.0f} MB")
    print(f"{'phase':<45} {'seconds':>8} {'peak RSS MB':>12}")
    for row in phases:
        print(f"{row['phase']:<45} {row['seconds']:>8.1f} {row.get('peak_rss_mb', float('nan')):>12.0f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

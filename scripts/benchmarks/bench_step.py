"""Step time of the AdaLoRA training step per gradient-statistics mode (a benchmark, not a test).

Model: a MiniLM-sized BERT stand-in (6 layers, hidden 384, 12 heads, FFN 1536; random weights) with a
classification head, rank-16 adapters on the six matrices per layer; batch 32 x 64 tokens, fp32.
Modes: sensitivity (batch gradient), GSNR with exact per-example moments, GSNR with running moments.
Each step is the full jitted train step (loss + orthogonal regularisation, statistics, clip + AdamW +
rank allocator). Compile time is reported apart; step times are medians over repeats, the modes
interleaved so that machine noise hits them alike.

``--step-options both`` builds every mode twice, compiled with the library's XLA options
(``runtime.step_compiler_options``) and with XLA's defaults, and times all of them interleaved in one
process; each row's ratio is then taken round by round against the sensitivity step compiled the same way.

    python -m scripts.benchmarks.bench_step --out runs/bench_step.json
    python -m scripts.benchmarks.bench_step --repeats 5 --batch-size 32 --seq-len 48 --malloc-tuning off  # then on
    python -m scripts.benchmarks.bench_step --seq-len 128 --step-options both --out runs/bench_step_options.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.adapters import inject_adapters, trainable_filter
from jax_adalora.cli.report import atomic_write_json, machine_summary
from jax_adalora.cli.runtime import keep_freed_memory
from jax_adalora.cli.step import make_train_step
from jax_adalora.config import AdaLoRAConfig, OptimConfig
from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.heads import SequenceClassifier
from jax_adalora.training import FunctionalModel, adalora_optimizer, init_train_state

MODES = {
    "sensitivity (batch gradient)": dict(score="sensitivity", statistics="per_example"),
    "gsnr (per-example moments)": dict(score="gsnr", statistics="per_example"),
    "gsnr (running moments)": dict(score="gsnr", statistics="running"),
}


def build(mode: dict, args, total_steps: int = 1000, step_options: str = "library"):
    """The step for ``mode``, compiled with the library's XLA options or (``"xla-default"``) XLA's defaults."""
    config = EncoderConfig.minilm_l6()
    model = SequenceClassifier(config, num_labels=2, rngs=nnx.Rngs(0))
    adalora = AdaLoRAConfig(r_init=args.rank, r_target=args.rank // 2, t_init=10, t_final=10, **mode)
    inject_adapters(model, adalora, rngs=nnx.Rngs(1))
    functional = FunctionalModel(model, trainable_filter(r"classifier\..*"))
    tx = adalora_optimizer(OptimConfig(), adalora, total_steps)
    state = init_train_state(functional, tx, adalora)
    compiler_options = {} if step_options == "xla-default" else None
    step = make_train_step(functional, tx, adalora, "classification", dropout=True, compiler_options=compiler_options)
    return step, state, functional.frozen


def _baselines(runs: dict, variant_count: int) -> list[list[float]]:
    """For each run in order, the times of the sensitivity step built with the same variant."""
    names = list(runs)
    per_variant = len(names) // variant_count
    return [runs[names[(i // per_variant) * per_variant]]["times"] for i in range(len(names))]


def make_batch(args, vocab: int = 30522):
    rng = np.random.default_rng(0)
    b, length = args.batch_size, args.seq_len
    return {
        "input_ids": jnp.asarray(rng.integers(1000, vocab, (b, length)), jnp.int32),
        "attention_mask": jnp.ones((b, length), jnp.int32),
        "token_type_ids": jnp.zeros((b, length), jnp.int32),
        "labels": jnp.asarray(rng.integers(0, 2, (b,)), jnp.int32),
        "example_mask": jnp.ones((b,), jnp.int32),
        "example_index": jnp.arange(b, dtype=jnp.int32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="")
    parser.add_argument("--malloc-tuning", choices=["on", "off"], default="on", help="as the training command")
    parser.add_argument(
        "--step-options",
        choices=["library", "xla-default", "both"],
        default="library",
        help="compile the steps with runtime.step_compiler_options (as the training command), XLA's defaults, or both",
    )
    args = parser.parse_args()
    malloc_tuned = args.malloc_tuning == "on" and keep_freed_memory()
    print(f"malloc tuning (jax_adalora.cli.runtime): {'on' if malloc_tuned else 'off'}", flush=True)

    batch = make_batch(args)
    variants = ["library", "xla-default"] if args.step_options == "both" else [args.step_options]
    runs = {}
    for variant, (name, mode) in ((v, m) for v in variants for m in MODES.items()):
        step, state, frozen = build(mode, args, step_options=variant)
        if len(variants) > 1:
            name = f"{name}, {variant}"
        t0 = time.perf_counter()
        state, metrics = step(state, frozen, batch, jax.random.key(0))
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        state, metrics = step(state, frozen, batch, jax.random.key(1))  # one more warm-up
        jax.block_until_ready(metrics)
        runs[name] = {"step": step, "state": state, "frozen": frozen, "compile_s": compile_s, "times": []}
        print(f"compiled {name}: {compile_s:.1f} s", flush=True)
    for i in range(args.repeats):
        for run in runs.values():
            t0 = time.perf_counter()
            run["state"], metrics = run["step"](run["state"], run["frozen"], batch, jax.random.key(2 + i))
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - t0)

    rows = []
    for (name, run), base in zip(runs.items(), _baselines(runs, len(variants)), strict=True):
        median = statistics.median(run["times"])
        rows.append(
            {
                "mode": name,
                "median_step_s": median,
                "min_step_s": min(run["times"]),
                "ratio_to_batch_gradient": median / statistics.median(base),
                "per_round_ratio_median": statistics.median(t / b for t, b in zip(run["times"], base, strict=True)),
                "compile_s": run["compile_s"],
            }
        )
    per_example = [r for r in rows if r["mode"].startswith("gsnr (per-example")]
    result = {
        "machine": {
            **machine_summary(),
            "processor": platform.processor(),
            "devices": [str(d) for d in jax.devices()],
            "malloc_tuning": malloc_tuned,
        },
        "setup": {"model": "MiniLM-L6 shape, random weights", **vars(args)},
        "rows": rows,
        "target": "per-example / batch-gradient step <= 1.10",
        "met": per_example[0]["ratio_to_batch_gradient"] <= 1.10,
    }
    print(f"\n{'mode':<46}{'median s':>10}{'min s':>9}{'ratio':>8}{'per round':>11}{'compile s':>11}")
    for r in rows:
        print(
            f"{r['mode']:<46}{r['median_step_s']:>10.3f}{r['min_step_s']:>9.3f}"
            f"{r['ratio_to_batch_gradient']:>8.2f}{r['per_round_ratio_median']:>11.2f}{r['compile_s']:>11.1f}"
        )
    for r in per_example:
        print(
            f"{r['mode']} / batch-gradient = {r['ratio_to_batch_gradient']:.2f} (target <= 1.10: "
            f"{'met' if r['ratio_to_batch_gradient'] <= 1.10 else 'not met'})"
        )
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()

"""Time of the per-example moments' reductions alone, compiled with XLA's defaults and with the library's options.

The exact statistics reduce each adapter's per-example gradient (B, ...) over its leading axis three times
(``E[g]``, ``E[g²]``, two-pass ``Var[g]``). This script times exactly that, for the per-example gradient shapes of
one MiniLM adapter layer at batch 32 (P and Q of a 384 → 384 and a 384 → 1536 projection, rank 16), compiled
with XLA's defaults and with ``runtime.step_compiler_options()`` (on CPU: YNNPACK for dots only). The two
programs are timed interleaved in one process; medians over repeats. A benchmark, not a test.

    python scripts/bench_example_sums.py --out docs/bench_example_sums.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_adalora.report import atomic_write_json, machine_summary
from jax_adalora.runtime import step_compiler_options

SHAPES = {"P 384x16": (384, 16), "Q 16x384": (16, 384), "P 1536x16": (1536, 16), "Q 16x1536": (16, 1536)}


def example_moments(g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean = jnp.mean(g, axis=0)
    return mean, jnp.mean(jnp.square(g), axis=0), jnp.mean(jnp.square(g - mean), axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--copies", type=int, default=10, help="tensors per program, so that one call is not tiny")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    options = step_compiler_options()
    variants = {"xla-default": {}, "library": options}
    rng = np.random.default_rng(0)
    rows = []
    for name, shape in SHAPES.items():
        grads = [jnp.asarray(rng.standard_normal((args.batch_size, *shape)), jnp.float32) for _ in range(args.copies)]

        def program(grads):
            return [example_moments(g) for g in grads]

        compiled = {v: jax.jit(program, compiler_options=o).lower(grads).compile() for v, o in variants.items()}
        times = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v, fn in compiled.items():
                started = time.perf_counter()
                jax.block_until_ready(fn(grads))
                times[v].append((time.perf_counter() - started) / args.copies)
        row = {"gradient": f"{name} (B={args.batch_size})"}
        row.update({f"{v}_ms": 1e3 * statistics.median(t) for v, t in times.items()})
        row["speed-up"] = row["xla-default_ms"] / row["library_ms"]
        rows.append(row)

    print(f"library options: {options or 'none (not on CPU, or switched off)'}")
    print(f"\n{'per-example gradient':<24}{'XLA default, ms':>17}{'library, ms':>13}{'speed-up':>10}")
    for r in rows:
        print(f"{r['gradient']:<24}{r['xla-default_ms']:>17.3f}{r['library_ms']:>13.3f}{r['speed-up']:>9.1f}x")
    result = {
        "benchmark": "E[g], E[g2], Var[g] over the example axis, per tensor (medians)",
        "machine": machine_summary(),
        "setup": vars(args),
        "library_options": options,
        "rows": rows,
    }
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()

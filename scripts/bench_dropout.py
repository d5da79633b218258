"""Cost of one dropout site: threefry's ``jax.random.bernoulli`` against the hashed masks we use (a benchmark).

Per-example masks (one key per example, as in training) on a batch of attention probabilities of the MiniLM
shape (32 x 12 x 128 x 128) and of hidden states (32 x 128 x 384), forward only and forward + backward of the
masked sum. Medians over repeats, the variants interleaved.

    python scripts/bench_dropout.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jax_adalora.models.dropout import dropout, example_keys
from jax_adalora.report import atomic_write_json
from jax_adalora.runtime import keep_freed_memory


def threefry_dropout(x: jax.Array, rate: float, keys: jax.Array, site: int) -> jax.Array:
    """The masks we drew before: ``jax.random.bernoulli`` per example (threefry bits)."""
    keep = 1.0 - rate

    def one(key, xi):
        mask = jax.random.bernoulli(jax.random.fold_in(key, site), keep, xi.shape)
        return jnp.where(mask, xi / keep, jnp.zeros_like(xi))

    return jax.vmap(one)(keys, x)


VARIANTS = {"threefry bernoulli": threefry_dropout, "hashed (ours)": dropout}
SHAPES = {"attention probs 32x12x128x128": (32, 12, 128, 128), "hidden 32x128x384": (32, 128, 384)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()
    keep_freed_memory()

    programs = {}
    for shape_name, shape in SHAPES.items():
        x = jax.random.normal(jax.random.key(0), shape)
        keys = example_keys(jax.random.key(1), jnp.arange(shape[0]))
        for name, fn in VARIANTS.items():
            forward = jax.jit(lambda x, k, fn=fn: fn(x, args.rate, k, 3))
            both = jax.jit(jax.value_and_grad(lambda x, k, fn=fn: jnp.sum(fn(x, args.rate, k, 3) ** 2)))
            for kind, program in (("forward", forward), ("forward + backward", both)):
                jax.block_until_ready(program(x, keys))  # compile
                programs[(shape_name, kind, name)] = (program, x, keys)

    times: dict[tuple, list[float]] = {k: [] for k in programs}
    for _ in range(args.repeats):
        for k, (program, x, keys) in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program(x, keys))
            times[k].append(time.perf_counter() - start)

    rows = []
    for shape_name in SHAPES:
        for kind in ("forward", "forward + backward"):
            old = statistics.median(times[(shape_name, kind, "threefry bernoulli")]) * 1e3
            new = statistics.median(times[(shape_name, kind, "hashed (ours)")]) * 1e3
            rows.append(dict(shape=shape_name, program=kind, threefry_ms=old, hashed_ms=new, speedup=old / new))
    print(f"{'shape':32s} {'program':20s} {'threefry ms':>12s} {'hashed ms':>10s} {'speed-up':>9s}")
    for r in rows:
        print(
            f"{r['shape']:32s} {r['program']:20s} {r['threefry_ms']:12.2f} {r['hashed_ms']:10.2f} {r['speedup']:9.1f}"
        )
    if args.out:
        atomic_write_json(args.out, dict(rate=args.rate, repeats=args.repeats, rows=rows))


if __name__ == "__main__":
    main()

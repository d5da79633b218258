"""DeBERTa's c2p + p2c scores read by a gather (as transformers) or by ``skew``, alone (a benchmark, not a test).

One attention layer of the DeBERTa-v3-base shape (hidden 768, 12 heads, 256 position buckets: a 512-row
relative table) with random weights. For each sequence length, both of its methods run on the same
queries, keys and table, forward alone and forward + backward (gradients for the queries, keys, table
and projection weights), compiled as the training step is (``runtime.step_compiler_options``), timed
interleaved in one process; medians over repeats.

* ``gathered_relative_scores``: every query and key against all 2S table rows, then each pair's column
  gathered; the backward pass scatter-adds into the (B, NH, L, 2S) scores.
* ``skewed_relative_scores``: against the N + L - 1 relative positions that occur, shifted into place
  by a slice and reshapes; the backward pass pads.

The encoder takes the skewed path while N + L - 1 <= 2S (up to 256 tokens here, every query) and the
gathered one beyond.

    python scripts/bench_relative_scores.py --out docs/bench_relative_scores.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.deberta import DebertaV2Encoder
from jax_adalora.report import atomic_write_json, machine_summary
from jax_adalora.runtime import step_compiler_options

METHODS = ("gathered_relative_scores", "skewed_relative_scores")


def programs(graphdef, method: str, length: int, options: dict) -> dict:
    """The forward and forward + backward of ``method`` as jitted functions of (params, q, k, table, weights)."""

    def scores(params, q, k, table):
        return getattr(nnx.merge(graphdef, params), method)(q, k, table, length)

    def loss(params, q, k, table, weights):
        return jnp.sum(scores(params, q, k, table) * weights)

    return {
        "forward": jax.jit(lambda p, q, k, t, w: scores(p, q, k, t), compiler_options=options),
        "forward+backward": jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), compiler_options=options),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    config = EncoderConfig.deberta_v3_base(num_hidden_layers=1)
    encoder = DebertaV2Encoder(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(encoder.layers[0].attention)
    table = encoder.relative_embeddings()
    options = step_compiler_options()
    heads, head_dim = config.num_attention_heads, config.head_dim
    rows = []
    for length in args.lengths:
        keys = jax.random.split(jax.random.key(length), 3)
        shape = (args.batch_size, heads, length, head_dim)
        q, k = jax.random.normal(keys[0], shape), jax.random.normal(keys[1], shape)
        weights = jax.random.normal(keys[2], (args.batch_size, heads, length, length))
        inputs = (params, q, k, table, weights)
        compiled = {
            (method, part): fn.lower(*inputs).compile()
            for method in METHODS
            for part, fn in programs(graphdef, method, length, options).items()
        }
        for fn in compiled.values():
            jax.block_until_ready(fn(*inputs))
        times = {name: [] for name in compiled}
        for _ in range(args.repeats):
            for name, fn in compiled.items():
                started = time.perf_counter()
                jax.block_until_ready(fn(*inputs))
                times[name].append(time.perf_counter() - started)
        for part in ("forward", "forward+backward"):
            gathered, skewed = (1e3 * statistics.median(times[(m, part)]) for m in METHODS)
            rows.append(
                {
                    "length": length,
                    "part": part,
                    "gathered_ms": gathered,
                    "skewed_ms": skewed,
                    "speed-up": gathered / skewed,
                }
            )

    print(f"DeBERTa-v3-base attention layer, batch {args.batch_size}, c2p + p2c, medians of {args.repeats}")
    print(f"\n{'tokens':>6}  {'part':<18}{'gathered, ms':>13}{'skewed, ms':>12}{'speed-up':>10}")
    for r in rows:
        times = f"{r['gathered_ms']:>13.1f}{r['skewed_ms']:>12.1f}{r['speed-up']:>9.2f}x"
        print(f"{r['length']:>6}  {r['part']:<18}{times}")
    result = {
        "benchmark": "DeBERTa c2p + p2c scores, gathered vs skewed (medians)",
        "machine": machine_summary(),
        "setup": vars(args),
        "rows": rows,
    }
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()

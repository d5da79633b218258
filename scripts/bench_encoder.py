"""Forward + backward throughput of our encoders against transformers' PyTorch models (a benchmark, not a test).

Same config, same batch, random weights, dropout off, float32: a scalar loss (mean square of the last
hidden state) and its gradient with respect to every parameter, as in full fine-tuning. JAX runs one
jitted ``value_and_grad``; PyTorch runs ``loss.backward()`` (with ``zero_grad``) on transformers'
default attention. Compile time (JAX) is reported apart; the first call of each side is a warm-up
and is not timed; step times are medians over ``--repeats``, the two sides interleaved so that
machine noise hits both alike.

Shapes: ``minilm`` (all-MiniLM-L6-v2: 6 layers, hidden 384) and ``deberta`` (DeBERTa-v3-base:
12 layers, hidden 768, relative attention with 256 buckets). The defaults take about two minutes on
two CPU cores:

    python scripts/bench_encoder.py --out docs/bench_encoder.json
    python scripts/bench_encoder.py --models minilm --batch-size 32 --seq-len 128   # a bigger batch

Expect, on 2 CPU cores, float32, defaults: MiniLM about 1,450 tokens/s (JAX) against 1,900 (PyTorch),
DeBERTa-v3-base about 115 against 130, JAX compiling in 1.5 s and 4 s. PyTorch's numbers swing
several-fold when other processes share the cores; compare runs on a quiet machine only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.models.config import EncoderConfig
from jax_adalora.models.heads import build_encoder
from jax_adalora.report import atomic_write_json

SHAPES = {
    "minilm": EncoderConfig.minilm_l6,
    "deberta": EncoderConfig.deberta_v3_base,
}
DEFAULT_BATCH = {"minilm": (8, 128), "deberta": (2, 128)}  # (batch, tokens): ~2 min in all on 2 cores


def make_batch(config: EncoderConfig, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids; the last quarter of every other row is padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config.vocab_size, (batch_size, seq_len)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1::2, seq_len - seq_len // 4 :] = 0
    ids = np.where(mask == 1, ids, config.pad_token_id).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask}


def jax_step(config: EncoderConfig, batch: dict[str, np.ndarray], dtype):
    """A compiled ``(params) -> (loss, grads)`` and its params; also the seconds taken to compile."""
    encoder = build_encoder(config, dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(encoder, nnx.Param, ...)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])

    def loss(params):
        hidden = nnx.merge(graphdef, params, rest)(ids, mask)  # (B, L, H)
        return jnp.mean(jnp.square(hidden.astype(jnp.float32)))

    started = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
    compile_s = time.perf_counter() - started

    def run():
        jax.block_until_ready(compiled(params))

    return run, compile_s


def torch_step(config: EncoderConfig, batch: dict[str, np.ndarray]):
    import torch
    from transformers import AutoConfig, AutoModel

    from jax_adalora.models.pretrained import hf_encoder_config

    hf = hf_encoder_config(config)
    hf_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    torch.manual_seed(0)
    model = AutoModel.from_config(hf_config).train()
    for module in model.modules():  # dropout off, to compare the same computation
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = {k: torch.from_numpy(v).long() for k, v in batch.items()}

    def run():
        model.zero_grad(set_to_none=True)
        hidden = model(**inputs).last_hidden_state
        hidden.square().mean().backward()

    return run


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def bench(name: str, args) -> list[dict]:
    import torch

    config = SHAPES[name](hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch_size, seq_len = DEFAULT_BATCH[name]
    batch_size, seq_len = args.batch_size or batch_size, args.seq_len or seq_len
    batch = make_batch(config, batch_size, seq_len)
    tokens = batch_size * seq_len
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    ours, compile_s = jax_step(config, batch, dtype)
    theirs = torch_step(config, batch)
    warm = {"jax": timed(ours, 1)[0], "torch": timed(theirs, 1)[0]}
    times = {"jax": [], "torch": []}
    for _ in range(args.repeats):
        times["jax"] += timed(ours, 1)
        times["torch"] += timed(theirs, 1)
    rows = []
    for side in ("jax", "torch"):
        median = statistics.median(times[side])
        rows.append(
            {
                "model": name,
                "framework": "jax_adalora (JAX)" if side == "jax" else f"transformers (PyTorch {torch.__version__})",
                "batch_size": batch_size,
                "seq_len": seq_len,
                "dtype": args.dtype if side == "jax" else "float32",
                "compile_s": round(compile_s, 2) if side == "jax" else None,
                "warmup_s": round(warm[side], 3),
                "median_step_s": round(median, 4),
                "step_s": [round(t, 4) for t in times[side]],
                "tokens_per_s": round(tokens / median, 1),
            }
        )
    rows[0]["speedup_vs_torch"] = round(rows[1]["median_step_s"] / rows[0]["median_step_s"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=["minilm", "deberta"])
    parser.add_argument("--batch-size", type=int, default=0, help="0: per-model default (minilm 8, deberta 2)")
    parser.add_argument("--seq-len", type=int, default=0, help="0: per-model default (128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="JAX compute dtype")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    rows = [row for name in args.models for row in bench(name, args)]
    header = f"{'model':8} {'framework':34} {'batch':>9} {'compile s':>9} {'step s':>8} {'tokens/s':>10} {'speedup':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        speedup = f"{row['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in row else ""
        shape = f"{row['batch_size']}x{row['seq_len']}"
        print(
            f"{row['model']:8} {row['framework']:34} {shape:>9} {compile_s:>9} {row['median_step_s']:>8.3f} "
            f"{row['tokens_per_s']:>10.0f} {speedup:>7}"
        )
    if args.out:
        result = {
            "benchmark": "encoder forward+backward (all parameters), dropout off",
            "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__},
            "repeats": args.repeats,
            "rows": rows,
        }
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

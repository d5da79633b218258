"""One AdaLoRA training step on SmolLM2-135M, ours against PEFT's (a benchmark, not a test).

In one process, on the same batch and the same base weights, float32 on the CPU:

* ours: the library's functional step (``FunctionalModel(model, AdaLoRAParam)``, ``adalora_optimizer``,
  ``init_train_state``, ``train_step_fn`` under ``jax.jit(..., donate_argnums=0)`` with the training command's
  compiler options), adapters on the model's ``paper`` preset (all seven projections of every layer), the loss
  :func:`jax_adalora.tasks.causal_lm_metrics.causal_lm_losses` (each sequence's mean next-token cross-entropy
  over its ``loss_mask``, averaged over the batch). Two rows: sensitivity (the batch gradient alone) and GSNR with
  exact per-example statistics (``statistics="per_example"``).
* PEFT: ``get_peft_model`` on transformers' ``LlamaForCausalLM`` loaded from our weights (written as a
  transformers directory), ``AdaLoraConfig`` with the same ranks, α, schedule and β's
  (:func:`jax_adalora.cli.export.peft_adalora_config`), ``task_type="CAUSAL_LM"``; a step is forward, the same
  mean per-sequence loss computed here from the logits with the same ``loss_mask``, backward, clip, AdamW
  (``OptimConfig``'s settings), ``update_and_allocate(step)``, ``zero_grad``.

Both sides: r_init 16 -> target 8 (``--r-init``, ``--r-target``), masking at every step (t_init = t_final = 0,
ΔT = 1), no orthogonal regulariser (γ = 0). The logits of both models on the batch are compared before timing
(max |Δ| printed and recorded). Timing as ``bench.py``: two untimed warm-up calls per row, then ``--repeats``
rounds, each running every row once in a rotating order; medians; JAX compile time apart. Peak memory: the growth
of process RSS during one more, untimed call, sampled every millisecond after glibc's free heap is trimmed
(``bench.RssPeak``; approximate, a lower bound where malloc reuses memory it kept). GFLOP/s: an analytic count of
the matrix products (:func:`llama_step_flops`), against the measured rate of a 2048² matmul in each framework.
At full size the process grows to about 23 GB (both frameworks' models, optimizers and compiled steps at once):
run it with that much memory free and nothing else running.

    python -m scripts.benchmarks.bench_llm --repeats 3 --out docs/bench_smollm2_135m.json  # batch 8 x 256
    python -m scripts.benchmarks.bench_llm --random-weights      # SmolLM2-135M's shapes, random weights
    python -m scripts.benchmarks.bench_llm --smoke               # a tiny Llama, batch 2 x 16, one repeat
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_adalora.adapters import AdaLoRAParam, inject_adapters
from jax_adalora.cli.report import atomic_write_json
from jax_adalora.cli.runtime import keep_freed_memory, step_compiler_options
from jax_adalora.config import AdaLoRAConfig, OptimConfig
from jax_adalora.models.llama import LlamaConfig, LlamaForCausalLM
from jax_adalora.tasks.causal_lm_metrics import causal_lm_losses
from jax_adalora.training import FunctionalModel, adalora_optimizer, init_train_state, train_step_fn
from scripts.benchmarks.bench import (
    PEFT_STEP,
    SENSITIVITY,
    JaxStep,
    Row,
    add_output_arguments,
    compile_jax,
    contention_warning,
    evaluate_targets,
    format_table,
    machine_info,
    matmul_rates,
    result_rows,
    time_interleaved,
)

GSNR_PER_EXAMPLE = "ours: gsnr step (per-example)"  # the name bench.evaluate_targets reads
OUR_STEPS = {
    SENSITIVITY: dict(score="sensitivity"),
    GSNR_PER_EXAMPLE: dict(score="gsnr", statistics="per_example"),
}
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # PEFT's names
PACKAGED_MODEL = "smollm2-135m-instruct"


# ---- pure helpers --------------------------------------------------------------------------------


def llama_step_flops(config: LlamaConfig, batch_size: int, seq_len: int, rank: int) -> dict[str, int]:
    """Analytic matmul FLOPs of one forward + backward of the adapted causal LM, as both frameworks compute it.

    Frozen weights (the projections and the tied or untied output head) need gradients with respect to their
    inputs only, so their backward costs one forward; attention scores and context (activation x activation) and
    the adapters (``rank`` triplets on all seven projections) cost two forwards in the backward. Attention is
    counted over the whole ``seq_len`` x ``seq_len`` square (both sides mask it rather than skip it). Element-wise
    work (RMSNorm, RoPE, softmax, SiLU) is not counted.
    """
    h, inter, head_dim = config.hidden_size, config.intermediate_size, config.attention_head_dim
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    dense = sum(d_in * d_out for d_in, d_out in shapes)  # multiply-adds per token and layer
    adapters = sum(rank * (d_in + d_out) for d_in, d_out in shapes)
    attention = 2 * seq_len * q  # scores q kᵀ and context p v, per query token
    head = h * config.vocab_size
    tokens, layers = batch_size * seq_len, config.num_hidden_layers
    forward = 2 * tokens * (layers * (dense + adapters + attention) + head)
    backward = 2 * tokens * (layers * (dense + 2 * (adapters + attention)) + head)
    return {"forward": forward, "backward": backward, "total": forward + backward}


def make_batch(vocab_size: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Random token ids (every position real, every next-token prediction counted)."""
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(3, vocab_size, (batch_size, seq_len)).astype(np.int32),
        "attention_mask": np.ones((batch_size, seq_len), np.int32),
        "loss_mask": np.ones((batch_size, seq_len), np.int32),
    }


def causal_lm_losses_for(_key):
    """``train_step_fn``'s ``losses_fn_for``: the per-sequence losses of the model's logits (no randomness)."""
    return lambda model, batch: causal_lm_losses(model(batch["input_ids"], batch["attention_mask"]), batch)


# ---- rows ----------------------------------------------------------------------------------------


def our_rows(model: LlamaForCausalLM, args, batch_np: dict) -> list[Row]:
    """Our jitted step for each of :data:`OUR_STEPS`, compiled ahead of the timing."""
    functional = FunctionalModel(model, AdaLoRAParam)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    options = step_compiler_options()  # as the training command compiles its step
    rows = []
    for name, score in OUR_STEPS.items():
        adalora = adalora_config(args).replace(**score)
        tx = adalora_optimizer(OptimConfig(), adalora, args.total_steps)
        state = jax.tree.map(jnp.copy, init_train_state(functional, tx, adalora))  # a copy per row: donated
        step = jax.jit(
            train_step_fn(functional, tx, adalora, causal_lm_losses_for), donate_argnums=0, compiler_options=options
        )
        compiled, info = compile_jax(step, (state, functional.frozen, batch, jax.random.key(0)))
        rows.append(Row(name, JaxStep(compiled, state, functional.frozen, batch), "jax", info))
        print(f"compiled {name}: {info['compile_s']:.1f} s", flush=True)
    return rows


def torch_sequence_losses(logits, input_ids, loss_mask):
    """As :func:`causal_lm_losses`, in torch: each sequence's mean next-token cross-entropy over its loss mask."""
    import torch

    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view(input_ids.shape[0], -1)
    mask = loss_mask[:, :-1].float()
    return (nll * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def peft_row(hf_dir: str, args, batch_np: dict) -> tuple[Row, dict]:
    """PEFT's AdaLoRA step on transformers' model, and the base model's logits and loss on the batch."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from jax_adalora.cli.export import peft_adalora_config, quiet_third_party

    torch.manual_seed(0)
    with quiet_third_party():
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    input_ids = torch.from_numpy(batch_np["input_ids"]).long()
    attention_mask = torch.from_numpy(batch_np["attention_mask"]).long()
    loss_mask = torch.from_numpy(batch_np["loss_mask"])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        reference = {
            "logits": logits.numpy().copy(),
            "loss": float(torch_sequence_losses(logits, input_ids, loss_mask).mean()),
        }
    del logits
    peft_config = peft_adalora_config(
        adalora_config(args), total_steps=args.total_steps, target_modules=HF_TARGETS, task_type="CAUSAL_LM"
    )
    with quiet_third_party():
        model = get_peft_model(model, peft_config).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = OptimConfig()
    optimizer = torch.optim.AdamW(
        trainable, lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps, weight_decay=optim.weight_decay
    )
    counter = {"step": 0}

    def step(_i):
        counter["step"] += 1
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = torch_sequence_losses(logits, input_ids, loss_mask).mean()  # no labels: PEFT adds no γ term
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, optim.max_grad_norm)
        optimizer.step()
        model.base_model.update_and_allocate(counter["step"])
        optimizer.zero_grad(set_to_none=True)

    reference["trainable_tensors"] = len(trainable)
    return Row(PEFT_STEP, step, "torch"), reference


def adalora_config(args) -> AdaLoRAConfig:
    """Both sides' AdaLoRA settings (PEFT's through ``peft_adalora_config``): masking at every step, γ = 0."""
    return AdaLoRAConfig(
        r_init=args.r_init, r_target=args.r_target, t_init=0, t_final=0, delta_t=1, orth_reg_weight=0.0
    )


def build_model(args) -> tuple[LlamaForCausalLM, str]:
    """Our model and a line saying where its weights came from."""
    if args.smoke:
        return LlamaForCausalLM(LlamaConfig.llama3_tiny(), rngs=nnx.Rngs(0)), "llama3_tiny shape, random weights"
    if args.random_weights:
        return LlamaForCausalLM(LlamaConfig.smollm2_135m(), rngs=nnx.Rngs(0)), "SmolLM2-135M shape, random weights"
    from jax_adalora.models.llama import from_pretrained

    return from_pretrained(PACKAGED_MODEL), f"{PACKAGED_MODEL} (the packaged GGUF, de-quantised to float32)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--r-init", type=int, default=16)
    parser.add_argument("--r-target", type=int, default=8)
    parser.add_argument("--total-steps", type=int, default=1000, help="schedule length (masking every step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2-135M's shapes without the GGUF")
    parser.add_argument(
        "--smoke", action="store_true", help="a quick check: llama3_tiny, batch 2 x 16, one repeat (overrides those)"
    )
    parser.add_argument("--matmul-size", type=int, default=2048, help="size of the matmul whose rate is measured")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.seq_len, args.repeats, args.matmul_size = 2, 16, 1, 256
    malloc_tuned = args.malloc_tuning == "on" and keep_freed_memory()  # before JAX or torch allocate
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers only reads our temporary directory

    import torch

    from jax_adalora.cli.export import save_merged_causal_lm

    torch.set_num_threads(os.cpu_count())  # explicit, so that both frameworks may use every core
    device = torch.device("cpu")
    machine = machine_info(device)
    machine["malloc_tuning"] = malloc_tuned
    print(json.dumps(machine), flush=True)

    model, weights = build_model(args)
    config = model.config
    batch_np = make_batch(config.vocab_size, args.batch_size, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_merged_causal_lm(model, os.path.join(tmp, "model"))  # before injection: base weights only
        peft, reference = peft_row(str(hf_dir), args, batch_np)

    inject_adapters(model, adalora_config(args), rngs=nnx.Rngs(1))
    # λ starts at 0, so the adapted model must still give the base model's logits.
    logits = model(jnp.asarray(batch_np["input_ids"]), jnp.asarray(batch_np["attention_mask"]))
    our_loss = float(jnp.mean(causal_lm_losses(logits, {k: jnp.asarray(v) for k, v in batch_np.items()})))
    logit_diff = float(np.max(np.abs(np.asarray(logits, np.float32) - reference.pop("logits"))))
    del logits
    print(
        f"same weights: max |logit difference| ours vs transformers = {logit_diff:.2e}; "
        f"loss ours {our_loss:.6f}, transformers {reference['loss']:.6f}",
        flush=True,
    )
    rows = [*our_rows(model, args, batch_np), peft]

    time_interleaved(rows, args.repeats, device)
    rates = matmul_rates(args.matmul_size, "float32", device)
    flops = llama_step_flops(config, args.batch_size, args.seq_len, args.r_init)
    results = result_rows(rows, {"jax": flops, "torch": flops}, rates)
    medians = {r["name"]: r["median_s"] for r in results}
    targets = evaluate_targets(medians, on_gpu=False)
    machine["load_average_at_end"] = os.getloadavg()
    report = {
        "benchmark": "AdaLoRA training step on a causal LM: jax_adalora vs PEFT (PyTorch)",
        "machine": machine,
        "setup": {
            **vars(args),
            "weights": weights,
            "model_config": {
                "hidden_size": config.hidden_size,
                "num_hidden_layers": config.num_hidden_layers,
                "intermediate_size": config.intermediate_size,
                "num_attention_heads": config.num_attention_heads,
                "num_key_value_heads": config.num_key_value_heads,
                "vocab_size": config.vocab_size,
                "tie_word_embeddings": config.tie_word_embeddings,
            },
            "dtype": "float32",
            "adapted_matrices": 7 * config.num_hidden_layers,
            "schedule": "t_init=0, t_final=0, delta_t=1 (masking every step), gamma=0",
            "loss": "mean over sequences of each sequence's mean next-token cross-entropy over loss_mask",
            "max_abs_logit_difference": logit_diff,
            "base_loss": {"ours": our_loss, "transformers": reference["loss"]},
            "torch_trainable_tensors": reference["trainable_tensors"],
            "peak_mb_method": "RSS growth during one untimed call after malloc_trim, sampled every ms (approximate)",
            "analytic_flops_per_step": flops,
            "matmul_rate": rates,
        },
        "rows": results,
        "targets": targets,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "contention_warning": contention_warning(machine["load_average_at_start"][0], os.cpu_count()),
    }
    if args.out:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    print(
        f"\n{weights}, {config.num_hidden_layers} layers, batch {args.batch_size} x {args.seq_len}, float32, "
        f"torch threads {machine['torch_threads']}, matmul {rates['size']}: JAX "
        f"{rates['jax_flops_per_s'] / 1e9:.1f} GFLOP/s, torch {rates['torch_flops_per_s'] / 1e9:.1f} GFLOP/s; "
        f"analytic step {flops['total'] / 1e9:.1f} GFLOP"
    )
    print(format_table(results, targets))
    if report["contention_warning"]:
        print(report["contention_warning"])


if __name__ == "__main__":
    main()

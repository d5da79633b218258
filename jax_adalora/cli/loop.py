"""The training command's loop, in parts a reader can take one at a time.

* :class:`StepReader`: reads each step's loss and gradient norm back from the device and stops a diverged run;
* :class:`RunLog`: metrics.jsonl, TensorBoard events and the progress bar (written by process 0);
* :func:`evaluate_and_keep_best`: every dev split, and the best adapters so far;
* :func:`checkpoint`: the training state, the data position and the log's own state, atomically;
* :func:`train_loop`: steps until the end (or ``--stop-after-steps``), deciding when each of these runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jax_adalora.allocator import NON_FINITE_SCORES, find_allocator_state
from jax_adalora.cli.checkpoint import Checkpointer, NonFiniteState
from jax_adalora.cli.errors import BadScore, TrainingDiverged
from jax_adalora.cli.inference import evaluate, main_metric
from jax_adalora.cli.mesh import device_batch, is_writer
from jax_adalora.cli.outputs import finish_run, save_trained_adapters
from jax_adalora.cli.run_dir import record_divergence, truncate_metrics

# The transfer guard around each training step's dispatch; the tests set "disallow", so that an implicit copy
# between host and device (a hidden synchronisation) in the step loop fails them.
STEP_TRANSFER_GUARD = "allow"

# Whether the host dispatches the next step before reading the one it has just dispatched (None: off on the CPU
# backend, on elsewhere). On a GPU or TPU this hides the host's work (batch, logging) behind the device's. On CPU
# the device is the host's own cores, so it gains no time, and it keeps a second step's buffers alive (more
# memory for the same wall time). The tests set True to check the run-ahead path on CPU.
RUN_AHEAD: bool | None = None

# The logged loss this many times the first logged loss gives a warning (once per run).
LOSS_GROWTH_WARNING = 100.0


class RunLog:
    """Process 0's record of a run: ``metrics.jsonl``, TensorBoard events under ``tb/``, and the progress bar."""

    def __init__(self, out_dir: Path, *, total_steps: int, start_step: int, resuming: bool):
        self.metrics_file = out_dir / "metrics.jsonl"
        # purge_step: TensorBoard hides the events a killed run logged after the checkpoint it resumes from.
        self.events = _tensorboard(out_dir / "tb", purge_step=start_step + 1 if resuming else None)
        self.bar = tqdm(
            total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, file=sys.stdout
        )

    def train_line(self, step: int, loss: float, budget: int, grad_norm: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", budget=budget)
        self._append({"step": step, "loss": loss, "budget": budget, "grad_norm": grad_norm})
        self.events.add_scalar("train/loss", loss, step)
        self.events.add_scalar("train/budget", budget, step)

    def eval_line(self, step: int, results: dict[str, float]) -> None:
        self._append({"step": step, "eval": results})
        for k, v in results.items():
            self.events.add_scalar(f"eval/{k}", v, step)
        self.bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in results.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.events.close()
            self.bar = None

    def _append(self, record: dict) -> None:
        if is_writer():
            with open(self.metrics_file, "a") as handle:
                handle.write(json.dumps(record) + "\n")


class StepReader:
    """Reads a dispatched step's loss and gradient norm (one transfer), checks them, and keeps the losses since
    the last log line. Running ahead, at most one step waits to be read."""

    def __init__(self, checkpointer: Checkpointer, loss_window: list[float], score: str = ""):
        self.checkpointer = checkpointer
        self.score = score  # the importance score's name, for the messages
        self.first_loss: float | None = None  # the run's first step's (before any update), for warn_if_loss_grows
        self.loss_window = list(loss_window)
        self.pending: list[tuple[int, dict]] = []

    def push(self, step: int, metrics: dict) -> None:
        """Reads the step before (finished by now, or at once in lockstep), then holds this one."""
        if self.pending:
            self.read()
        self.pending.append((step, metrics))

    def read(self) -> float:
        """Reads the pending step; returns its gradient norm. Raises :class:`TrainingDiverged` on NaN or inf."""
        done, metrics = self.pending.pop()
        loss, grad_norm = (float(v) for v in jax.device_get((metrics["loss"], metrics["grad_norm"])))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingDiverged(
                diverged_message(f"the loss ({loss}) or gradient norm ({grad_norm})", done, self.checkpointer)
            )
        self.loss_window.append(loss)
        if self.first_loss is None:
            self.first_loss = loss
        return grad_norm

    def mean_loss(self) -> float:
        """The mean loss since the last call."""
        mean, self.loss_window = float(np.mean(self.loss_window)), []
        return mean


def evaluate_and_keep_best(run, data, functional, state, frozen, eval_step, sharding, progress, log, step) -> None:
    """Every dev split; the adapters are saved as the best when the main metric is the best so far."""
    results = evaluate(eval_step, state.params, frozen, data, run, sharding, functional)
    score = main_metric(data, results)
    progress["history"].append({"step": step, **results})
    log.eval_line(step, results)
    if progress["best"] is None or score > progress["best"]:
        progress["best"], progress["best_step"] = score, step
        save_trained_adapters(run.output_dir / "best_adapters.safetensors", functional, state)


def checkpoint(checkpointer: Checkpointer, step: int, state, progress: dict, train_iter, reader, log) -> None:
    """Saves the state with the data position and the unlogged losses, so that a resumed run continues exactly."""
    check_scores_finite(int(jax.device_get(find_allocator_state(state.opt_state).budget)), reader.score, step)
    progress["iterator"] = train_iter.state()
    progress["loss_window"] = list(reader.loss_window)  # so that a resumed run logs the same mean losses
    try:
        checkpointer.save(step, state, progress)
    except NonFiniteState as err:
        raise TrainingDiverged(diverged_message(str(err), step, checkpointer)) from None
    log.events.flush()


def train_loop(
    run, data, functional, state, frozen, train_step, eval_step, train_iter, checkpointer, *,
    resuming: bool, total_steps: int, batch_sharding, header: str,
) -> dict:  # fmt: skip
    """Trains from the state (or the latest usable checkpoint when ``resuming``) to ``total_steps``; returns the
    final metrics, or ``{}`` after ``--stop-after-steps``. ``header`` is the run's summary line."""
    t = run.train
    progress = {"history": [], "best": None, "best_step": None, "epoch": 0, "loss_window": []}
    if resuming:
        state, progress = checkpointer.restore_latest_usable(state)
        train_iter.restore(progress["iterator"])
        dropped = truncate_metrics(run.output_dir / "metrics.jsonl", int(state.step)) if is_writer() else 0
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
    start_step = step = int(state.step)
    print(header, flush=True)
    log = RunLog(run.output_dir, total_steps=total_steps, start_step=start_step, resuming=resuming)
    reader = StepReader(checkpointer, progress.get("loss_window", []), run.adalora.score)
    run_ahead = jax.default_backend() != "cpu" if RUN_AHEAD is None else RUN_AHEAD
    started = last_checkpoint = time.time()
    before_step = None  # the data position before the step in flight (None between steps)
    ctrl_c = DeferredInterrupt()
    try:
        while step < total_steps:
            before_step = train_iter.state()
            batch = train_iter.next_batch()
            with jax.transfer_guard(STEP_TRANSFER_GUARD), ctrl_c.deferred():  # copies to the device are explicit
                step_key = jax.random.fold_in(base_key, jax.device_put(np.uint32(step), replicated))
                state, step_metrics = train_step(state, frozen, device_batch(batch, batch_sharding), step_key)
                step += 1
                before_step = None
                # Running ahead, the host does not wait for the step it has just dispatched: it reads the step
                # before (finished by now) while this one runs, and this one's numbers only at a step that logs,
                # evaluates or saves. In lockstep (CPU) it reads every step as soon as it is done.
                reader.push(step, step_metrics)
            stopping = bool(t.stop_after_steps) and step >= start_step + t.stop_after_steps and step < total_steps
            logs = step % t.log_every == 0 or step == total_steps
            if not run_ahead or logs or stopping or step % eval_every == 0 or step % checkpoint_every == 0:
                grad_norm = reader.read()
            if logs:
                alloc = find_allocator_state(state.opt_state)
                latest_budget, keep = jax.device_get((alloc.budget, list(alloc.keep.values())))
                check_scores_finite(int(latest_budget), reader.score, step)
                budget = int(sum(int(np.sum(k)) for k in keep))
                warn_if_pattern_short(progress, budget, int(latest_budget), reader.score, step, log)
                if progress.get("first_loss") is None:
                    progress["first_loss"] = reader.first_loss
                mean_loss = reader.mean_loss()
                log.train_line(step, mean_loss, budget, grad_norm)
                warn_if_loss_grows(progress, mean_loss, step, log)
            log.bar.update(1)
            if step % eval_every == 0 or step == total_steps:
                evaluate_and_keep_best(
                    run, data, functional, state, frozen, eval_step, batch_sharding, progress, log, step
                )
            overdue = logs and minutes_since(last_checkpoint) >= t.checkpoint_minutes > 0
            if step % checkpoint_every == 0 or step == total_steps or stopping or overdue:
                checkpoint(checkpointer, step, state, progress, train_iter, reader, log)
                last_checkpoint = time.time()
            if stopping:
                log.close()
                print(
                    f"stopping after {t.stop_after_steps} steps as asked (--stop-after-steps); checkpoint of step "
                    f"{step} in {checkpointer.directory}; continue with --resume"
                )
                return {}
    except TrainingDiverged:
        if is_writer() and checkpointer.latest_step() is not None:
            record_divergence(run.output_dir, step, checkpointer.latest_step())
        raise
    except KeyboardInterrupt:
        log.close()
        if before_step is not None:  # the step in flight never finished: its batch is read again on resume
            train_iter.restore(before_step)
        raise KeyboardInterrupt(
            save_on_interrupt(checkpointer, step, state, progress, train_iter, reader, log)
        ) from None
    finally:
        ctrl_c.close()
        log.close()
    elapsed = round(time.time() - started, 2)
    return finish_run(
        run, data, functional, state, eval_step, batch_sharding, progress,
        steps=total_steps, train_seconds_this_process=elapsed,
    )  # fmt: skip


class DeferredInterrupt:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt at once, except inside :meth:`deferred`, where it waits for the
    block's end: the step donates the old state's buffers, so an interrupt between its dispatch and the
    assignment of the new state would leave no state to checkpoint. Installed in the main thread only."""

    def __init__(self):
        self.inside = self.pending = False
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        if not self.inside:
            raise KeyboardInterrupt
        self.pending = True

    @contextlib.contextmanager
    def deferred(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def close(self) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)
            self.installed = False


def save_on_interrupt(checkpointer: Checkpointer, step: int, state, progress, train_iter, reader, log) -> str:
    """Checkpoints the last finished step after Ctrl-C; returns the line that says where the run's progress is
    (or what was lost)."""
    if checkpointer.latest_step() == step:
        return f"interrupted at step {step}; checkpoint in {checkpointer.directory / str(step)}; continue with --resume"
    try:
        if jax.process_count() > 1:
            raise RuntimeError("a checkpoint is saved by every process together, and only this one was interrupted")
        while reader.pending:  # a finished step's loss not read yet
            reader.read()
        checkpoint(checkpointer, step, state, progress, train_iter, reader, log)
    except (Exception, KeyboardInterrupt) as err:
        last = checkpointer.latest_step()
        kept = (
            f"the last checkpoint, {checkpointer.directory / str(last)}, is kept: continue from it with --resume"
            if last is not None
            else "no checkpoint was saved before: the run's progress is lost"
        )
        reason = " ".join(str(err).split()) or type(err).__name__
        return f"interrupted at step {step}; could not save a checkpoint ({reason}); {kept}"
    return (
        f"interrupted at step {step}; saved a checkpoint of it in {checkpointer.directory / str(step)}; "
        "continue with --resume"
    )


def warn_if_loss_grows(progress: dict, loss: float, step: int, log: RunLog) -> None:
    """Warns once (one line) when the logged loss grows past :data:`LOSS_GROWTH_WARNING` times the loss of
    the run's first step (kept in ``progress``): a run that is diverging without (yet) reaching NaN."""
    first = progress.get("first_loss")
    if first is None:
        return
    if not progress.get("warned_loss") and first > 0 and loss > LOSS_GROWTH_WARNING * first:
        progress["warned_loss"] = step
        log.bar.write(
            f"warning: the training loss has grown to {loss:.4g} at step {step}, {loss / first:.0f} times the first "
            f"step's ({first:.4g}): the run is probably diverging; consider a lower --learning-rate or "
            "--max-grad-norm",
            file=sys.stderr,
        )


def warn_if_pattern_short(progress: dict, kept: int, budget: int, score: str, step: int, log: RunLog) -> None:
    """Warns once (one line) when the rank pattern keeps fewer triplets than the latest re-allocation's budget:
    triplets tied at the threshold are masked together (PEFT's rule), so a score that gives many triplets the
    same importance (all zero, say) prunes far below the budget without any error."""
    if progress.get("warned_pattern") or not 0 <= kept < budget:
        return
    progress["warned_pattern"] = step
    log.bar.write(
        f"warning: at step {step} the rank pattern keeps {kept} triplets, fewer than the budget of {budget}: the "
        f"score {score!r} gave many triplets the same importance and ties at the threshold are all masked; "
        "check the score (--score, --score-module)",
        file=sys.stderr,
    )


def check_scores_finite(latest_budget: int, score: str, step: int) -> None:
    """Raises :class:`BadScore` when a re-allocation up to ``step`` met NaN or infinite triplet scores: the
    allocator then keeps the pattern it had and marks its budget (``latest_budget``, the allocator state's)."""
    if latest_budget == NON_FINITE_SCORES:
        raise BadScore(
            f"the score {score!r} gave NaN or infinite importance at a re-allocation (by step {step}); refusing "
            "to prune on it (it would remove every adapter). Fix the score (--score-module) or choose another "
            "--score; no checkpoint was written after it"
        )


def minutes_since(start: float) -> float:
    """Minutes since ``start``, as process 0 measured them: every process must take the same checkpoint
    decision (saving is collective), so on several hosts process 0's clock decides."""
    minutes = (time.time() - start) / 60
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        minutes = float(multihost_utils.broadcast_one_to_all(np.float32(minutes)))
    return minutes


def diverged_message(what: str, step: int, checkpointer: Checkpointer) -> str:
    last = checkpointer.latest_step()
    if last is None:
        return (
            f"{what} became NaN or infinite at step {step}, before the first checkpoint; stopping. Run again with "
            "a lower --learning-rate or --max-grad-norm"
        )
    return (
        f"{what} became NaN or infinite at step {step}; stopping. Last good checkpoint: "
        f"{checkpointer.directory / str(last)} (step {last}). Continue from it with --resume and a lower "
        "--learning-rate or --max-grad-norm (a resume after a divergence may change them)"
    )


def _tensorboard(directory: Path, *, purge_step: int | None = None):
    """TensorBoard events, written by process 0; the other processes get a writer that writes nothing."""
    from tensorboardX import SummaryWriter

    if not is_writer():
        return _NoEvents()
    return SummaryWriter(str(directory), purge_step=purge_step)


class _NoEvents:
    def add_scalar(self, *args, **kwargs) -> None:
        del args, kwargs

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

"""Exact per-example vs running-estimate gradient statistics for Fisher and GSNR, on one trajectory.

Part 1, shadow trajectories (per task, per score in Fisher / GSNR): a training run with exact
per-example moments, step for step the run ``train_and_evaluate`` makes with ``statistics=per_example``
(same data order, dropout keys, optimizer and allocator). Inside the same jitted step the batch
gradient (the mean of the per-example gradients) also feeds :func:`jax_adalora.stats.running_moments`
and a *shadow* smoothing state, whose scores never touch the training. On every step where the
allocator re-allocates, the two triplet-score vectors are compared (Spearman) and so are the triplet
sets each would keep at that step's budget (Jaccard); the exact side is checked against the rank
pattern the real allocator chose.

Part 2, normal runs: ``train_and_evaluate`` with ``statistics=per_example`` and ``running`` for each
score, for the final dev metric and final rank pattern of each mode.

Part 3, cost per step: the library's jitted step (``make_train_step``) per mode on the same real
batches, modes interleaved, after compilation; on a shared machine, so noisy (the load is recorded).

Run it after ``scripts/studies/score_study.py`` at the same scale: the per-example runs of part 2 are then
the score study's (``--reuse-runs``, checked field by field), not made again. The "Reading" of the report is
``reading.md`` in ``--out``, written by hand and pasted in.

Outputs in ``--out``: ``REPORT.md``, ``results.json``, ``agreement_<score>_<task>.png`` (Spearman and
Jaccard over steps) and ``rank_patterns_<task>.png`` (final rank patterns side by side).

    # the committed results (docs/studies/compare_stats_full), after the score study's runs in /tmp/score_study_full:
    python -m scripts.studies.compare_stats --max-train-examples 0 --epochs 1 --max-seq-length 48 --delta-t 5 \
        --final-fraction 0.202 --timing-repeats 5 --alpha 16 --orth-reg-weight 0.1 --learning-rate 0.001 \
        --reuse-runs /tmp/score_study_full --scratch /tmp/compare_stats_full --out docs/studies/compare_stats_full
    # a smoke test:
    python -m scripts.studies.compare_stats --max-train-examples 64 --epochs 1 --timing-repeats 1 \
        --scratch /tmp/cs_smoke --out /tmp/cs_smoke/out
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_adalora import scores as scores_lib
from jax_adalora.adapters import find_triplets, inject_adapters, trainable_filter
from jax_adalora.allocator import (
    budget_schedule,
    find_allocator_state,
    mask_to_budget,
    rank_allocator,
    reallocation_steps,
)
from jax_adalora.cli.report import machine_summary
from jax_adalora.cli.run_config import RunConfig, build_run_config
from jax_adalora.cli.runtime import step_compiler_options
from jax_adalora.cli.step import make_eval_step, make_train_step, task_losses_fn
from jax_adalora.config import AdaLoRAConfig
from jax_adalora.moments import RUNNING_WARMUP_STEPS, value_grad_and_moments
from jax_adalora.stats import (
    Moments,
    RunningMomentsState,
    running_moments,
    running_moments_init,
)
from jax_adalora.training import FunctionalModel, adalora_optimizer, init_train_state, orthogonal_penalty
from scripts.studies import score_study
from scripts.studies import study_helpers as helpers

PyTree = Any
SCORES = ("fisher", "gsnr")
MODES = ("per_example", "running")
# the score study's tasks, each with its main metric (the first it reports)
MAIN_METRIC = {task: columns[0] for task, columns in score_study.TASK_COLUMNS.items()}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["movie-sentiment"], choices=list(MAIN_METRIC))
    parser.add_argument("--scores", nargs="+", default=list(SCORES), choices=list(SCORES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one shadow + normal runs per seed")
    helpers.add_scale_arguments(parser)
    helpers.add_adapter_arguments(parser)
    parser.add_argument("--timing-repeats", type=int, default=6, help="timed steps per mode (0: skip part 3)")
    parser.add_argument("--scratch", default="/tmp/compare_stats", help="run directories (outside the repo)")
    parser.add_argument(
        "--reuse-runs",
        default="/tmp/score_study",
        help="the score study's scratch folder: a per-example run there with the identical config is reused",
    )
    parser.add_argument("--out", default="docs/studies/compare_stats")
    return parser.parse_args(argv)


# ---- set-up --------------------------------------------------------------------------------------


def make_run(
    task: str, score: str, statistics_mode: str, seed: int, args, total_steps: int, out_dir: Path
) -> RunConfig:
    return build_run_config(
        helpers.scaled_run_overrides(task, seed, total_steps, args, out_dir, score=score, statistics=statistics_mode)
    )


def load(run: RunConfig):
    """Task data and the adapted model, built as ``train_and_evaluate`` builds them."""
    from jax_adalora.models import from_pretrained, load_tokenizer
    from jax_adalora.tasks import load_task

    t = run.train
    data = load_task(
        t.task,
        tokenizer=load_tokenizer(t.model),
        max_seq_length=t.max_seq_length,
        max_train_examples=t.max_train_examples or None,
        seed=t.seed,
    )
    num_labels = 1 if data.spec.kind == "regression" else max(data.spec.num_labels, 1)
    model = from_pretrained(t.model, head="classification", num_labels=num_labels, seed=t.seed)
    inject_adapters(model, run.adalora, rngs=nnx.Rngs(t.seed + 1))
    return data, model


def device_batch(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items() if isinstance(v, np.ndarray)}


def total_steps_for(task: str, args) -> int:
    return args.epochs * (helpers.split_sizes(task, args)[0] // args.batch_size)


# ---- part 1: the shadow step ---------------------------------------------------------------------


class Shadow(NamedTuple):
    """The running-estimate side: its moments, and the state of a second ``rank_allocator`` that scores them;
    its updates are dropped, so it never touches the training.

    The shadow allocator is the library's own, built from the run's config with ``statistics="running"``, and
    fed the same post-step weights as the real one: its smoothed scores are the ones a ``statistics="running"``
    run would rank at this point of this trajectory (from step ``RUNNING_WARMUP_STEPS`` on, once the estimates
    see a spread).
    """

    running: RunningMomentsState
    allocator: Any  # the shadow rank_allocator's state


def make_shadow_step(functional: FunctionalModel, tx, run: RunConfig, kind: str, total_steps: int):
    """The per-example training step (the library's, as ``jax_adalora.cli.step.make_train_step`` builds it, with the
    moments kept), plus the running-estimate shadow: a second allocator transform on running moments of the same
    batch gradients.

    ``step(state, shadow, frozen, batch, key) -> (state, shadow, out)``; ``out`` holds the loss and both
    sides' triplet importances (smoothed, as the allocators rank them, and raw, from this step alone).
    """
    adalora = run.adalora
    score = scores_lib.get(adalora.score, gsnr_eps=adalora.gsnr_eps)
    shadow_tx = shadow_allocator(run, total_steps)
    dropout = run.train.dropout
    penalty_fn = orthogonal_penalty(adalora)

    def importance(smoothing):
        return scores_lib.triplet_importance(scores_lib.smoothed_score(adalora.smoothing, smoothing))

    def step_fn(state, shadow: Shadow, frozen, batch, step_key):
        loss, grads, moments = value_grad_and_moments(
            task_losses_fn(kind, step_key, dropout=dropout),
            functional.model(state.params, frozen),
            batch,
            wrt=functional.trainable,
            mask=batch["example_mask"],
            penalty_fn=penalty_fn,
        )
        grads = nnx.to_pure_dict(grads)
        adapter_moments = Moments(*(find_triplets(m) for m in moments[:3]), count=moments.count)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, moments=moments)
        params = optax.apply_updates(state.params, updates)
        new_state = state._replace(params=params, opt_state=opt_state, step=state.step + 1)

        # The shadow: the same batch gradient, seen only as a mean, through the running estimator, scored by a
        # second allocator on the same post-step weights.
        running_m, running = running_moments(
            shadow.running, adapter_moments.mean, batch_size=adapter_moments.count, decay=adalora.running_decay
        )
        running_m = running_m._replace(ready=running.count >= RUNNING_WARMUP_STEPS)
        _, shadow_state = shadow_tx.update(updates, shadow.allocator, state.params, moments=running_m)
        weights = optax.apply_updates(find_triplets(state.params), find_triplets(updates))
        out = {
            "loss": loss,
            "exact": importance(find_allocator_state(opt_state).smoothing),
            "running": importance(find_allocator_state(shadow_state).smoothing),
            "exact_raw": scores_lib.triplet_importance(score(weights, adapter_moments)),
            "running_raw": scores_lib.triplet_importance(score(weights, running_m)),
        }
        return new_state, Shadow(running, shadow_state), out

    return jax.jit(step_fn, donate_argnums=(0, 1), compiler_options=step_compiler_options())


def shadow_allocator(run: RunConfig, total_steps: int):
    """The run's allocator as a ``statistics="running"`` run has it (its updates are never applied)."""
    return rank_allocator(run.adalora.replace(statistics="running"), total_steps)


def spearman(a, b) -> float:
    """Spearman's rank correlation (scipy's; NaN where a side is constant)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


def flat(tree: dict, paths: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(tree[p]).ravel() for p in paths])


def shadow_trajectory(task: str, score: str, seed: int, args, total_steps: int) -> dict:
    from jax_adalora.cli.inference import evaluate
    from jax_adalora.tasks import BatchIterator

    run = make_run(task, score, "per_example", seed, args, total_steps, Path(args.scratch) / "unused")
    data, model = load(run)
    train_iter = BatchIterator(data.train, run.train.batch_size, shuffle=True, seed=seed)
    if run.train.epochs * train_iter.steps_per_epoch != total_steps:
        raise AssertionError("the schedule was sized for a different number of steps")
    functional = FunctionalModel(model, trainable_filter(run.train.head_pattern))
    tx = adalora_optimizer(run.optim, run.adalora, total_steps)
    state = init_train_state(functional, tx, run.adalora)
    adapters = find_triplets(state.params)
    shadow = Shadow(running_moments_init(adapters), shadow_allocator(run, total_steps).init(state.params))
    frozen = functional.frozen
    step_fn = make_shadow_step(functional, tx, run, data.spec.kind, total_steps)
    a = run.adalora
    realloc = set(reallocation_steps(t_init=a.t_init, t_final=a.t_final, total_steps=total_steps, delta_t=a.delta_t))
    paths = sorted(adapters)
    init_budget = sum(int(adapters[p]["lam"].shape[0]) for p in paths)
    schedule = budget_schedule(init_budget, a.r_target * len(paths), a.t_init, a.t_final, total_steps, a.delta_t)
    base_key = jax.random.key(seed)
    records, every_step = [], []
    started = time.time()
    for step in range(1, total_steps + 1):
        batch = device_batch(train_iter.next_batch())
        # step - 1: the key train_and_evaluate folds in before incrementing its step counter
        state, shadow, out = step_fn(state, shadow, frozen, batch, jax.random.fold_in(base_key, step - 1))
        exact, running = flat(out["exact"], paths), flat(out["running"], paths)
        rho = spearman(exact, running)
        rho_raw = spearman(flat(out["exact_raw"], paths), flat(out["running_raw"], paths))
        every_step.append({"step": step, "spearman": rho, "spearman_raw": rho_raw, "loss": float(out["loss"])})
        if step not in realloc:
            continue
        budget = int(schedule.budgets[step])
        keep_exact = flat(mask_to_budget({p: jnp.asarray(out["exact"][p]) for p in paths}, budget), paths)
        keep_running = flat(mask_to_budget({p: jnp.asarray(out["running"][p]) for p in paths}, budget), paths)
        chosen = flat(find_allocator_state(state.opt_state).keep, paths)
        if not np.array_equal(chosen, keep_exact):
            raise AssertionError(f"step {step}: the exact side does not reproduce the allocator's rank pattern")
        records.append(
            {
                "step": step,
                "budget": budget,
                "kept_exact": int(keep_exact.sum()),
                "kept_running": int(keep_running.sum()),
                "spearman": rho,
                "spearman_raw": rho_raw,
                "jaccard": helpers.jaccard(keep_exact, keep_running),
                "chance_jaccard": helpers.chance_jaccard(int(keep_exact.sum()), len(keep_exact)),
            }
        )
        print(
            f"    step {step:4d} budget {budget:4d} spearman {rho:+.3f} (raw {rho_raw:+.3f}) "
            f"jaccard {records[-1]['jaccard']:.3f} [{time.time() - started:.0f} s]",
            flush=True,
        )
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    metrics = evaluate(make_eval_step(functional), state.params, frozen, data, run, sharding)
    ranks = {p: int(np.sum(np.asarray(k))) for p, k in find_allocator_state(state.opt_state).keep.items()}
    return {
        "task": task,
        "score": score,
        "seed": seed,
        "total_steps": total_steps,
        "schedule": {"t_init": a.t_init, "t_final": a.t_final, "delta_t": a.delta_t},
        "reallocations": records,
        "every_step": every_step,
        "final_metrics": metrics,
        "final_ranks": ranks,
        "seconds": round(time.time() - started, 1),
    }


# ---- part 2: normal runs -------------------------------------------------------------------------


def reusable_run(run: RunConfig, candidate: Path) -> bool:
    """Whether ``candidate`` holds a finished run of exactly ``run`` (all fields but the output folder)."""
    if not (candidate / "final_metrics.json").exists() or not (candidate / "config.json").exists():
        return False
    return helpers.config_difference(candidate, run.to_dict()) is None


def normal_run(task: str, score: str, mode: str, seed: int, args, total_steps: int) -> dict:
    from jax_adalora.cli.train import train_and_evaluate

    out = Path(args.scratch) / f"{task}-{score}-{mode}-s{seed}"
    run = make_run(task, score, mode, seed, args, total_steps, out)
    elsewhere = None
    if args.reuse_runs:  # where the score study with --scratch REUSE_RUNS put its run of this score and mode
        elsewhere = score_study.run_folder(args.reuse_runs, task, score_study.variant_of(score, mode), seed)
    reused = False
    if elsewhere is not None and reusable_run(run, elsewhere):
        out, reused = elsewhere, True  # the score study already made this very run
    elif not (out / "final_metrics.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        started = time.time()
        train_and_evaluate(run)
        (out / "wall_seconds.txt").write_text(f"{time.time() - started:.1f}\n")
    final = json.loads((out / "final_metrics.json").read_text())
    pattern = json.loads((out / "rank_pattern.json").read_text())
    return {
        "metrics": {k: v for k, v in final["final"].items() if k != "step"},
        "ranks": pattern["ranks"],
        "rank_pattern": pattern["rank_pattern"],
        "total_budget": final["total_budget"],
        "train_seconds": final["train_seconds_this_process"],
        "wall_seconds": float((out / "wall_seconds.txt").read_text()),
        "reused_from": str(out) if reused else None,
    }


# ---- part 3: cost per step -----------------------------------------------------------------------


def time_steps(task: str, args, total_steps: int) -> dict:
    """Median seconds per jitted library step for each mode, interleaved, on the same real batches."""
    from jax_adalora.tasks import BatchIterator

    started = time.time()
    modes = {"sensitivity (batch gradient)": ("sensitivity", "per_example")}
    for score in args.scores:
        for mode in MODES:
            modes[f"{score} ({mode})"] = (score, mode)
    run0 = make_run(task, "sensitivity", "per_example", 0, args, total_steps, Path(args.scratch) / "unused")
    data, _ = load(run0)
    iterator = BatchIterator(data.train, args.batch_size, shuffle=True, seed=0)
    batches = []
    while len(batches) < 3:  # full-width batches only, so that every timed step has the same shape
        batch = iterator.next_batch()
        if batch["input_ids"].shape[1] == args.max_seq_length:
            batches.append(device_batch(batch))
    prepared = {}
    for name, (score, mode) in modes.items():
        run = make_run(task, score, mode, 0, args, total_steps, Path(args.scratch) / "unused")
        _, model = load(run)
        functional = FunctionalModel(model, trainable_filter(run.train.head_pattern))
        tx = adalora_optimizer(run.optim, run.adalora, total_steps)
        state = init_train_state(functional, tx, run.adalora)
        step = make_train_step(functional, tx, run.adalora, data.spec.kind, dropout=True)
        t0 = time.perf_counter()
        for i in range(2):  # compile (or load from the cache), then one warm step
            state, metrics = step(state, functional.frozen, batches[i % 3], jax.random.key(i))
            jax.block_until_ready(metrics)
        prepared[name] = {"step": step, "state": state, "frozen": functional.frozen, "times": []}
        print(f"    {name}: ready in {time.perf_counter() - t0:.1f} s", flush=True)
    load_before = os.getloadavg()
    for i in range(args.timing_repeats):
        for entry in prepared.values():
            t0 = time.perf_counter()
            entry["state"], metrics = entry["step"](
                entry["state"], entry["frozen"], batches[i % 3], jax.random.key(100 + i)
            )
            jax.block_until_ready(metrics)
            entry["times"].append(time.perf_counter() - t0)
    base = statistics.median(prepared["sensitivity (batch gradient)"]["times"])
    rows = {
        name: {
            "median_s": statistics.median(e["times"]),
            "min_s": min(e["times"]),
            "times_s": e["times"],
            "ratio_to_batch_gradient": statistics.median(e["times"]) / base,
        }
        for name, e in prepared.items()
    }
    return {
        "task": task,
        "batch": [args.batch_size, args.max_seq_length],
        "repeats": args.timing_repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }


# ---- main ----------------------------------------------------------------------------------------


def cached(path: Path, compute):
    """``compute()``, saved as JSON at ``path``; an existing file is reused (restartable study)."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    helpers.write_json(path, value)
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    helpers.enable_compilation_cache(args.cache_dir)
    scratch, out = Path(args.scratch), Path(args.out)
    scratch.mkdir(parents=True, exist_ok=True)
    revision = helpers.recorded_revision(scratch)
    started = time.time()

    def say(message: str) -> None:
        print(f"[{time.time() - started:7.0f} s] {message}", flush=True)

    steps = {task: total_steps_for(task, args) for task in args.tasks}
    shadows, normals = [], []
    for task in args.tasks:
        for seed in args.seeds:
            for score in args.scores:
                say(f"shadow trajectory: {task} {score} seed {seed} ({steps[task]} steps)")
                shadows.append(
                    cached(
                        scratch / f"shadow-{task}-{score}-s{seed}.json",
                        lambda t=task, sc=score, se=seed: shadow_trajectory(t, sc, se, args, steps[t]),
                    )
                )
            for score in args.scores:
                for mode in MODES:
                    say(f"normal run: {task} {score} {mode} seed {seed}")
                    result = normal_run(task, score, mode, seed, args, steps[task])
                    normals.append({"task": task, "score": score, "mode": mode, "seed": seed, **result})
                    say(f"  -> {result['metrics']}, {result['wall_seconds']:.0f} s")
    timing = None
    if args.timing_repeats > 0:
        say(f"timing the step per mode ({args.timing_repeats} interleaved repeats)")
        timing = cached(
            scratch / f"timing-{args.tasks[0]}-r{args.timing_repeats}.json",
            lambda: time_steps(args.tasks[0], args, steps[args.tasks[0]]),
        )
    elapsed = time.time() - started
    write_outputs(out, args, argv, shadows, normals, timing, elapsed, revision)
    say(f"done; wrote {out}/REPORT.md")
    return 0


# ---- outputs -------------------------------------------------------------------------------------


def pattern_jaccard(a: dict[str, list[bool]], b: dict[str, list[bool]]) -> float:
    paths = sorted(a)
    return helpers.jaccard(np.concatenate([a[p] for p in paths]), np.concatenate([b[p] for p in paths]))


def write_outputs(out: Path, args, argv, shadows, normals, timing, elapsed, revision) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        for seed in args.seeds:
            mine = [s for s in shadows if s["task"] == task and s["seed"] == seed]
            suffix = f"_{task}" + (f"_s{seed}" if len(args.seeds) > 1 else "")
            for s in mine:
                recs = s["reallocations"]
                steps = [r["step"] for r in recs]
                helpers.save_line_plot(
                    {
                        label: (steps, [r[key] for r in recs])
                        for label, key in (
                            ("Spearman, smoothed scores", "spearman"),
                            ("Jaccard, kept sets", "jaccard"),
                            ("Spearman, raw scores of the step", "spearman_raw"),
                            ("Jaccard of two random sets this size", "chance_jaccard"),
                        )
                    },
                    out / f"agreement_{s['score']}{suffix}.png",
                    xlabel="step (re-allocation steps only)",
                    ylabel="exact vs running",
                    title=f"{task}, {s['score']}, seed {seed}: exact per-example vs running estimate, one trajectory",
                    ylim=(-1.02, 1.02),
                )
            panels = {}
            for score in args.scores:
                for mode in MODES:
                    match = [
                        n for n in normals if (n["task"], n["score"], n["mode"], n["seed"]) == (task, score, mode, seed)
                    ]
                    panels[f"{score}, {mode}"] = match[0]["ranks"]
            helpers.save_rank_panels(
                panels, out / f"rank_patterns{suffix}.png", title=f"{task}, seed {seed}: final kept ranks per mode"
            )
    machine = {**machine_summary(), "git_revision": revision, "cpu_count": os.cpu_count()}
    payload = {
        "command": helpers.command_line("compare_stats", argv),
        "scale": {k: v for k, v in vars(args).items() if k not in ("scratch", "out", "cache_dir")},
        "machine": machine,
        "elapsed_seconds": round(elapsed, 1),
        "shadow_trajectories": shadows,
        "normal_runs": normals,
        "timing": timing,
    }
    helpers.write_json(out / "results.json", payload)
    helpers.write_text(out / "REPORT.md", report_markdown(args, argv, shadows, normals, timing, machine, elapsed))


def report_markdown(args, argv, shadows, normals, timing, machine, elapsed) -> str:
    lr_text = helpers.learning_rate_text(args)
    first = shadows[0]
    sched = first["schedule"]
    # Part 1 tables
    summary_rows, step_tables = [], []
    for s in shadows:
        recs = s["reallocations"]
        rho = [r["spearman"] for r in recs]
        jac = [r["jaccard"] for r in recs]
        final = recs[-1]
        summary_rows.append(
            [
                s["task"],
                s["score"],
                s["seed"],
                len(recs),
                f"{np.mean(rho):.3f} [{min(rho):.3f}, {max(rho):.3f}]",
                f"{np.mean([r['spearman_raw'] for r in recs]):.3f}",
                f"{np.mean(jac):.3f} [{min(jac):.3f}, {max(jac):.3f}]",
                f"{final['spearman']:.3f} / {final['jaccard']:.3f}",
                f"{MAIN_METRIC[s['task']]} {100 * s['final_metrics'][MAIN_METRIC[s['task']]]:.2f}",
            ]
        )
        rows = [
            [
                r["step"],
                r["budget"],
                r["kept_exact"],
                r["kept_running"],
                f"{r['spearman']:.3f}",
                f"{r['spearman_raw']:.3f}",
                f"{r['jaccard']:.3f}",
                f"{r['chance_jaccard']:.3f}",
            ]
            for r in recs
        ]
        step_tables.append(
            f"#### {s['task']}, {s['score']}, seed {s['seed']}\n\n"
            + helpers.markdown_table(
                [
                    "step",
                    "budget",
                    "kept (exact)",
                    "kept (running)",
                    "Spearman",
                    "Spearman raw",
                    "Jaccard",
                    "chance Jaccard",
                ],
                rows,
            )
        )
    summary_table = helpers.markdown_table(
        [
            "task",
            "score",
            "seed",
            "re-allocations",
            "Spearman mean [min, max]",
            "raw Spearman mean",
            "Jaccard mean [min, max]",
            "at freeze: Spearman / Jaccard",
            "dev (this trajectory)",
        ],
        summary_rows,
    )
    # Part 2 table
    normal_rows = []
    for n in normals:
        if n["mode"] != "per_example":
            continue
        other = next(
            m
            for m in normals
            if (m["task"], m["score"], m["seed"], m["mode"]) == (n["task"], n["score"], n["seed"], "running")
        )
        shadow = next(s for s in shadows if (s["task"], s["score"], s["seed"]) == (n["task"], n["score"], n["seed"]))
        metric = MAIN_METRIC[n["task"]]
        normal_rows.append(
            [
                n["task"],
                n["score"],
                n["seed"],
                f"{100 * n['metrics'][metric]:.2f}",
                f"{100 * shadow['final_metrics'][metric]:.2f}",
                f"{100 * other['metrics'][metric]:.2f}",
                f"{n['total_budget']} / {other['total_budget']}",
                f"{pattern_jaccard(n['rank_pattern'], other['rank_pattern']):.3f}",
                f"{n['wall_seconds']:.0f} / {other['wall_seconds']:.0f}",
            ]
        )
    normal_table = helpers.markdown_table(
        [
            "task",
            "score",
            "seed",
            "dev, per-example",
            "dev, shadow trajectory (same as per-example)",
            "dev, running",
            "final budget (pe / run)",
            "Jaccard of final kept sets",
            "run wall s (pe / run)",
        ],
        normal_rows,
    )
    reused = [n for n in normals if n.get("reused_from")]
    reuse_note = ""
    if reused:
        folders = {str(Path(n["reused_from"]).parent) for n in reused}
        which = ", ".join(sorted({f"{n['score']} seed {n['seed']}" for n in reused}))
        reuse_note = (
            f" These per-example runs were not repeated ({which}): `scripts/studies/score_study.py` had made runs"
            f" with an identical config (every field but the output folder), reused from {', '.join(sorted(folders))}."
        )
    training_data = (
        f"a seeded random subset of {args.max_train_examples} training sentences"
        if args.max_train_examples
        else "the whole train split"
    )
    rank_plots = (
        "\n\n".join(f"![rank patterns](rank_patterns_{t}.png)" for t in args.tasks)
        if len(args.seeds) == 1
        else "(one figure per task and seed: rank_patterns_<task>_s<seed>.png)"
    )
    own_seconds = (
        sum(s["seconds"] for s in shadows)
        + sum(n["wall_seconds"] for n in normals if not n.get("reused_from"))
        + ((timing or {}).get("seconds") or 0.0)
    )
    metric_names = ", ".join(f"{t}: {MAIN_METRIC[t]}" for t in args.tasks)
    # Part 3 table
    timing_text = "(skipped)"
    if timing:
        rows = [
            [name, f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['ratio_to_batch_gradient']:.2f}"]
            for name, r in timing["rows"].items()
        ]
        timing_text = (
            f"Task {timing['task']}, batch {timing['batch'][0]} × {timing['batch'][1]} tokens, the library's full "
            f"jitted step (loss + orthogonal regulariser, statistics, clip + AdamW + allocator), {timing['repeats']} "
            f"interleaved repeats per mode after compilation and one warm step. Load average (1/5/15 min) before: "
            f"{', '.join(f'{x:.2f}' for x in timing['load_average_before'])}; after: "
            f"{', '.join(f'{x:.2f}' for x in timing['load_average_after'])}.\n\n"
            + helpers.markdown_table(["mode", "median s/step", "min s/step", "median / batch-gradient"], rows)
        )
    plots = (
        "\n\n".join(f"![agreement](agreement_{sc}_{t}.png)" for t in args.tasks for sc in args.scores)
        if len(args.seeds) == 1
        else "(one plot per task, score and seed: agreement_<score>_<task>_s<seed>.png)"
    )
    return f"""# Exact per-example vs running-estimate statistics for Fisher and GSNR

Generated by `scripts/studies/compare_stats.py`; the "Reading" section at the end is written by hand after the run
(it is `reading.md` beside this file, pasted in by the script).

## Setup ({helpers.scale_title(args)})

Command (from the repository root):

    {helpers.command_line("compare_stats", argv)}

* Model: pretrained all-MiniLM-L6-v2 (`minilm-l6`) with a fresh task head; AdaLoRA r 16 → 8 on the six
  matrices of each of the 6 layers (36 matrices, 576 → 288 triplets), {helpers.adapter_scale_text(args)},
  β1 = β2 = 0.85, AdaLoRA smoothing; AdamW lr {lr_text}, 6 % warm-up and linear decay, dropout on;
  batch {args.batch_size}, max length {args.max_seq_length}.
* Data: tasks {", ".join(args.tasks)} with {training_data}, {args.epochs} epoch(s) = {first["total_steps"]} steps;
  the full dev split for the final metric.
* Schedule scaled to the run: t_init = {sched["t_init"]}, t_final = {sched["t_final"]}, ΔT = {sched["delta_t"]};
  the allocator re-allocates on every ΔT-th step in (t_init, T − t_final) and at T − t_final (the freeze).
* Statistics. *Exact*: mean and mean of squares of the per-example gradients of the batch (population
  variance). *Running*: `jax_adalora.stats.running_moments` with decay {AdaLoRAConfig().running_decay},
  fed only the batch-mean gradient, `Var[g] ≈ B · (EMA[ḡ²] − EMA[ḡ]²)` with bias-corrected EMAs and B = the
  batch's real examples; `E[g²] ≈ EMA[ḡ]² + Var[g]`.
* Machine: {machine["cpu_count"]} CPU cores **shared with other jobs** ({machine["platform"]}, JAX {machine["jax"]});
  library at commit `{machine["git_revision"]}`. This script's own work took {own_seconds / 60:.1f} min of wall
  time (shadow trajectories, the runs it made, the timing; reused runs not counted; the invocation that wrote
  this report: {elapsed / 60:.1f} min). Timings below are from this machine and noisy.

## 1. Same trajectory: do the two estimates rank the triplets alike?

Training follows the exact per-example statistics. At each re-allocation step both sides' smoothed triplet
scores (the allocator's input) are compared over all 576 triplets, and each side's kept set at that step's
budget (AdaLoRA's rule: ties at the threshold masked). "Raw" compares the unsmoothed triplet scores of that
one step. "Chance" is the Jaccard overlap two random kept sets of the same size would have on average (at
the final budget, 288 of 576, it is 1/3). The exact side is checked, at every re-allocation, to equal the rank
pattern the real allocator chose.
The running side starts scoring at step 2: after a single batch its variance is 0 (no spread yet), as in the
library's running mode.

{summary_table}
{plots}

<details><summary>Every re-allocation step</summary>

{chr(10).join(step_tables)}
</details>

## 2. Separate normal runs: per-example vs running statistics

Each row: two `train_and_evaluate` runs of the same seed (same data subset, init, order and dropout), one
per statistics mode; the final dev metric (×100, {metric_names}),
the final budget, and the overlap of the two final kept-triplet sets (chance level for two random 288-of-576
sets: 1/3). The shadow trajectory of part 1 follows
the per-example run step for step; its dev metric is shown as a consistency check (it may differ in the last
digits from floating-point reassociation between the two compiled programs).{reuse_note}

{normal_table}
{rank_plots}

## 3. Cost per step (this shared 2-core CPU machine)

{timing_text}

## Reading

{helpers.reading_text(args.out)}"""


if __name__ == "__main__":
    sys.exit(main())

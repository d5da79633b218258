"""What a finished training run writes beside its checkpoints: adapter files, the rank pattern and its heatmap,
the final metrics, the labelled ``--test-file``, and the exports to transformers and PEFT."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jax_adalora.adapter_files import load_adapters, save_adapters
from jax_adalora.adapters import adapter_modules, per_layer, set_masks, trainable_filter
from jax_adalora.allocator import find_allocator_state, rank_pattern, ranks
from jax_adalora.cli.inference import predict_file
from jax_adalora.cli.mesh import is_writer, replicated, sync, weight_shardings
from jax_adalora.cli.report import atomic_write_json, save_rank_heatmap
from jax_adalora.cli.run_config import RunConfig
from jax_adalora.training import FunctionalModel


def save_trained_adapters(path: Path, functional: FunctionalModel, state) -> None:
    """The adapters, their current rank pattern and the trained head, as :func:`jax_adalora.save_adapters` writes."""
    if not is_writer():
        return
    model = functional.model(jax.device_get(state.params))
    save_adapters(path, model, rank_pattern=_pattern_with_regrown(model, state), include=functional.trainable)


def _pattern_with_regrown(model, state) -> dict[str, list[bool]]:
    """The allocator's pattern, with the triplets it masked whose λ regrew since (a save between masking steps,
    e.g. the best adapters mid-run) kept: the saved adapters are the model that was evaluated. From the final
    phase on no masked λ is non-zero, and this is the allocator's pattern."""
    nonzero = per_layer({path: np.asarray(m.lam[...]) != 0 for path, m in adapter_modules(model).items()})
    return {path: [k or bool(n) for k, n in zip(kept, np.ravel(nonzero[path]), strict=True)]
            for path, kept in rank_pattern(state.opt_state).items()}  # fmt: skip


def finish_run(run: RunConfig, data, functional, state, eval_step, sharding, progress: dict, **timing) -> dict:
    """The final metrics (returned), and on process 0 every output file of a finished run.

    ``timing`` holds ``steps`` (the run's total) and ``train_seconds_this_process``.
    """
    t = run.train
    out_dir = run.output_dir
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
        "steps": timing["steps"],
        "train_seconds_this_process": timing["train_seconds_this_process"],
    }
    if t.test_file:  # every process computes (the batches are sharded), process 0 writes
        sync("jax_adalora: best adapters written")
        final["test_predictions"] = _label_test_file(run, data.spec, functional, state, eval_step, sharding)
    if not is_writer():
        return final
    atomic_write_json(out_dir / "rank_pattern.json", {"ranks": final_ranks, "rank_pattern": rank_pattern(alloc)})
    save_rank_heatmap(final_ranks, out_dir / "rank_heatmap.png", title=f"{t.task_label}: {run.adalora.score} ranks")
    atomic_write_json(out_dir / "final_metrics.json", final)
    save_trained_adapters(out_dir / "final_adapters.safetensors", functional, state)
    if t.export and data.spec.kind == "causal_lm":
        trained = functional.model(jax.device_get(state.params))
        set_masks(trained, rank_pattern(alloc))
        _export_causal_lm(trained, out_dir, run, alloc, timing["steps"], tokenizer=data.tokenizer)
    elif t.export:
        trained = functional.model(jax.device_get(state.params))
        set_masks(trained, rank_pattern(alloc))
        _export(trained, out_dir, run, alloc, timing["steps"], label_names=data.spec.label_names)
    return final


def _label_test_file(run: RunConfig, spec, functional, state, eval_step, sharding) -> dict:
    """``--test-file`` labelled with the best adapters (their rank pattern as masks), in its own format,
    beside the run's other outputs."""
    from jax_adalora.models import load_tokenizer
    from jax_adalora.tasks.prediction_files import default_output_file

    t = run.train
    model = functional.model(jax.device_get(state.params))
    load_adapters(run.output_dir / "best_adapters.safetensors", model, include=functional.trainable)
    best = FunctionalModel(model, trainable_filter(t.head_pattern))
    return predict_file(
        eval_step,
        jax.device_put(best.params, replicated(sharding.mesh)),
        jax.device_put(best.frozen, weight_shardings(best.frozen, sharding.mesh)),  # as the eval step expects
        spec=spec,
        tokenizer=load_tokenizer(t.model),
        input_file=t.test_file,
        output_file=default_output_file(run.output_dir, t.test_file, refuse_existing=False),
        replace=True,  # the run's own output: a resume of the finished run writes it again
        max_seq_length=t.max_seq_length,
        batch_size=t.eval_batch_size,
        pad_to_multiple_of=t.pad_to_multiple_of,
        sharding=sharding,
        cache_dir=t.datasets_cache_dir or None,
        write=is_writer(),
        doc_stride=t.doc_stride,
    )


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


def _export_causal_lm(model, out_dir: Path, run: RunConfig, alloc, total_steps: int, *, tokenizer) -> None:
    """The merged model (with the tokenizer) and, when the base is a transformers directory, the PEFT adapter;
    a GGUF or packaged base gets the merged model only, and one line saying so."""
    from jax_adalora.cli import export
    from jax_adalora.models.llama.weights import resolve_checkpoint

    export.save_merged_causal_lm(model, out_dir / "merged", tokenizer=tokenizer)
    if resolve_checkpoint(run.train.model).is_file():
        print(f"--export: {run.train.model} is no transformers directory; wrote merged/ but no PEFT adapter")
        return
    export.save_peft_causal_lm_adapter(
        model, out_dir / "peft_adapter", run=run, rank_pattern=rank_pattern(alloc), total_steps=total_steps
    )

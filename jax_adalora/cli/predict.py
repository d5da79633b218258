"""``python -m jax_adalora.predict``: label new text with a trained run.

    python -m jax_adalora.predict --run-dir runs/topics-gsnr-per_example-s0 --input-file new.csv

reads the run's ``config.json`` (model, task, label names, sequence length), rebuilds the model with the
run's best adapters (``--adapters final`` for the last ones) and their rank pattern, and writes the input
rows with a ``prediction`` column (label names, numbers for regression, or answer texts for SQuAD, empty for
no answer) and, for classification, ``probability_<label>`` columns, in the input's format (csv, tsv, json,
jsonl or parquet; SQuAD's official JSON comes back one question per row). The output goes to
``--output-file`` or ``RUN/<input stem>.predictions.<suffix>``; an existing file is never replaced (nor
written beside under another name: the command stops naming it, and ``--output-file`` picks another). When the
input has the task's label column (SQuAD: answers), the task's metrics on it are printed too. Errors are one line
naming the flag or file, exit status 2 (1 for a failure at run time).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

ADAPTER_FILES = {"best": "best_adapters.safetensors", "final": "final_adapters.safetensors"}


def build_parser() -> argparse.ArgumentParser:
    from jax_adalora.cli.run_config import CommandLineParser

    parser = CommandLineParser(
        prog="python -m jax_adalora.predict",
        description="Label a csv/tsv/json/jsonl/parquet file with a trained run's model and adapters.",
    )
    parser.add_argument("--run-dir", required=True, help="the training run's --output-dir")
    parser.add_argument(
        "--input-file",
        required=True,
        help="rows to label: the task's text column(s), or SQuAD questions (id, question, context); labels optional",
    )
    parser.add_argument(
        "--output-file", default=None, help="where to write (default: RUN/<input stem>.predictions.<suffix>)"
    )
    parser.add_argument(
        "--text-columns",
        default="",
        help="the input's one or two text columns, comma-separated (default: the task's, else sentence1,sentence2, "
        "sentence or text)",
    )
    parser.add_argument("--adapters", choices=tuple(ADAPTER_FILES), default="best", help="which adapters to use")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (default: 64)")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback as well")
    return parser


def load_run(run_dir: Path):
    """The saved ``RunConfig`` and ``TaskSpec`` of a run directory; ``ValueError`` naming the file otherwise."""
    from jax_adalora.cli.run_config import build_run_config
    from jax_adalora.cli.run_dir import read_saved_config
    from jax_adalora.tasks import get_task_spec
    from jax_adalora.tasks.text_dataset import spec_from_dict

    if not run_dir.is_dir():
        raise FileNotFoundError(f"--run-dir {run_dir} is not a directory")
    saved = read_saved_config(run_dir)
    if saved is None:
        raise ValueError(f"--run-dir {run_dir}: no readable jax_adalora config.json; is it a training run's directory?")
    flat = {name: value for section in ("train", "adalora", "optim") for name, value in saved[section].items()}
    run = build_run_config(flat, source=str(run_dir / "config.json"))
    spec = spec_from_dict(saved["task"]) if isinstance(saved.get("task"), dict) else get_task_spec(run.train.task)
    return run, spec


def predict(
    run_dir: str,
    input_file: str,
    output_file: str | None,
    *,
    adapters: str = "best",
    batch_size: int = 64,
    text_columns: tuple[str, ...] = (),
):
    """Labels ``input_file`` with the run in ``run_dir``; returns the summary printed by the command."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from jax_adalora.adapter_files import load_adapters
    from jax_adalora.adapters import inject_adapters, trainable_filter
    from jax_adalora.cli.inference import predict_file
    from jax_adalora.cli.mesh import data_mesh
    from jax_adalora.cli.step import make_eval_step
    from jax_adalora.models import from_pretrained, load_tokenizer
    from jax_adalora.tasks.prediction_files import check_output_file, default_output_file
    from jax_adalora.tasks.sources import require_file
    from jax_adalora.training import FunctionalModel

    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: expected >= 1")
    run_path = Path(run_dir)
    run, spec = load_run(run_path)
    adapter_file = run_path / ADAPTER_FILES[adapters]
    if not adapter_file.is_file():
        raise FileNotFoundError(f"--run-dir {run_path}: no {adapter_file.name} (has the run finished an evaluation?)")
    require_file(input_file, "--input-file")
    if output_file:
        out = check_output_file(output_file)
    else:
        out = default_output_file(run_path, input_file, numbered=False)
    t = run.train
    head = "qa" if spec.kind == "qa" else "classification"
    dtype = jnp.bfloat16 if t.dtype == "bfloat16" else jnp.float32
    model = from_pretrained(t.model, head=head, num_labels=max(spec.num_labels, 1), dtype=dtype, seed=t.seed)
    inject_adapters(model, run.adalora, rngs=nnx.Rngs(t.seed + 1))
    load_adapters(adapter_file, model, include=trainable_filter(t.head_pattern))
    functional = FunctionalModel(model, trainable_filter(t.head_pattern))
    mesh = data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    summary = predict_file(
        make_eval_step(functional, mesh=mesh),
        jax.device_put(functional.params, replicated),
        jax.device_put(functional.frozen, replicated),
        spec=spec,
        tokenizer=load_tokenizer(t.model),
        input_file=input_file,
        output_file=out,
        max_seq_length=t.max_seq_length,
        batch_size=batch_size * len(jax.devices()),
        pad_to_multiple_of=t.pad_to_multiple_of,
        sharding=NamedSharding(mesh, PartitionSpec("data")),
        cache_dir=t.datasets_cache_dir or None,
        text_columns=text_columns,
        doc_stride=t.doc_stride,
    )
    return {"task": spec.name, "adapters": str(adapter_file), **summary}


def main(argv: list[str] | None = None) -> int:
    """The command line: returns the exit status (0; 2 for a usage error; 1 for a failure at run time)."""
    from jax_adalora.cli.errors import error_line

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # The base checkpoint's missing head is expected here: the run's trained head comes from its adapter file.
    logging.getLogger("jax_adalora.models.pretrained").setLevel(logging.ERROR)
    try:
        summary = predict(
            args.run_dir,
            args.input_file,
            args.output_file,
            adapters=args.adapters,
            batch_size=args.batch_size,
            text_columns=tuple(c.strip() for c in args.text_columns.split(",") if c.strip()),
        )
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        status, line = error_line(err)
        print(f"error: {line}", file=sys.stderr)
        return status
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

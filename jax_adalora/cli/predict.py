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

On a causal-LM run, the rows' ``messages``, ``prompt`` or ``text`` are continued by generation with the adapted
model (KV cache; ``--max-new-tokens``, ``--temperature``, ``--top-p``, ``--seed``; stopping at EOS), and written
as JSON lines (the row plus ``generation``) to ``RUN/<input stem>.predictions.jsonl`` by default.
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
    llm = parser.add_argument_group("causal LMs (a run on a Llama-family model): generation")
    llm.add_argument(
        "--max-new-tokens", type=int, default=64, help="tokens to generate per prompt at most (default: 64)"
    )
    llm.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    llm.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's probability mass (default: 1.0)")
    llm.add_argument("--seed", type=int, default=0, help="the sampling key's seed (default: 0)")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback as well")
    return parser


def load_run(run_dir: Path):
    """The saved ``RunConfig`` and ``TaskSpec`` of a run directory; ``ValueError`` naming the file otherwise."""
    from jax_adalora.cli.run_config import build_run_config
    from jax_adalora.cli.run_dir import read_saved_config
    from jax_adalora.tasks import get_task_spec
    from jax_adalora.tasks.label_inference import spec_from_dict

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
    **generation,
):
    """Labels ``input_file`` with the run in ``run_dir``; returns the summary printed by the command. For a
    causal-LM run, generates instead (``generation``: ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``;
    see :func:`_generate`)."""
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
    # A causal LM's generations are always JSON lines: RUN/<stem>.predictions.jsonl by default.
    default_input = Path(input_file).with_suffix(".jsonl") if spec.kind == "causal_lm" else input_file
    if output_file:
        out = check_output_file(output_file)
    else:
        out = default_output_file(run_path, default_input)
    t = run.train
    if spec.kind == "causal_lm":
        return _generate(run, spec, adapter_file, input_file, out, batch_size=batch_size, **generation)
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


def _generate(run, spec, adapter_file: Path, input_file: str, out: Path, *, batch_size: int, **generation) -> dict:
    """A causal-LM run continues each prompt of ``input_file`` (:func:`jax_adalora.tasks.causal_lm.read_prompts`)
    with its adapters (KV cache, stopping at EOS) and writes ``out`` as JSON lines: the input row plus
    ``generation``."""
    import jax
    from flax import nnx

    from jax_adalora.adapter_files import load_adapters
    from jax_adalora.adapters import inject_adapters, trainable_filter
    from jax_adalora.cli.inference import generate_texts
    from jax_adalora.cli.report import atomic_write_bytes
    from jax_adalora.models.llama import from_pretrained, load_tokenizer
    from jax_adalora.tasks.causal_lm import read_prompts

    max_new_tokens, temperature = generation.get("max_new_tokens", 64), generation.get("temperature", 0.0)
    top_p = generation.get("top_p", 1.0)
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: expected >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"--temperature {temperature} / --top-p {top_p}: expected >= 0 and in (0, 1]")
    t = run.train
    tokenizer = load_tokenizer(t.model)
    rows, prompts = read_prompts(input_file, tokenizer, cache_dir=t.datasets_cache_dir or None)
    model = from_pretrained(t.model, dtype=t.dtype)
    inject_adapters(model, run.adalora, rngs=nnx.Rngs(t.seed + 1))
    load_adapters(adapter_file, model, include=trainable_filter(t.head_pattern))
    sampling = {"temperature": temperature, "top_p": top_p}
    if temperature > 0:
        sampling["rng"] = jax.random.key(generation.get("seed", 0))
    texts = generate_texts(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, **sampling)
    lines = [json.dumps({**row, "generation": text}, ensure_ascii=False) for row, text in zip(rows, texts, strict=True)]
    atomic_write_bytes(out, "".join(line + "\n" for line in lines).encode())
    return {"task": spec.name, "adapters": str(adapter_file), "rows": len(rows), "output_file": str(out)}


def main(argv: list[str] | None = None) -> int:
    """The command line: returns the exit status (0; 2 for a usage error; 1 for a failure at run time)."""
    from jax_adalora.cli.errors import error_line
    from jax_adalora.cli.report import for_display

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
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        status, line = error_line(err)
        print(f"error: {line}", file=sys.stderr)
        return status
    print(json.dumps(for_display(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

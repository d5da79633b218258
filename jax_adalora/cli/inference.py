"""Model outputs over a whole tokenised split, and labelled files from them: shared by training and ``predict``.

>>> outputs = split_outputs(eval_step, params, frozen, data.evals["validation"], batch_size=64,
...                         pad_to_multiple_of=8, sharding=sharding)
>>> labelled = predict_file(eval_step, params, frozen, spec=spec, tokenizer=tok, input_file="new.csv",
...                         output_file="new.predictions.csv", max_seq_length=128, batch_size=64,
...                         pad_to_multiple_of=8, sharding=sharding)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import numpy as np

from jax_adalora.cli.mesh import device_batch, host_local
from jax_adalora.tasks import BatchIterator, EncodedSplit, TaskSpec, compute_metrics
from jax_adalora.tasks.prediction_files import write_predictions
from jax_adalora.tasks.squad import read_questions
from jax_adalora.tasks.squad_features import encode_squad, postprocess_qa, squad_metrics
from jax_adalora.tasks.task_data import predictions_from_outputs
from jax_adalora.tasks.text_dataset import read_unlabelled, tokenise


def split_outputs(
    eval_step, params, frozen, split: EncodedSplit, *, batch_size: int, pad_to_multiple_of: int, sharding
):
    """The model's outputs for every row of ``split``, in split order, as float32 numpy arrays (a tuple of
    arrays for QA). The last partial batch is padded and masked, never dropped."""
    outputs = []
    for batch in BatchIterator(split, batch_size, shuffle=False, seed=0, pad_to_multiple_of=pad_to_multiple_of):
        out = jax.device_get(host_local(eval_step(params, frozen, device_batch(batch, sharding))))
        keep = np.asarray(batch["example_mask"]).astype(bool)
        outputs.append(jax.tree.map(lambda a, keep=keep: np.asarray(a, np.float32)[keep], out))
    if isinstance(outputs[0], tuple):
        return tuple(np.concatenate([o[i] for o in outputs]) for i in range(len(outputs[0])))
    return np.concatenate(outputs)


def predict_file(
    eval_step,
    params,
    frozen,
    *,
    spec: TaskSpec,
    tokenizer,
    input_file: str | os.PathLike,
    output_file: str | os.PathLike | None,
    max_seq_length: int,
    batch_size: int,
    pad_to_multiple_of: int,
    sharding,
    cache_dir: str | os.PathLike | None = None,
    write: bool = True,
    replace: bool = False,
    text_columns: tuple[str, ...] = (),
    doc_stride: int = 128,
) -> dict:
    """Labels the rows of ``input_file``: texts (the task's text columns or ``text_columns``) or, for a QA task,
    questions (SQuAD's official JSON or flat ``id``, ``question``, ``context`` records); labels or gold answers
    are optional.

    Writes ``output_file`` (the input's columns plus ``prediction``: a label name, a number, or an answer text,
    empty for no answer; for classification also ``probability_<label>``) on the writing process when
    ``write``; the official JSON's questions are written one per row. Returns ``{"rows": N, "output_file":
    path}`` plus the task's metrics when the file has labels or answers.
    """
    outputs_of = functools.partial(
        split_outputs,
        eval_step,
        params,
        frozen,
        batch_size=batch_size,
        pad_to_multiple_of=pad_to_multiple_of,
        sharding=sharding,
    )
    probabilities = None
    if spec.kind == "qa":
        rows, examples, labelled = read_questions(spec, input_file, cache_dir=cache_dir)
        split = encode_squad(tokenizer, examples, max_seq_length=max_seq_length, doc_stride=doc_stride)
        start, end = outputs_of(split)
        answers, null_odds = postprocess_qa(examples, split, start, end, with_negative=spec.with_negative)
        predicted = [answers[e.id] for e in examples]
        metrics = squad_metrics(examples, answers, null_odds, with_negative=spec.with_negative) if labelled else {}
    else:
        rows, columns, labels = read_unlabelled(input_file, spec, cache_dir=cache_dir, text_columns=text_columns)
        outputs = outputs_of(tokenise(rows, tokenizer, columns, max_seq_length=max_seq_length, labels=None))
        predictions = predictions_from_outputs(spec.kind, outputs)
        if spec.kind == "regression":
            predicted = [float(v) for v in predictions]
        else:
            from scipy.special import softmax

            predicted, probabilities = [spec.label_names[i] for i in predictions], softmax(outputs, axis=-1)
        metrics = {} if labels is None else compute_metrics(spec.metrics, predictions, labels)
    result: dict = {"rows": len(rows), **metrics}
    if write and output_file is not None:
        path = write_predictions(
            rows,
            output_file,
            predictions=predicted,
            probabilities=probabilities,
            label_names=spec.label_names,
            replace=replace,
        )
        result["output_file"] = str(Path(path))
    return result


def evaluate(eval_step, params, frozen, data, run, sharding, functional=None) -> dict[str, float]:
    """Every dev split, all examples (the last partial batch is padded and masked, never dropped). A causal-LM
    task (kind ``causal_lm``) gets :func:`evaluate_causal_lm`, which needs ``functional`` to generate."""
    if data.spec.kind == "causal_lm":
        return evaluate_causal_lm(eval_step, params, frozen, data, run, sharding, functional)
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


def main_metric(data, metrics: dict[str, float]) -> float:
    """The task's main metric (``data.spec.main_metric``) among ``metrics``, whichever split prefixes it;
    higher is better, so a loss (a causal LM's without exact match) comes back negated."""
    name = data.spec.main_metric
    for key, value in metrics.items():
        if key == name or key.endswith("/" + name):
            return -value if name == "loss" else value
    raise KeyError(f"main metric {name!r} not in {sorted(metrics)}")


# ---- causal language models --------------------------------------------------------------------------------


def causal_lm_losses_of(eval_step, params, frozen, split, *, batch_size: int, pad_to_multiple_of: int, sharding):
    """Per-sequence losses (N,) of a :class:`jax_adalora.tasks.causal_lm.CausalLMSplit`, in split order, from an
    eval step made with ``kind="causal_lm"``."""
    from jax_adalora.tasks.causal_lm_batches import CausalLMBatchIterator

    losses = []
    batches = CausalLMBatchIterator(split, batch_size, shuffle=False, seed=0, pad_to_multiple_of=pad_to_multiple_of)
    for batch in batches:
        out = jax.device_get(host_local(eval_step(params, frozen, device_batch(batch, sharding))))
        losses.append(np.asarray(out, np.float32)[np.asarray(batch["example_mask"]).astype(bool)])
    return np.concatenate(losses)


def generate_texts(model, tokenizer, prompts, *, batch_size: int, max_new_tokens: int, **sampling) -> list[str]:
    """Completions of token-id ``prompts`` by :func:`jax_adalora.models.llama.generate` (KV cache, prompts
    padded on the left, stopping at the model's and the tokenizer's end tokens), decoded without special tokens.
    ``sampling``: ``temperature``, ``top_p``, ``rng``."""
    from jax_adalora.models.llama import generate
    from jax_adalora.tasks.causal_lm_batches import left_padded
    from jax_adalora.tasks.causal_lm_metrics import decode_completions

    ends = sorted({*(int(t) for t in np.atleast_1d(model.config.eos_token_ids)), int(tokenizer.eos_token_id)})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # One shape for every batch (the longest prompt, rounded up to 8; full batches): one compilation of the
    # prefill and one of the decoding step, not one per batch.
    width = -(-max(len(p) for p in prompts) // 8) * 8 if prompts else 0
    rows = min(batch_size, len(prompts))
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids, mask = left_padded(chunk, int(pad), width=width, rows=rows)
        mask[len(chunk) :, -1] = 1  # filler rows: one real (pad) token, so generation accepts them
        new = generate(model, ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=ends, **sampling)
        texts.extend(decode_completions(tokenizer, jax.device_get(new)[: len(chunk)], ends))
    return texts


def evaluate_causal_lm(eval_step, params, frozen, data, run, sharding, functional) -> dict[str, float]:
    """``loss`` (the mean per-sequence loss, as training minimises it) and ``perplexity`` (exp of the
    token-weighted mean) over the dev split, and with prompts and ``--max-new-tokens`` the ``exact_match`` of
    greedy completions against the references."""
    from jax_adalora.tasks.causal_lm_metrics import exact_match, lm_metrics

    t = run.train
    results: dict[str, float] = {}
    for split_name, split in data.evals.items():
        losses = causal_lm_losses_of(
            eval_step, params, frozen, split,
            batch_size=t.eval_batch_size, pad_to_multiple_of=t.pad_to_multiple_of, sharding=sharding,
        )  # fmt: skip
        metrics = lm_metrics(losses, split.loss_mask.sum(axis=1))
        if "exact_match" in data.spec.metrics and split.prompts:
            if functional is None:
                raise ValueError("evaluate: exact match of a causal LM's generations needs the functional model")
            model = functional.model(params, frozen)  # the weights stay where they are (replicated)
            generated = generate_texts(
                model, data.tokenizer, split.prompts, batch_size=t.eval_batch_size, max_new_tokens=t.max_new_tokens
            )
            metrics["exact_match"] = exact_match(generated, split.references)
        prefix = "" if len(data.evals) == 1 else f"{split_name}/"
        results.update({f"{prefix}{k}": float(v) for k, v in metrics.items()})
    return results

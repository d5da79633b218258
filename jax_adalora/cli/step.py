"""The training command's task losses and its jitted steps, on the library's training step.

The train step is :func:`jax_adalora.training.train_step_fn` (``value_grad_and_moments`` with the task loss and
γ · orthogonal regularisation, then ``optax.chain(clip, adamw, rank_allocator)``), jitted here with the command's
compiler options and, on a mesh, its shardings. The statistics follow the score:

* sensitivity / movement / magnitude: ``statistics="batch"`` (the training gradient, regulariser included);
* fisher / gsnr / saliency: ``AdaLoRAConfig.statistics``, ``"per_example"`` (exact, one batch backward pass
  through per-example probes) or ``"running"`` (EMA estimates, scoring from the second step).

Dropout draws one key per example, ``fold_in(step_key, example_index)``, so every statistics path sees
the same masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_adalora.cli.runtime import step_compiler_options
from jax_adalora.config import AdaLoRAConfig
from jax_adalora.models.dropout import dropout_keys
from jax_adalora.models.llama import LlamaForCausalLM
from jax_adalora.tasks.causal_lm_metrics import causal_lm_losses
from jax_adalora.training import FunctionalModel, train_step_fn

PyTree = Any
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_outputs(model: nnx.Module, inputs: dict, keys=None):
    """The model's outputs (logits, or (start, end) logits for QA; a causal LM's (B, T, V) next-token logits,
    without dropout: it has none)."""
    if isinstance(model, LlamaForCausalLM):
        return model(inputs["input_ids"], inputs.get("attention_mask"))
    return model(*(inputs.get(k) for k in MODEL_INPUTS), dropout_keys=keys)


def apply_model(functional: FunctionalModel, params: PyTree, frozen: PyTree, inputs: dict, keys=None):
    """The outputs of the model that ``functional`` rebuilds from ``params`` and ``frozen``."""
    return model_outputs(functional.model(params, frozen), inputs, keys)


# ---- losses --------------------------------------------------------------------------------------


def task_loss(kind: str, outputs, batch: dict) -> jax.Array:
    """Per-example losses (B,) for ``kind`` in classification | regression | qa | causal_lm (each sequence's
    mean next-token loss over its ``loss_mask``, :func:`jax_adalora.tasks.causal_lm_metrics.causal_lm_losses`)."""
    if kind == "causal_lm":
        return causal_lm_losses(outputs, batch)
    if kind == "classification":
        logits = outputs.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    if kind == "regression":
        prediction = outputs.astype(jnp.float32)[..., 0]
        return jnp.square(prediction - batch["labels"].astype(jnp.float32))
    if kind == "qa":
        start_logits, end_logits = (o.astype(jnp.float32) for o in outputs)
        length = start_logits.shape[-1]
        start = jnp.clip(batch["start_positions"], 0, length - 1)
        end = jnp.clip(batch["end_positions"], 0, length - 1)
        start_loss = optax.softmax_cross_entropy_with_integer_labels(start_logits, start)
        end_loss = optax.softmax_cross_entropy_with_integer_labels(end_logits, end)
        return 0.5 * (start_loss + end_loss)
    raise ValueError(f"unknown task kind {kind!r}: expected classification, regression, qa or causal_lm")


def task_losses_fn(kind: str, step_key, *, dropout: bool = True) -> Callable:
    """``losses(model, batch) -> (B,)`` for :func:`jax_adalora.moments.value_grad_and_moments`: each example's
    task loss, with its dropout key folded from ``step_key`` and the example's index."""

    def losses(model, batch):
        keys = dropout_keys(step_key, batch["example_index"]) if dropout else None
        return task_loss(kind, model_outputs(model, batch, keys), batch)

    return losses


# ---- steps ---------------------------------------------------------------------------------------


def make_train_step(
    functional: FunctionalModel,
    tx,
    adalora: AdaLoRAConfig,
    kind: str,
    *,
    dropout: bool = True,
    compiler_options: dict[str, str] | None = None,
    microbatch_size: int | None = None,
    mesh: Mesh | None = None,
    frozen_sharding=None,
) -> Callable:
    """``train_step(state, frozen, batch, step_key) -> (state, metrics)``, jitted.

    ``batch`` holds the model inputs, the labels, ``example_mask`` (B,) and ``example_index`` (B,).
    ``compiler_options`` go to ``jax.jit``; ``None`` means :func:`jax_adalora.cli.runtime.step_compiler_options`
    and ``{}`` XLA's defaults. ``microbatch_size`` (a divisor of the batch size) differentiates the loss in
    microbatches of that many examples: the same update and statistics, a smaller working set.
    ``mesh`` (from :func:`jax_adalora.cli.mesh.data_mesh`) fixes the step's shardings: the state, key and
    metrics replicated, the frozen weights as ``frozen_sharding`` says (a tree of shardings,
    :func:`jax_adalora.cli.mesh.weight_shardings`; default replicated), every batch array split along its first
    axis. The new state then always comes back as the step expects it (no recompilation, donation intact), and
    an argument placed otherwise is an error at the call rather than a silent copy. Without it, the shardings
    follow the arguments.
    """
    train_step = train_step_fn(
        functional,
        tx,
        adalora,
        lambda step_key: task_losses_fn(kind, step_key, dropout=dropout),
        microbatch_size=microbatch_size,
    )
    if compiler_options is None:
        compiler_options = step_compiler_options()
    shardings = {}
    if mesh is not None:
        replicated, split = _mesh_shardings(mesh)
        weights = replicated if frozen_sharding is None else frozen_sharding
        shardings = {"in_shardings": (replicated, weights, split, replicated), "out_shardings": replicated}
    return jax.jit(train_step, donate_argnums=(0,), compiler_options=compiler_options, **shardings)


def make_eval_step(
    functional: FunctionalModel, *, mesh: Mesh | None = None, kind: str = "", frozen_sharding=None
) -> Callable:
    """``eval_step(params, frozen, batch) -> outputs`` (logits, or (start, end) for QA), jitted; for
    ``kind="causal_lm"`` the per-sequence losses (B,) instead of the (B, T, V) logits.

    ``mesh`` fixes the shardings: trained weights replicated, frozen ones as ``frozen_sharding`` (default
    replicated), batch and outputs split along their first axis. Without it, the shardings follow the arguments.
    """

    def eval_step(params, frozen, batch):
        outputs = apply_model(functional, params, frozen, batch)
        return causal_lm_losses(outputs, batch) if kind == "causal_lm" else outputs

    if mesh is None:
        return jax.jit(eval_step)
    replicated, split = _mesh_shardings(mesh)
    weights = replicated if frozen_sharding is None else frozen_sharding
    return jax.jit(eval_step, in_shardings=(replicated, weights, split), out_shardings=split)


def _mesh_shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, split along the first axis over every device) on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(mesh.axis_names))

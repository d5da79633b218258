"""The training command's jitted steps, built on the public API like any user's loop.

A :class:`FunctionalModel` holds an adapted model as ``(graphdef, params, frozen)``: ``params`` are the
trainable variables (every :class:`jax_adalora.adapters.AdaLoRAParam` and the head parameters that
``head_pattern`` names) as a pure nested dict, ``frozen`` everything else. One training step rebuilds the
model from them, calls :func:`jax_adalora.moments.value_grad_and_moments` (task loss, γ · orthogonal
regularisation as its penalty, the statistics the score needs), and applies
``optax.chain(clip, adamw, rank_allocator)``, all inside one ``jax.jit``:

* sensitivity / movement: ``statistics="batch"`` (the training gradient, regulariser included);
* fisher / gsnr: ``AdaLoRAConfig.statistics``, ``"per_example"`` (exact, one batch backward pass through
  per-example probes) or ``"running"`` (EMA estimates, scoring from the second step).

Dropout draws one key per example, ``fold_in(step_key, example_index)``, so every statistics path sees
the same masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_adalora.adapters import trainable_filter
from jax_adalora.allocator import rank_allocator
from jax_adalora.cli.runtime import step_compiler_options
from jax_adalora.config import AdaLoRAConfig, OptimConfig
from jax_adalora.models.dropout import dropout_keys
from jax_adalora.moments import RunningMoments, value_grad_and_moments
from jax_adalora.regularization import orthogonal_regularization_of_model
from jax_adalora.scores import reads_moments

PyTree = Any
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TrainState(NamedTuple):
    params: PyTree  # the trainable variables as a pure nested dict (nnx.to_pure_dict layout)
    opt_state: PyTree
    running: PyTree | None  # RunningMoments' state, only with statistics="running" and a score that reads it
    step: jax.Array  # shape=(), int32


class FunctionalModel:
    """An adapted model as ``(graphdef, params, frozen)``, so that the jitted steps are pure functions.

    ``params`` (pure nested dict of the trainable variables, :func:`trainable_filter`) and ``frozen`` (the
    rest, an ``nnx.State``) are what the steps take; :meth:`model` rebuilds the NNX model from them."""

    def __init__(self, model: nnx.Module, head_pattern: str):
        self.trainable = trainable_filter(head_pattern)
        self.graphdef, params, self.frozen = nnx.split(model, self.trainable, ...)
        self.params = nnx.to_pure_dict(params)

    def model(self, params: PyTree, frozen: PyTree | None = None) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.frozen if frozen is None else frozen)

    def apply(self, params: PyTree, frozen: PyTree, inputs: dict, dropout_keys=None):
        """The model's outputs (logits, or (start, end) logits for QA)."""
        return model_outputs(self.model(params, frozen), inputs, dropout_keys)


def model_outputs(model: nnx.Module, inputs: dict, keys=None):
    return model(*(inputs.get(k) for k in MODEL_INPUTS), dropout_keys=keys)


# ---- losses --------------------------------------------------------------------------------------


def task_loss(kind: str, outputs, batch: dict) -> jax.Array:
    """Per-example losses (B,) for ``kind`` in classification | regression | qa."""
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
    raise ValueError(f"unknown task kind {kind!r}: expected classification, regression or qa")


def task_losses_fn(kind: str, step_key, *, dropout: bool = True) -> Callable:
    """``losses(model, batch) -> (B,)`` for :func:`jax_adalora.moments.value_grad_and_moments`: each example's
    task loss, with its dropout key folded from ``step_key`` and the example's index."""

    def losses(model, batch):
        keys = dropout_keys(step_key, batch["example_index"]) if dropout else None
        return task_loss(kind, model_outputs(model, batch, keys), batch)

    return losses


def orthogonal_penalty(adalora: AdaLoRAConfig) -> Callable | None:
    """``γ · R(P, Q)`` of a model as ``value_grad_and_moments``'s ``penalty_fn``; ``None`` when γ is 0."""
    gamma = adalora.orth_reg_weight
    if gamma <= 0:
        return None
    return lambda model: gamma * orthogonal_regularization_of_model(model)


def statistics_mode(adalora: AdaLoRAConfig) -> str:
    """What the score reads: ``adalora.statistics`` for a score of second moments (Fisher, GSNR, saliency), else
    the batch gradient alone (sensitivity, movement, magnitude)."""
    return adalora.statistics if reads_moments(adalora.score) else "batch"


# ---- optimizer -----------------------------------------------------------------------------------


def make_optimizer(
    optim: OptimConfig, adalora: AdaLoRAConfig, total_steps: int
) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(clip, adamw with warm-up/decay, rank_allocator)``; the allocator is last."""
    warmup = int(round(optim.warmup_ratio * total_steps))
    learning_rate = optax.join_schedules(
        [
            optax.linear_schedule(0.0, optim.learning_rate, max(warmup, 1)),
            optax.linear_schedule(optim.learning_rate, 0.0, max(total_steps - warmup, 1)),
        ],
        [warmup],
    )
    return optax.chain(
        optax.clip_by_global_norm(optim.max_grad_norm),
        optax.adamw(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay),
        rank_allocator(adalora, total_steps),
    )


def init_train_state(functional: FunctionalModel, tx, adalora: AdaLoRAConfig) -> TrainState:
    running = None
    if statistics_mode(adalora) == "running":
        moments = RunningMoments(
            functional.model(functional.params), wrt=functional.trainable, decay=adalora.running_decay
        )
        running = nnx.to_pure_dict(nnx.state(moments))
    return TrainState(
        params=functional.params,
        opt_state=tx.init(functional.params),
        running=running,
        step=jnp.zeros((), jnp.int32),
    )


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
) -> Callable:
    """``train_step(state, frozen, batch, step_key) -> (state, metrics)``, jitted.

    ``batch`` holds the model inputs, the labels, ``example_mask`` (B,) and ``example_index`` (B,).
    ``compiler_options`` go to ``jax.jit``; ``None`` means :func:`jax_adalora.cli.runtime.step_compiler_options`
    and ``{}`` XLA's defaults. ``microbatch_size`` (a divisor of the batch size) differentiates the loss in
    microbatches of that many examples: the same update and statistics, a smaller working set.
    ``mesh`` (with a ``data`` axis) fixes the step's shardings: the state, frozen weights, key and metrics
    replicated, every batch array split along its first axis. The new state then always comes back as the
    step expects it (no recompilation, donation intact), and an argument placed otherwise is an error at the
    call rather than a silent copy. Without it, the shardings follow the arguments.
    """
    mode = statistics_mode(adalora)
    penalty_fn = orthogonal_penalty(adalora)
    running_graphdef = None
    if mode == "running":
        running_graphdef = nnx.graphdef(
            RunningMoments(functional.model(functional.params), wrt=functional.trainable, decay=adalora.running_decay)
        )

    def train_step(state: TrainState, frozen, batch, step_key):
        model = functional.model(state.params, frozen)
        running = None if running_graphdef is None else nnx.merge(running_graphdef, state.running)
        loss, grads, moments = value_grad_and_moments(
            task_losses_fn(kind, step_key, dropout=dropout),
            model,
            batch,
            statistics=mode,
            wrt=functional.trainable,
            mask=batch["example_mask"],
            microbatch_size=microbatch_size,
            running=running,
            penalty_fn=penalty_fn,
        )
        grads = nnx.to_pure_dict(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, moments=moments)
        params = optax.apply_updates(state.params, updates)
        running_state = None if running is None else nnx.to_pure_dict(nnx.state(running))
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        return TrainState(params, opt_state, running_state, state.step + 1), metrics

    if compiler_options is None:
        compiler_options = step_compiler_options()
    shardings = {}
    if mesh is not None:
        replicated, split = _mesh_shardings(mesh)
        shardings = {"in_shardings": (replicated, replicated, split, replicated), "out_shardings": replicated}
    return jax.jit(train_step, donate_argnums=(0,), compiler_options=compiler_options, **shardings)


def make_eval_step(functional: FunctionalModel, *, mesh: Mesh | None = None) -> Callable:
    """``eval_step(params, frozen, batch) -> outputs`` (logits, or (start, end) for QA), jitted.

    ``mesh`` (with a ``data`` axis) fixes the shardings: weights replicated, batch and outputs split along
    their first axis. Without it, the shardings follow the arguments.
    """

    def eval_step(params, frozen, batch):
        return functional.apply(params, frozen, batch, None)

    if mesh is None:
        return jax.jit(eval_step)
    replicated, split = _mesh_shardings(mesh)
    return jax.jit(eval_step, in_shardings=(replicated, replicated, split), out_shardings=split)


def _mesh_shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, split along the first axis over ``data``) on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))

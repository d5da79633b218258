"""The jitted training and evaluation steps over a functional view of an adapted NNX model.

The trainable parameters form one pytree ``{"adapters": triplets, "head": {path: array}}``; the rest
of the model (frozen base weights, rank masks) is a separate argument. One training step computes
the task loss plus γ · orthogonal regularisation, the gradient statistics the score needs, and the
``optax.chain(clip, adamw, rank_allocator)`` update, all inside one ``jax.jit``.

Gradient statistics per score and ``statistics`` mode:

* sensitivity / movement: the batch gradient only (``jax.grad`` of the mean loss).
* fisher / gsnr, ``per_example``: exact moments of the adapter gradients over the batch's examples, from
  one batch forward and backward pass through zero-valued per-example probes of the adapters
  (:func:`jax_adalora.stats.per_example_moments_of_probes`, :func:`jax_adalora.adapters.probed_adapter`);
  the batch gradient is their mean, and the head gets its batch gradient from the same pass.
  :func:`example_loss` is the same per-example loss for ``jax.vmap``, the reference the tests hold the
  probes to.
* fisher / gsnr, ``running``: the batch gradient plus EMA estimates of ``E[g²]`` and ``Var[g]``; the
  scores start at the second step, when the estimates first see a spread.

Dropout draws one key per example, ``fold_in(step_key, example_index)``, so per-example and batch
gradients see the same masks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_adalora.adapters import (
    AdaLoRAParam,
    get_triplets,
    per_example_adapters,
    probes_to_triplet_layout,
    set_probes,
    set_triplets,
    zero_probes,
)
from jax_adalora.allocator import rank_allocator
from jax_adalora.config import AdaLoRAConfig
from jax_adalora.microbatch import value_and_grad_in_microbatches
from jax_adalora.models.dropout import dropout_keys
from jax_adalora.regularization import orthogonal_regularization
from jax_adalora.runtime import step_compiler_options
from jax_adalora.stats import (
    Moments,
    RunningMomentsState,
    batch_gradient_moments,
    moments_of_probe_gradients,
    running_moments,
    running_moments_init,
)

PyTree = Any
# Running estimates give Var[g] = 0 after one step (no spread yet); the scores wait for the second step.
RUNNING_WARMUP_STEPS = 2
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings: AdamW with linear warm-up and linear decay, global-norm clipping."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


class TrainState(NamedTuple):
    params: PyTree  # {"adapters": triplets, "head": {path: array}}
    opt_state: PyTree
    running: RunningMomentsState | None  # only with statistics="running" and a score that reads it
    step: jax.Array  # shape=(), int32


# ---- functional view of the model ----------------------------------------------------------------


def head_params(model: nnx.Module, pattern: str) -> dict[str, jax.Array]:
    """Trainable non-adapter parameters (e.g. the classifier) whose '.'-joined path fully matches."""
    regex = re.compile(pattern)
    out = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if isinstance(variable, AdaLoRAParam):
            continue
        name = ".".join(str(p) for p in path)
        if regex.fullmatch(name):
            out[name] = variable[...]
    return out


def set_head_params(model: nnx.Module, values: dict[str, jax.Array]) -> None:
    for name, value in values.items():
        node = model
        parts = name.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        getattr(node, parts[-1]).set_value(value)


def trainable_params(model: nnx.Module, head_pattern: str) -> PyTree:
    return {"adapters": get_triplets(model), "head": head_params(model, head_pattern)}


def set_trainable_params(model: nnx.Module, params: PyTree) -> None:
    set_triplets(model, params["adapters"])
    set_head_params(model, params["head"])


class FunctionalModel:
    """``apply(params, frozen, inputs, dropout_keys)`` over a graphdef: a pure function of its inputs."""

    def __init__(self, model: nnx.Module):
        self.graphdef, self.frozen = nnx.split(model)

    def apply(self, params: PyTree, frozen: PyTree, inputs: dict, dropout_keys=None, probes: PyTree | None = None):
        """The model's outputs; ``probes`` (:func:`jax_adalora.adapters.zero_probes`) make the adapters' backward
        pass keep each example's gradient."""
        model = nnx.merge(self.graphdef, frozen, copy=True)
        set_trainable_params(model, params)
        if probes is not None:
            set_probes(model, probes)
        return model(*(inputs.get(k) for k in MODEL_INPUTS), dropout_keys=dropout_keys)

    def to_model(self, params: PyTree, frozen: PyTree | None = None) -> nnx.Module:
        model = nnx.merge(self.graphdef, self.frozen if frozen is None else frozen)
        set_trainable_params(model, params)
        return model


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
        rank_allocator(adalora, total_steps, adapter_key="adapters"),
    )


def init_train_state(params: PyTree, tx, adalora: AdaLoRAConfig) -> TrainState:
    uses_running = adalora.needs_variance and adalora.statistics == "running"
    return TrainState(
        params=params,
        opt_state=tx.init(params),
        running=running_moments_init(params) if uses_running else None,
        step=jnp.zeros((), jnp.int32),
    )


# ---- steps ---------------------------------------------------------------------------------------


def example_loss(functional: FunctionalModel, kind: str, *, dropout: bool = True) -> Callable:
    """``loss_one(adapters, head, example, frozen, step_key)``: the task loss of ONE example (no batch axis),
    with its dropout key folded from the step key and the example's index, for ``jax.vmap``. The training
    step uses :func:`example_losses` instead; this is the reference its per-example gradients are tested
    against. The regulariser is added separately (:func:`regulariser_gradient`)."""

    def loss_one(adapters, head, example, frozen, step_key):
        batch = jax.tree.map(lambda a: a[None], example)
        keys = dropout_keys(step_key, batch["example_index"]) if dropout else None
        with per_example_adapters():
            outputs = functional.apply({"adapters": adapters, "head": head}, frozen, batch, keys)
        return task_loss(kind, outputs, batch)[0]

    return loss_one


def example_losses(functional: FunctionalModel, kind: str, *, dropout: bool = True) -> Callable:
    """``losses(probes, head, adapters, batch, frozen, step_key) -> (B,)``: each example's task loss, with
    dropout keys folded from the step key and each example's index. With zero per-example ``probes``
    (:func:`jax_adalora.adapters.zero_probes`) the gradient of the losses' weighted sum with respect to the
    probes holds each example's gradient (:func:`jax_adalora.stats.per_example_moments_of_probes`); with
    ``probes=None`` these are the batch step's losses."""

    def losses(probes, head, adapters, batch, frozen, step_key):
        keys = dropout_keys(step_key, batch["example_index"]) if dropout else None
        outputs = functional.apply({"adapters": adapters, "head": head}, frozen, batch, keys, probes=probes)
        return task_loss(kind, outputs, batch)

    return losses


def regulariser_gradient(adalora: AdaLoRAConfig, params: PyTree) -> tuple[jax.Array, PyTree]:
    """``(γ · R(P, Q), its gradient over params)``: AdaLoRA's orthogonal regularisation, zero for the head."""
    gamma = adalora.orth_reg_weight

    def regulariser(params):
        return gamma * orthogonal_regularization(params["adapters"]) if gamma > 0 else jnp.zeros((), jnp.float32)

    return jax.value_and_grad(regulariser)(params)


def task_value_and_grad(
    losses_fn: Callable,
    params: PyTree,
    batch,
    frozen,
    step_key,
    *,
    probes: PyTree | None = None,
    microbatch_size: int | None = None,
) -> tuple[jax.Array, PyTree, PyTree]:
    """``(task loss, its gradient over params, its gradient over probes)``: the mean of ``losses_fn``'s
    per-example losses over real examples (``batch["example_mask"]``), differentiated over the whole batch
    or in microbatches (:func:`jax_adalora.microbatch.value_and_grad_in_microbatches`). With zero
    ``probes`` their gradient holds each example's adapter gradient (row b: ``w_b / count · g_b``) and the
    gradient over params is ``{"head": ...}`` alone (the adapters' own is not formed); without, the probes'
    gradient is ``None``."""
    weights = batch["example_mask"].astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    trained = params if probes is None else {"head": params["head"]}  # probes stand in for the adapters

    def total(trained, probes, chunk):
        adapters = params["adapters"] if probes is not None else trained["adapters"]
        losses = losses_fn(probes, trained["head"], adapters, chunk, frozen, step_key)
        return jnp.sum(losses * chunk["example_mask"].astype(jnp.float32)) / count

    value, (grads, probe_grads) = value_and_grad_in_microbatches(total, trained, probes, batch, microbatch_size)
    return value, grads, probe_grads


def per_example_train_moments(
    losses_fn: Callable,
    adalora: AdaLoRAConfig,
    params: PyTree,
    batch,
    frozen,
    step_key,
    *,
    mask,
    microbatch_size: int | None = None,
) -> tuple[jax.Array, PyTree, Moments]:
    """``(training loss, training gradient, Moments of the task-loss gradient)`` from one backward pass
    (or one per microbatch, ``microbatch_size``).

    ``losses_fn`` is :func:`example_losses`; ``mask`` is ``batch["example_mask"]``.
    The moments hold exact per-example statistics for ``params["adapters"]`` and the batch gradient
    (with placeholder second moments) for ``params["head"]``. The training loss and gradient add
    γ · orthogonal regularisation; the moments do not, because a term with no sampling noise is not a
    gradient statistic: added to every example it would make ``Var[g]`` of a triplet whose λ is 0
    vanish while ``E[g]`` stays at the regulariser's pull, and give that (pruned) triplet the top GSNR.
    """
    probes = zero_probes(params["adapters"], mask.shape[0])
    loss, grads, probe_grads = task_value_and_grad(
        losses_fn, params, {**batch, "example_mask": mask}, frozen, step_key, probes=probes,
        microbatch_size=microbatch_size,
    )  # fmt: skip
    probe_moments = moments_of_probe_gradients(probe_grads, mask.astype(jnp.float32))
    adapter_moments = probe_moments._replace(
        **{f: probes_to_triplet_layout(getattr(probe_moments, f)) for f in ("mean", "sq_mean", "var")}
    )
    head_moments = batch_gradient_moments(grads["head"], adapter_moments.count)
    moments = Moments(
        *({"adapters": a, "head": h} for a, h in zip(adapter_moments[:3], head_moments[:3], strict=True)),
        count=adapter_moments.count,
    )
    reg, reg_grad = regulariser_gradient(adalora, params)
    return loss + reg, jax.tree.map(jnp.add, moments.mean, reg_grad), moments


def make_train_step(
    functional: FunctionalModel,
    tx,
    adalora: AdaLoRAConfig,
    kind: str,
    *,
    dropout: bool = True,
    compiler_options: dict[str, str] | None = None,
    microbatch_size: int | None = None,
) -> Callable:
    """``train_step(state, frozen, batch, step_key) -> (state, metrics)``, jitted.

    ``batch`` holds the model inputs, the labels, ``example_mask`` (B,) and ``example_index`` (B,).
    ``compiler_options`` go to ``jax.jit``; ``None`` means :func:`jax_adalora.runtime.step_compiler_options`
    and ``{}`` XLA's defaults. ``microbatch_size`` (a divisor of the batch size) differentiates the loss in
    microbatches of that many examples inside the step (:func:`task_value_and_grad`): the same update and
    statistics, a smaller working set; ``None`` differentiates the whole batch at once.

    Sensitivity and movement read the training gradient (task loss + regulariser), as AdaLoRA and PEFT
    do; Fisher and GSNR read statistics of the task-loss gradient only (see
    :func:`per_example_train_moments`), in both statistics modes.
    """
    mode = "batch"
    if adalora.needs_variance:
        mode = adalora.statistics

    losses_fn = example_losses(functional, kind, dropout=dropout)

    def train_step(state: TrainState, frozen, batch, step_key):
        mask = batch["example_mask"]
        running = state.running
        update_scores = True
        if mode == "per_example":
            loss, grads, moments = per_example_train_moments(
                losses_fn, adalora, state.params, batch, frozen, step_key, mask=mask, microbatch_size=microbatch_size
            )
        else:
            task_value, task_grads, _ = task_value_and_grad(
                losses_fn, state.params, batch, frozen, step_key, microbatch_size=microbatch_size
            )
            reg, reg_grads = regulariser_gradient(adalora, state.params)
            loss, grads = task_value + reg, jax.tree.map(jnp.add, task_grads, reg_grads)
            count = jnp.sum(mask.astype(jnp.float32))
            if mode == "running":
                moments, running = running_moments(running, task_grads, batch_size=count, decay=adalora.running_decay)
                update_scores = running.count >= RUNNING_WARMUP_STEPS  # one step has no spread to measure
            else:
                moments = batch_gradient_moments(grads, count)
        updates, opt_state = tx.update(
            grads, state.opt_state, state.params, moments=moments, update_scores=update_scores
        )
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        return TrainState(params, opt_state, running, state.step + 1), metrics

    if compiler_options is None:
        compiler_options = step_compiler_options()
    return jax.jit(train_step, donate_argnums=(0,), compiler_options=compiler_options)


def make_eval_step(functional: FunctionalModel) -> Callable:
    """``eval_step(params, frozen, batch) -> outputs`` (logits, or (start, end) for QA), jitted."""

    def eval_step(params, frozen, batch):
        return functional.apply(params, frozen, batch, None)

    return jax.jit(eval_step)

"""The one training step: a model split into trainable and frozen parts, ``value_grad_and_moments``, and the
optax chain that ends in the rank allocator, as a pure function to ``jax.jit``.

The step is what a loop with ``nnx.Optimizer`` does (see ``examples/mlp_classifier.py``), in functional form, so
that a caller can jit it with its own shardings, donation and compiler options, checkpoint its state as plain
arrays, and run it on several devices. The training command (``python -m jax_adalora.train``) trains with it.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> import jax_adalora as jal
  >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
  >>> config = jal.AdaLoRAConfig(r_init=4, r_target=2, t_init=1, t_final=1)
  >>> _ = jal.inject(model, config, targets=r"layers\\.0", rngs=nnx.Rngs(2))
  >>> functional = jal.FunctionalModel(model, jal.AdaLoRAParam)
  >>> tx = jal.adalora_optimizer(jal.OptimConfig(), config, total_steps=4)
  >>> losses = lambda key: lambda m, b: optax.softmax_cross_entropy_with_integer_labels(m(b["x"]), b["y"])
  >>> step = jax.jit(jal.train_step_fn(functional, tx, config, losses))
  >>> state = jal.init_train_state(functional, tx, config)
  >>> batch = {"x": jnp.ones((5, 4)), "y": jnp.arange(5) % 3}
  >>> state, metrics = step(state, functional.frozen, batch, jax.random.key(0))
  >>> int(state.step)
  1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_adalora.allocator import rank_allocator
from jax_adalora.config import AdaLoRAConfig, OptimConfig
from jax_adalora.moments import RunningMoments, value_grad_and_moments
from jax_adalora.regularization import orthogonal_regularization_of_model
from jax_adalora.scores import statistics_for

PyTree = Any
# losses_fn_for(key) -> losses_fn(model, batch) -> (B,) per-example losses; the key drives the step's randomness.
LossesFnFor = Callable[[jax.Array], Callable[[nnx.Module, PyTree], jax.Array]]


class TrainState(NamedTuple):
    """What :func:`train_step_fn`'s step carries from one step to the next, as plain arrays."""

    params: PyTree  # the trainable variables as a pure nested dict (nnx.to_pure_dict layout)
    opt_state: PyTree
    running: PyTree | None  # RunningMoments' state, only with statistics="running" and a score that reads it
    step: jax.Array  # shape=(), int32


class FunctionalModel:
    """An adapted model as ``(graphdef, params, frozen)``, so that a jitted step is a pure function.

    Args:
      model: an NNX model with adapters.
      wrt: the filter of what trains (e.g. :data:`jax_adalora.AdaLoRAParam`, or
        :func:`jax_adalora.adapters.trainable_filter` for the adapters and a head).

    ``params`` (pure nested dict of the ``wrt`` variables) and ``frozen`` (the rest, an ``nnx.State``) are what
    the step takes; :meth:`model` rebuilds the NNX model from them.
    """

    def __init__(self, model: nnx.Module, wrt: Any):
        self.trainable = wrt
        self.graphdef, params, self.frozen = nnx.split(model, wrt, ...)
        self.params = nnx.to_pure_dict(params)

    def model(self, params: PyTree, frozen: PyTree | None = None) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.frozen if frozen is None else frozen)


def adalora_optimizer(
    optim: OptimConfig, adalora: AdaLoRAConfig, total_steps: int
) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(clip, adamw with linear warm-up and decay, rank_allocator)``; the allocator is last."""
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


def orthogonal_penalty(adalora: AdaLoRAConfig) -> Callable | None:
    """``γ · R(P, Q)`` of a model as ``value_grad_and_moments``'s ``penalty_fn``; ``None`` when γ is 0."""
    gamma = adalora.orth_reg_weight
    if gamma <= 0:
        return None
    return lambda model: gamma * orthogonal_regularization_of_model(model)


def statistics_mode(adalora: AdaLoRAConfig) -> str:
    """What the score reads: ``adalora.statistics`` for a score of second moments (Fisher, GSNR, saliency), else
    the batch gradient alone (sensitivity, movement, magnitude): :func:`jax_adalora.scores.statistics_for`."""
    return statistics_for(adalora.score, adalora.statistics)


def _running_moments(functional: FunctionalModel, adalora: AdaLoRAConfig) -> RunningMoments:
    model = functional.model(functional.params)
    return RunningMoments(model, wrt=functional.trainable, decay=adalora.running_decay)


def init_train_state(functional: FunctionalModel, tx, adalora: AdaLoRAConfig) -> TrainState:
    """The state before the first step: the trainable parameters, ``tx``'s state, the running moments' state
    (with ``statistics="running"`` and a score that reads it) and the step counter 0."""
    running = None
    if statistics_mode(adalora) == "running":
        running = nnx.to_pure_dict(nnx.state(_running_moments(functional, adalora)))
    return TrainState(
        params=functional.params,
        opt_state=tx.init(functional.params),
        running=running,
        step=jnp.zeros((), jnp.int32),
    )


def train_step_fn(
    functional: FunctionalModel,
    tx,
    adalora: AdaLoRAConfig,
    losses_fn_for: LossesFnFor,
    *,
    microbatch_size: int | None = None,
) -> Callable:
    """``train_step(state, frozen, batch, key) -> (state, metrics)``, pure, for ``jax.jit``.

    One step: the mean per-example loss (``losses_fn_for(key)(model, batch)``, weighted by
    ``batch["example_mask"]`` where the batch has one) plus γ · the orthogonal regulariser, its gradient and the
    statistics the score reads (:func:`statistics_mode`) from :func:`jax_adalora.moments.value_grad_and_moments`,
    then ``tx`` (e.g. :func:`adalora_optimizer`) with the moments as its extra argument. ``metrics`` holds the
    loss and the gradient's global norm. ``microbatch_size`` differentiates in microbatches of that many
    examples (a divisor of the batch size): the same update and statistics, a smaller working set.
    """
    mode = statistics_mode(adalora)
    penalty_fn = orthogonal_penalty(adalora)
    running_graphdef = nnx.graphdef(_running_moments(functional, adalora)) if mode == "running" else None

    def train_step(state: TrainState, frozen, batch, key):
        model = functional.model(state.params, frozen)
        running = None if running_graphdef is None else nnx.merge(running_graphdef, state.running)
        loss, grads, moments = value_grad_and_moments(
            losses_fn_for(key),
            model,
            batch,
            statistics=mode,
            wrt=functional.trainable,
            mask=batch.get("example_mask"),
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

    return train_step

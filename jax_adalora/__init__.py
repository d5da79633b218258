"""jax_adalora: AdaLoRA with pluggable importance scores for any Flax NNX model.

The public API, in the order a training loop uses it::

    import jax_adalora as jal

    jal.inject(model, config, targets=..., rngs=...)        # SVD-form adapters on chosen linear layers
    loss, grads, moments = jal.value_grad_and_moments(...)  # loss, gradient and gradient statistics
    tx = optax.chain(..., jal.rank_allocator(config, total_steps))
    optimizer = nnx.Optimizer(model, tx, wrt=jal.AdaLoRAParam)
    optimizer.update(model, grads, moments=moments)         # AdamW step, then pruning to the budget
    jal.allocation_status(optimizer, config, total_steps)  # done: the pattern holds the target budget
    jal.rank_pattern(optimizer); jal.save_adapters(path, model, rank_pattern=optimizer); jal.merge(model)

The same step in functional form, to jit with your own shardings (what the training command runs):
``jal.FunctionalModel``, ``jal.adalora_optimizer``, ``jal.init_train_state``, ``jal.train_step_fn``.
"""

from jax_adalora import scores
from jax_adalora.adapter_files import load_adapters, save_adapters
from jax_adalora.adapters import AdaLoRALinear, AdaLoRAParam, rank_spec
from jax_adalora.adapters import inject_adapters as inject
from jax_adalora.adapters import merge_adapters as merge
from jax_adalora.allocator import AllocationStatus, allocation_status, rank_allocator, rank_pattern
from jax_adalora.config import AdaLoRAConfig, OptimConfig
from jax_adalora.moments import RunningMoments, value_grad_and_moments
from jax_adalora.regularization import orthogonal_regularization_of_model as orthogonal_regularization
from jax_adalora.stats import Moments
from jax_adalora.training import FunctionalModel, TrainState, adalora_optimizer, init_train_state, train_step_fn

__version__ = "0.1.0"

__all__ = [
    "AdaLoRAConfig",
    "AllocationStatus",
    "AdaLoRALinear",
    "AdaLoRAParam",
    "FunctionalModel",
    "Moments",
    "OptimConfig",
    "RunningMoments",
    "TrainState",
    "adalora_optimizer",
    "allocation_status",
    "init_train_state",
    "inject",
    "load_adapters",
    "merge",
    "orthogonal_regularization",
    "rank_allocator",
    "rank_pattern",
    "rank_spec",
    "save_adapters",
    "scores",
    "train_step_fn",
    "value_grad_and_moments",
]

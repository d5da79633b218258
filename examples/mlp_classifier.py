"""AdaLoRA with the GSNR score on a small Flax NNX classifier, trained with nnx.Optimizer.

python examples/mlp_classifier.py [--statistics per_example|running] [--steps 60]
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jax_adalora as jal


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(16, 64, rngs=rngs)
        self.middle = nnx.Linear(64, 64, rngs=rngs)
        self.head = nnx.Linear(64, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.middle(nnx.relu(self.hidden(x)))))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--statistics", default="per_example", choices=["per_example", "running"])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)

    model = MLP(nnx.Rngs(0))
    config = jal.AdaLoRAConfig(r_init=8, r_target=4, score="gsnr", t_init=10, t_final=20, delta_t=2)
    jal.inject(model, config, targets="hidden|middle", rngs=nnx.Rngs(1))
    tx = optax.chain(optax.adamw(1e-2), jal.rank_allocator(config, total_steps=args.steps))
    optimizer = nnx.Optimizer(model, tx, wrt=jal.AdaLoRAParam)
    running = jal.RunningMoments(model) if args.statistics == "running" else None

    def losses(model, batch):  # one loss per example: (B,)
        return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])

    @nnx.jit
    def train_step(model, optimizer, running, batch):
        loss, grads, moments = jal.value_grad_and_moments(
            losses, model, batch, statistics=args.statistics, running=running
        )
        optimizer.update(model, grads, moments=moments)
        return loss

    teacher = jax.random.normal(jax.random.key(2), (16, 4))
    for step in range(args.steps):
        x = jax.random.normal(jax.random.key(100 + step), (32, 16))
        loss = train_step(model, optimizer, running, {"x": x, "y": jnp.argmax(x @ teacher, axis=-1)})
    ranks = {path: sum(kept) for path, kept in jal.rank_pattern(optimizer).items()}
    print(f"final loss {float(loss):.4f}, ranks {ranks}")
    return model, optimizer


if __name__ == "__main__":
    main()

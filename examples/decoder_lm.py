"""AdaLoRA with the GSNR score on a small decoder-only transformer LM (causal-LM loss), with nnx.Optimizer.

Attention projections are nnx.LinearGeneral layers; the adapters flatten their head axes.
python examples/decoder_lm.py [--statistics per_example|running] [--steps 60]
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jax_adalora as jal

VOCAB, WIDTH, LENGTH = 32, 32, 16


class DecoderLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(4, WIDTH, decode=False, rngs=rngs)
        self.mlp_in, self.mlp_out = nnx.Linear(WIDTH, 64, rngs=rngs), nnx.Linear(64, WIDTH, rngs=rngs)
        self.norm1, self.norm2 = nnx.LayerNorm(WIDTH, rngs=rngs), nnx.LayerNorm(WIDTH, rngs=rngs)

    def __call__(self, tokens):  # (B, L) -> logits (B, L, VOCAB)
        x = self.embed(tokens)
        x = x + self.attention(self.norm1(x), mask=nnx.make_causal_mask(tokens), deterministic=True)
        x = x + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x))))
        return self.embed.attend(x)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--statistics", default="per_example", choices=["per_example", "running"])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)

    model = DecoderLM(nnx.Rngs(0))
    config = jal.AdaLoRAConfig(r_init=8, r_target=4, score="gsnr", t_init=10, t_final=20, delta_t=2)
    jal.inject(model, config, targets=r"attention\.(query|value|out)|mlp_in|mlp_out", rngs=nnx.Rngs(1))
    tx = optax.chain(optax.adamw(3e-3), jal.rank_allocator(config, total_steps=args.steps))
    optimizer = nnx.Optimizer(model, tx, wrt=jal.AdaLoRAParam)
    running = jal.RunningMoments(model) if args.statistics == "running" else None

    def losses(model, batch):  # mean next-token cross-entropy of each sequence: (B,)
        logits = model(batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean(axis=-1)

    @nnx.jit
    def train_step(model, optimizer, running, batch):
        loss, grads, moments = jal.value_grad_and_moments(
            losses, model, batch, statistics=args.statistics, running=running
        )
        optimizer.update(model, grads, moments=moments)
        return loss

    for step in range(args.steps):  # sequences that count up from a random start: learnable
        starts = jax.random.randint(jax.random.key(step), (16, 1), 0, VOCAB)
        loss = train_step(model, optimizer, running, (starts + jnp.arange(LENGTH + 1)) % VOCAB)
    ranks = {path: sum(kept) for path, kept in jal.rank_pattern(optimizer).items()}
    print(f"final loss {float(loss):.4f}, ranks {ranks}")
    return model, optimizer


if __name__ == "__main__":
    main()

"""AdaLoRA's orthogonal regularisation of the singular vectors P and Q.

``R = (Σ_k ‖Q_k Q_kᵀ - I‖_F + ‖P_kᵀ P_k - I‖_F) / (number of P and Q matrices)``: the mean of the
non-squared Frobenius norms over all Q (PEFT's ``lora_A``) and P (``lora_B``) matrices, as PEFT and
the official code compute it (the AdaLoRA paper writes squared norms). The loss adds ``γ · R``.

The Gram matrices sit near the identity, so their difference from it is small against their entries: the
factors are cast to float32 and multiplied at ``Precision.HIGHEST``, since JAX's default matmul precision is
one bfloat16 pass on TPU and TF32 on recent GPUs: factors rounded to 8 or 11 significant bits, an error of
up to about 1e-3 (bf16) of each Gram entry, as large as the deviations being penalised. CPU computes float32
matmuls in float32 whatever the precision, so its values are unchanged (bitwise, checked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_adalora.adapters import get_triplets


def _gram(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def orthogonal_regularization(triplets: dict[str, dict[str, jax.Array]]) -> jax.Array:
    """Mean over all P and Q matrices of ``‖QQᵀ - I‖_F`` and ``‖PᵀP - I‖_F``; 0 with no adapters.

    A stacked adapter (leading layer axes: ``P`` (L, d_out, r)) is L matrices of each, every layer its own term.
    """
    norms = []
    for t in triplets.values():
        q, p = t["Q"].astype(jnp.float32), t["P"].astype(jnp.float32)
        r = q.shape[-2]
        if r == 0:
            continue
        eye = jnp.eye(r, dtype=jnp.float32)
        norms.append(jnp.linalg.norm(_gram(q, jnp.swapaxes(q, -1, -2)) - eye, axis=(-2, -1)).ravel())
        norms.append(jnp.linalg.norm(_gram(jnp.swapaxes(p, -1, -2), p) - eye, axis=(-2, -1)).ravel())
    if not norms:
        return jnp.zeros((), jnp.float32)
    return jnp.mean(jnp.concatenate(norms))


def orthogonal_regularization_of_model(model) -> jax.Array:
    """:func:`orthogonal_regularization` of every adapter of an NNX ``model`` (differentiable with ``nnx.grad``;
    the public ``jax_adalora.orthogonal_regularization``). The loss adds ``γ ·`` this."""
    return orthogonal_regularization(get_triplets(model))

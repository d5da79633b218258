"""What every adapter shares: the factors P, λ, Q and the mask beside a wrapped layer, and their product.

A layer kind (:mod:`jax_adalora.adapters.linear`, :mod:`jax_adalora.adapters.einsum`) says how its input maps to
``(..., d_in)``, how ``(..., d_out)`` maps back to its output, and how the dense update folds into its kernel.

A layer created under ``nnx.vmap`` (a stack of layers: its kernel has leading layer axes, e.g. ``(L, d_in,
d_out)``) gets factors with the same leading axes, ``P`` (L, d_out, r), ``λ`` (L, r), ``Q`` (L, r, d_in), and a
mask (L, r): ``nnx.scan`` or ``nnx.vmap`` over the layer slices them with its kernel, so the adapter's forward
always sees one layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_adalora.adapters.factored import factored_adapter, probed_adapter
from jax_adalora.adapters.variables import AdaLoRAMask, AdaLoRAParam, AdaLoRAProbe, ProbeBatchAxisError


class SVDAdapter(nnx.Module):
    """The SVD-form adapter ``((x Qᵀ) ⊙ λ ⊙ mask) Pᵀ · alpha / r`` beside a wrapped layer ``base``.

    The factors take the wrapped layer's ``param_dtype``: ``P`` (*stack, d_out, r), ``λ`` (*stack, r),
    ``Q`` (*stack, r, d_in), where ``stack`` is the layer axes of a layer created under ``nnx.vmap`` (empty
    otherwise). Subclasses are the adapters of each layer kind.

    Args:
      base: the wrapped layer.
      d_in: its input size (the contracted axes' sizes multiplied).
      d_out: its output size (the kernel's output axes' sizes multiplied).
      stack_shape: the kernel's leading layer axes (``()`` for a layer that is not stacked).
      rank: r, the initial rank.
      alpha: scale numerator: the adapter's output is multiplied by ``alpha / rank``.
      init_std: standard deviation of the normal init of P and Q (λ starts at 0: the adapted model starts
        equal to the base model).
      rngs: randomness for P and Q.
    """

    def __init__(
        self,
        base: nnx.Module,
        *,
        d_in: int,
        d_out: int,
        stack_shape: tuple[int, ...],
        rank: int,
        alpha: float,
        init_std: float,
        rngs: nnx.Rngs,
    ):
        stack = tuple(stack_shape)
        dtype = base.param_dtype
        key_p, key_q = jax.random.split(rngs.params())
        self.base = base
        self.stack_shape = stack
        self.P = AdaLoRAParam((init_std * jax.random.normal(key_p, stack + (d_out, rank))).astype(dtype))
        self.lam = AdaLoRAParam(jnp.zeros(stack + (rank,), dtype))
        self.Q = AdaLoRAParam((init_std * jax.random.normal(key_q, stack + (rank, d_in))).astype(dtype))
        self.mask = AdaLoRAMask(jnp.ones(stack + (rank,), dtype))
        # ranknum stays r_init even as ranks shrink: changing it hurt results in the reference.
        self.scaling = alpha / rank
        self.probe = nnx.data(None)  # an AdaLoRAProbe while per-example gradients are taken (set_probes)

    @property
    def rank(self) -> int:
        return self.lam.shape[-1]

    def has_probes(self) -> bool:
        """Whether :func:`jax_adalora.adapters.set_probes` gave this adapter per-example probes: an input the
        batch shares (no batch axis) must then go through ``low_rank_parts``, not ``__call__``. Models that apply
        an adapted projection to such an input (DeBERTa's relative-position table) ask this."""
        return self._probe() is not None

    def _probe(self) -> dict[str, jax.Array] | None:
        """The per-example probes set by ``set_probes``, if any (see :func:`probed_adapter`)."""
        return self.probe.get_value() if isinstance(self.probe, AdaLoRAProbe) else None

    def _gate(self, dtype) -> jax.Array:
        return (self.lam[...] * self.mask[...] * self.scaling).astype(dtype)

    def _probe_gate(self, probe: dict[str, jax.Array], dtype) -> jax.Array:
        return (probe["lam"] * self.mask[...] * self.scaling).astype(dtype)  # (B, r)

    def _check_one_layer(self, input_shape: tuple[int, ...]) -> None:
        """A stacked adapter's factors are sliced to one layer by ``nnx.scan`` / ``nnx.vmap``; called on the whole
        stack it would mix layers: say so before the base layer fails on its kernel's shape."""
        if self.P.ndim != 2:
            raise ValueError(
                f"{type(self).__name__} of a stacked layer (layer axes {self.stack_shape}) runs one layer at a "
                f"time: call it under nnx.scan or nnx.vmap over the layer axis, as its base layer (its input has "
                f"shape {input_shape})"
            )

    def _adapter_output(self, x_flat: jax.Array, dtype, input_shape: tuple[int, ...]) -> jax.Array:
        """``((x Qᵀ) ⊙ gate) Pᵀ`` of ``x_flat`` (..., d_in) -> (..., d_out), per-example through the probes if set.

        Args:
          x_flat: the layer's input with its contracted axes flattened last and its example axis first.
          dtype: the dtype of the wrapped layer's output.
          input_shape: the input's shape as the layer got it, for error messages.
        """
        parts = (x_flat.astype(dtype), self.P[...].astype(dtype), self._gate(dtype), self.Q[...].astype(dtype))
        probe = self._probe()
        if probe is None:
            return factored_adapter(*parts)
        if x_flat.ndim < 2 or x_flat.shape[0] != probe["P"].shape[0]:
            raise ProbeBatchAxisError(
                f"{type(self).__name__} with probes for {probe['P'].shape[0]} examples got an input of shape "
                f"{input_shape}: expected a leading batch axis of that size (an input the batch shares goes through "
                "low_rank_parts)"
            )
        return probed_adapter(*parts, probe["P"], self._probe_gate(probe, dtype), probe["Q"])

    def delta_matrix(self) -> jax.Array:
        """The dense update ``(P diag(λ·mask·scale) Q)ᵀ`` as (*stack, d_in, d_out), computed at full float32
        precision whatever the backend's default matmul precision."""
        gate = self.lam[...] * self.mask[...] * self.scaling
        q_gated = jnp.swapaxes(self.Q[...], -1, -2) * gate[..., None, :]  # (*stack, d_in, r)
        return jnp.matmul(q_gated, jnp.swapaxes(self.P[...], -1, -2), precision=jax.lax.Precision.HIGHEST)

    def delta_kernel(self) -> jax.Array:
        """The dense update in the wrapped layer's kernel layout (what merging adds to the kernel)."""
        raise NotImplementedError

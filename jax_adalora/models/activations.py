"""Activation functions by their Hugging Face config names (``hidden_act``, ``pooler_hidden_act``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_python": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


def activation(name: str, field: str = "hidden_act") -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name``; an unknown name is an error naming the config ``field``."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"{field}={name!r} is not supported; expected one of {sorted(ACTIVATIONS)}") from None

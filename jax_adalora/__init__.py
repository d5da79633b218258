"""jax_adalora: AdaLoRA with pluggable importance scores in JAX / Flax NNX."""

__version__ = "0.1.0"

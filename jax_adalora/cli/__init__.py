"""The training command and its parts, built on the library (:mod:`jax_adalora`), the model zoo and the tasks.

``python -m jax_adalora.train`` and ``python -m jax_adalora.predict`` run :mod:`jax_adalora.cli.train` and
:mod:`jax_adalora.cli.predict`. Nothing in the library imports this package.
"""

"""Programs beside the library: maintained benchmarks (``scripts.benchmarks``) and studies (``scripts.studies``).

Run them from the repository root as modules, e.g. ``python -m scripts.benchmarks.bench --help``.
"""

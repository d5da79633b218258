"""Maintained benchmarks: each one's docstring gives its purpose and the command that regenerates its figures."""

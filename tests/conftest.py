"""Test session setup: CPU only, 8 virtual CPU devices so that sharding tests can run, XLA's optimisations mostly
off, and one compilation cache.

The flags must be set before JAX initialises its backends, hence here, at import time. The end-to-end tests train
the same tiny model many times, in this process and in ``python -m jax_adalora.train`` subprocesses, and most of
each run is XLA compiling the same programs: JAX's persistent compilation cache, in a temporary directory shared
through the environment by the session and its subprocesses, compiles each program once. Cached programs are
XLA's own output for the same program and options, so results do not change. ``datasets``' cache lives in the
same temporary directory.
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Most XLA optimisation passes off, here and in the training subprocesses: the tests compile thousands of small
# programs, each run a few times, where those passes cost more compile time than they save (about a quarter of
# the suite's CPU time). Every numeric check is against an independent reference with a float tolerance, which
# holds either way. JAX_DISABLE_MOST_OPTIMIZATIONS=0 tests the fully optimised programs (the GPU check does).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SESSION_COMPILATION_CACHE = None  # set where this process made the cache (pytest itself, not an xdist worker)
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    SESSION_COMPILATION_CACHE = tempfile.mkdtemp(prefix="jax_adalora_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = SESSION_COMPILATION_CACHE
    os.environ["JAX_ADALORA_TESTS_CACHE"] = SESSION_COMPILATION_CACHE  # xdist workers share it
    # Subprocesses cache every program, not only those over JAX's 1 s default: loading the model compiles hundreds
    # of small ones, the same in every subprocess.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # The data layer's Arrow files and tokenised features (datasets' cache) stay in the session's folder too, so that
    # tests that read files without --datasets-cache-dir leave nothing in the user's ~/.cache/huggingface.
    os.environ["HF_DATASETS_CACHE"] = os.path.join(SESSION_COMPILATION_CACHE, "datasets")


def pytest_configure(config):
    """Test processes (pytest, its xdist workers) keep their small programs in memory only: writing each of the
    thousands that op-by-op tests compile once would cost more than it saves."""
    if os.environ.get("JAX_ADALORA_TESTS_CACHE") == os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        import jax

        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def pytest_unconfigure(config):
    if SESSION_COMPILATION_CACHE is not None:
        shutil.rmtree(SESSION_COMPILATION_CACHE, ignore_errors=True)

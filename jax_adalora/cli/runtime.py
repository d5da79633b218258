"""Settings for the CPU backend: keep XLA's large per-step buffers in the process, and compile reductions
with XLA's own loops.

XLA's CPU runtime allocates each execution's temporary buffer (about 730 MB for the default run's GSNR step)
with ``malloc`` from a worker thread and frees it at the end of the step. glibc serves such a request from a
thread arena with a fresh ``mmap`` and returns it with ``munmap``, so every step page-faults the whole buffer
in again: about 178,000 minor faults and a fifth of the run's CPU time spent in the kernel. With one arena,
``mmap`` disabled and trimming off, the freed buffer stays in the heap and the next step reuses it. Trimming
is switched off (a threshold of -1) rather than set to the largest threshold ``mallopt`` takes (``INT_MAX``):
with that, a freed buffer over 2 GiB, such as the 4.7 GB of DeBERTa-v3-base's step at 32 × 128, was still
returned to the kernel and faulted in again every step (1.2 million minor faults, 7 s of a 25 s step).

Call :func:`keep_freed_memory` before JAX starts its backend (before the first array is made). It changes
nothing off glibc, or when ``JAX_ADALORA_MALLOC_TUNING=0``; it applies only where JAX will run on CPU
(:func:`runs_on_cpu`), since on GPU/TPU hosts the large buffers live in device memory and the tuning was never
measured there. ``JAX_ADALORA_MALLOC_TUNING=1`` applies it whatever the backend.

:func:`step_compiler_options` are the XLA options the training step is compiled with. On CPU, XLA hands
both dots and reductions to the YNNPACK library by default. Its reduction over the leading (example) axis
of a per-example gradient such as (32, 1536, 16) took about 11 ms on our 2-core machine against 0.6 ms for
XLA's own loop: about 0.13 s of a 2-3 s MiniLM step at 32 × 128 with exact per-example statistics
(E[g], E[g²] and Var[g] of one such gradient: 10.8 -> 0.57 ms; docs/performance.md). The options keep YNNPACK
for dots only. They are empty off CPU, when ``JAX_ADALORA_XLA_CPU_TUNING=0``, or when the installed jaxlib does
not know the option.

:func:`enable_compilation_cache` keeps compiled programs on disk (JAX's persistent compilation cache), so a
second run of the same shapes skips XLA's compile: worth most on GPU/TPU, where a DeBERTa step compiles for
minutes across buckets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # mallopt(3): a trim threshold of -1 switches trimming off
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))

ENV_SWITCH = "JAX_ADALORA_MALLOC_TUNING"
XLA_CPU_ENV_SWITCH = "JAX_ADALORA_XLA_CPU_TUNING"
# YNNPACK library fusions for single dots only: XLA's default list also holds reductions.
CPU_STEP_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def runs_on_cpu() -> bool:
    """Whether JAX will run this process on CPU, decided without starting a backend.

    The first platform of ``JAX_PLATFORMS`` (``jax.config.jax_platforms``) when it is set; otherwise CPU
    unless an accelerator plugin is installed (a ``jax_plugins`` module or entry point, libtpu, or
    ``PJRT_NAMES_AND_LIBRARY_PATHS``), in which case JAX would try that accelerator first. A host with an
    accelerator plugin but no device falls back to CPU in JAX and reads as not CPU here: set
    ``JAX_PLATFORMS=cpu`` there.
    """
    platforms = jax.config.jax_platforms
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not _accelerator_plugin_installed()


def _accelerator_plugin_installed() -> bool:
    if os.environ.get("PJRT_NAMES_AND_LIBRARY_PATHS") or os.environ.get("TPU_LIBRARY_PATH"):
        return True
    if importlib.util.find_spec("jax_plugins") is not None or importlib.util.find_spec("libtpu") is not None:
        return True
    return bool(importlib.metadata.entry_points(group="jax_plugins"))


def keep_freed_memory() -> bool:
    """Tunes glibc's allocator as the module docstring says, on the CPU backend only (``JAX_ADALORA_MALLOC_TUNING``
    ``=1``: on any backend, ``=0``: never); returns whether it did."""
    switch = os.environ.get(ENV_SWITCH)
    if switch == "0" or not sys.platform.startswith("linux"):
        return False
    if switch != "1" and not runs_on_cpu():
        log.debug("JAX will not run on CPU: glibc's allocator left as it is (%s=1 tunes it anyway)", ENV_SWITCH)
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    accepted = [mallopt(param, value) == 1 for param, value in _SETTINGS]  # every setting tried
    done = all(accepted)
    if not done:
        log.debug("mallopt refused a setting; allocator left partly tuned")
    return done


@functools.cache
def step_compiler_options() -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` of a training step, as the module docstring says."""
    if os.environ.get(XLA_CPU_ENV_SWITCH, "1") == "0" or jax.default_backend() != "cpu":
        return {}
    try:  # the option's name and values are XLA's, and may change between jaxlib versions
        jax.jit(lambda x: jnp.sum(x, axis=0), compiler_options=CPU_STEP_OPTIONS).lower(jnp.zeros((2, 2))).compile()
    except (jax.errors.JaxRuntimeError, ValueError) as error:
        log.debug("XLA rejected %s (%s); compiling the step with XLA's defaults", CPU_STEP_OPTIONS, error)
        return {}
    return dict(CPU_STEP_OPTIONS)


def enable_compilation_cache(directory: str | os.PathLike, *, min_compile_time_s: float = 1.0) -> Path:
    """Keeps compiled XLA programs under ``directory`` and reuses them in later processes.

    Call it once, before the first compile (a program compiled earlier is not written). JAX keys entries by the
    program, the compile options, the backend and the jax/jaxlib versions, so a changed model, flag or install
    compiles afresh. The cache is trusted code: keep it in a directory only you can write.

    Args:
      directory: where the cache lives; created if missing.
      min_compile_time_s: programs that compiled faster than this are not stored (JAX's default, 1 s).

    Returns:
      The directory, resolved.

    Raises:
      ValueError: ``directory`` exists and is not a directory, or another cache directory is already set.
    """
    path = Path(directory).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"compilation cache {path}: exists and is not a directory")
    current = jax.config.jax_compilation_cache_dir
    if current is not None and Path(current).expanduser().resolve() != path:
        raise ValueError(f"compilation cache {path}: this process already caches in {current}")
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return path


JOIN_TIMEOUT_VARIABLE = "JAX_ADALORA_JOIN_TIMEOUT"
DEFAULT_JOIN_TIMEOUT_S = 300  # jax.distributed.initialize's own default
JOIN_TIMEOUT_MARGIN_S = 30  # JAX's deadline comes this long after ours


def start_distributed() -> None:
    """Joins this process to a run over several processes (hosts) with ``jax.distributed.initialize``.

    The coordinator, the process count and this process's index come from the cluster where JAX detects one
    (SLURM, a Cloud TPU pod, Open MPI, ...), else from the environment: ``JAX_COORDINATOR_ADDRESS``
    (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. On CPU the processes
    exchange data through gloo collectives. Call it before anything touches a JAX device. The processes wait
    for each other up to ``JAX_ADALORA_JOIN_TIMEOUT`` seconds (default 300), then stop in one line; nothing to
    join (no cluster, no coordinator) is one line naming the variables.
    """
    kwargs = {}
    for argument, variable in (
        ("num_processes", "JAX_NUM_PROCESSES"),
        ("process_id", "JAX_PROCESS_ID"),
        ("initialization_timeout", JOIN_TIMEOUT_VARIABLE),
    ):
        value = os.environ.get(variable, "")
        if value:
            if not value.isdigit():
                raise ValueError(f"{variable}={value!r}: expected a whole number")
            kwargs[argument] = int(value)
    timeout = kwargs.setdefault("initialization_timeout", DEFAULT_JOIN_TIMEOUT_S)
    if runs_on_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address = os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if address:
        print(
            f"jax_adalora: joining {kwargs.get('num_processes', '?')} processes at {address} as process "
            f"{kwargs.get('process_id', '?')}; waiting up to {timeout} s for the others ({JOIN_TIMEOUT_VARIABLE})",
            file=sys.stderr,
            flush=True,
        )
    # Past JAX's own deadline its coordination client aborts the process from C++ (a stack trace, no Python
    # exception); a watchdog says what happened first, in one line, and exits.
    joined = threading.Event()

    def watchdog() -> None:
        if not joined.wait(timeout):
            print(
                f"error: --distributed: not every process joined {address or 'the coordinator'} within {timeout} s; "
                f"start all {kwargs.get('num_processes', 'of the')} processes with the same JAX_COORDINATOR_ADDRESS "
                f"and JAX_NUM_PROCESSES, or wait longer with {JOIN_TIMEOUT_VARIABLE}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)  # nothing is written before the processes have joined

    threading.Thread(target=watchdog, name="jax_adalora join watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(**{**kwargs, "initialization_timeout": timeout + JOIN_TIMEOUT_MARGIN_S})
    except ValueError as err:  # nothing to join: no cluster detected and no coordinator given
        raise ValueError(
            f"--distributed: {' '.join(str(err).split())} No cluster (SLURM, Cloud TPU, Open MPI, ...) was detected: "
            "set JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID in every "
            "process's environment"
        ) from None
    finally:
        joined.set()

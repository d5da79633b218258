"""Process settings for the CPU backend: keep XLA's large per-step buffers in the process.

XLA's CPU runtime allocates each execution's temporary buffer (about 730 MB for the default run's GSNR step)
with ``malloc`` from a worker thread and frees it at the end of the step. glibc serves such a request from a
thread arena with a fresh ``mmap`` and returns it with ``munmap``, so every step page-faults the whole buffer
in again: about 178,000 minor faults and a fifth of the run's CPU time spent in the kernel. With one arena,
``mmap`` disabled and a high trim threshold, the freed buffer stays in the heap and the next step reuses it.

Call :func:`keep_freed_memory` before JAX starts its backend (before the first array is made). It changes
nothing off glibc, or when ``JAX_ADALORA_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))

ENV_SWITCH = "JAX_ADALORA_MALLOC_TUNING"


def keep_freed_memory() -> bool:
    """Tunes glibc's allocator as the module docstring says; returns whether it did."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or not sys.platform.startswith("linux"):
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

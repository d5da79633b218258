import subprocess
import sys

import pytest

from jax_adalora import runtime


def _in_fresh_process(code: str, **env) -> str:
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_allocator_tuning_applies_on_linux_and_can_be_switched_off():
    code = "from jax_adalora.runtime import keep_freed_memory; print(keep_freed_memory())"
    expected = "True" if sys.platform.startswith("linux") else "False"
    assert _in_fresh_process(code) == expected
    assert _in_fresh_process(code, **{runtime.ENV_SWITCH: "0"}) == "False"


def test_a_freed_block_over_2_gib_stays_in_the_heap_for_the_next_step():
    """The next allocation of the same size is not faulted in again: trimming is off, not merely capped at INT_MAX
    (with that cap a 2.25 GiB block went back to the kernel on every free). Untuned glibc maps and unmaps such a
    block, so each allocation faults in every page: the control shows that the count sees the faults."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's allocator is tuned on Linux only")
    code = (
        "import ctypes, ctypes.util, resource\n"
        "from jax_adalora.runtime import keep_freed_memory\n"
        "keep_freed_memory()\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "size = 9 * 2**28\n"  # 2.25 GiB, above the largest threshold mallopt takes
        "for _ in range(2):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    untuned = int(_in_fresh_process(code, **{runtime.ENV_SWITCH: "0"}))
    tuned = int(_in_fresh_process(code))
    # 589,824 faults of 4 KiB pages untuned here; with transparent huge pages always on, about 1,152 of 2 MiB.
    assert untuned >= 1000  # the control: the count sees a block faulted in again
    assert tuned * 100 <= untuned


def test_jax_still_computes_after_tuning():
    code = (
        "from jax_adalora.runtime import keep_freed_memory; keep_freed_memory(); import jax.numpy as jnp; "
        "x = jnp.ones((1024, 1024)); print(float((x @ x).sum()))"
    )
    assert float(_in_fresh_process(code)) == 1024.0**3


def test_step_compiler_options_keep_ynnpack_for_dots_only_on_cpu_and_can_be_switched_off():
    code = (
        "import jax; from jax_adalora.runtime import step_compiler_options; "
        "print(jax.default_backend(), step_compiler_options())"
    )
    backend, _, options = _in_fresh_process(code).partition(" ")
    if backend == "cpu":
        assert options == repr(runtime.CPU_STEP_OPTIONS)
    else:
        assert options == "{}"
    assert _in_fresh_process(code, **{runtime.XLA_CPU_ENV_SWITCH: "0"}).endswith(" {}")


def test_the_step_options_compile_reductions_without_ynnpack_and_keep_the_values():
    import jax
    import jax.numpy as jnp
    import numpy as np

    options = runtime.step_compiler_options()
    if not options:
        pytest.skip("the step options are empty off CPU")
    g = jax.random.normal(jax.random.key(0), (32, 1536, 16))

    def moments(g):
        mean = jnp.mean(g, axis=0)
        return mean, jnp.mean(jnp.square(g - mean), axis=0)

    default = jax.jit(moments).lower(g).compile()
    tuned = jax.jit(moments, compiler_options=options).lower(g).compile()
    assert "__ynn_fusion" in default.as_text()  # XLA's default sends these reductions to YNNPACK
    assert "__ynn_fusion" not in tuned.as_text()
    g64 = np.asarray(g, np.float64)
    reference = (g64.mean(0), g64.var(0))
    for ours in (default(g), tuned(g)):
        for value, expected in zip(ours, reference, strict=True):
            np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-5, atol=1e-7)

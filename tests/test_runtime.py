import os
import subprocess
import sys

import pytest

from jax_adalora.cli import runtime


def _in_fresh_process(code: str, **env) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_allocator_tuning_applies_on_linux_and_can_be_switched_off():
    code = "from jax_adalora.cli.runtime import keep_freed_memory; print(keep_freed_memory())"
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
        "from jax_adalora.cli.runtime import keep_freed_memory\n"
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
        "from jax_adalora.cli.runtime import keep_freed_memory; keep_freed_memory(); import jax.numpy as jnp; "
        "x = jnp.ones((1024, 1024)); print(float((x @ x).sum()))"
    )
    assert float(_in_fresh_process(code)) == 1024.0**3


def test_step_compiler_options_keep_ynnpack_for_dots_only_on_cpu_and_can_be_switched_off():
    code = (
        "import jax; from jax_adalora.cli.runtime import step_compiler_options; "
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


def test_runs_on_cpu_and_the_allocator_tuning_follow_the_configured_platform_without_starting_a_backend():
    """One fresh process: platforms as JAX_PLATFORMS would set them, then none (plugins decide); the allocator is
    tuned only where JAX runs on CPU unless forced; and no backend was started (none of CUDA or TPU is here, so
    starting one would have raised)."""
    code = (
        "import os, jax\n"
        "from jax._src import xla_bridge\n"
        "from jax_adalora.cli import runtime\n"
        "def on(platforms, **env):\n"
        "    jax.config.update('jax_platforms', platforms)\n"
        "    os.environ.update(env)\n"
        "    return [runtime.runs_on_cpu(), runtime.keep_freed_memory()]\n"
        "out = on('cuda,cpu') + on('tpu') + on('cpu', JAX_ADALORA_MALLOC_TUNING='0')\n"
        "out += on(None, JAX_ADALORA_MALLOC_TUNING='') + [runtime._accelerator_plugin_installed()]\n"
        "out += on(None, PJRT_NAMES_AND_LIBRARY_PATHS='gpu:/nonexistent.so')\n"
        "out += on('tpu', JAX_ADALORA_MALLOC_TUNING='1')\n"
        "print(*out, xla_bridge.backends_are_initialized())\n"
    )
    env = {"JAX_PLATFORMS": "", "PJRT_NAMES_AND_LIBRARY_PATHS": "", "TPU_LIBRARY_PATH": "", runtime.ENV_SWITCH: ""}
    words = _in_fresh_process(code, **env).split()
    linux = str(sys.platform.startswith("linux"))
    assert words[:6] == ["False", "False", "False", "False", "True", "False"]  # CUDA, TPU; CPU but switched off
    plugin = words[8] == "True"  # none is installed in CI; a GPU/TPU install reads as not CPU
    assert words[6:8] == [str(not plugin), "False" if plugin else linux]
    assert words[9:] == ["False", "False", "False", linux, "False"]  # a registered plugin; forced; no backend


def test_the_compilation_cache_is_written_by_one_process_and_read_by_the_next(tmp_path):
    code = (
        "import sys, jax, jax.numpy as jnp\n"
        "from jax_adalora.cli.runtime import enable_compilation_cache\n"
        "hits = []\n"
        "jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))\n"
        "enable_compilation_cache(sys.argv[1], min_compile_time_s=0)\n"
        "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((16, 16))).block_until_ready()\n"
        "print(hits.count('/jax/compilation_cache/cache_hits'))\n"
    )
    directory = tmp_path / "cache" / "nested"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # not the session's cache
    run = lambda: subprocess.run(
        [sys.executable, "-c", code, str(directory)], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert run() == "0"
    written = sorted(p.name for p in directory.iterdir())
    assert written  # the programs were stored
    assert int(run()) >= 1  # and found by the next process
    assert sorted(p.name for p in directory.iterdir()) == written


def test_the_compilation_cache_refuses_a_file_or_a_second_directory(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="not a directory"):
        runtime.enable_compilation_cache(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
    import jax

    saved = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    try:  # nothing compiles in between, so no program is written to these directories
        jax.config.update("jax_compilation_cache_dir", None)  # as in a process without the tests' session cache
        assert runtime.enable_compilation_cache(tmp_path / "a") == (tmp_path / "a").resolve()
        runtime.enable_compilation_cache(tmp_path / "a")  # the same directory again is fine
        with pytest.raises(ValueError, match="already caches in"):
            runtime.enable_compilation_cache(tmp_path / "b")
        assert not (tmp_path / "b").exists()
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])

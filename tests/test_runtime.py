import subprocess
import sys

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


def test_jax_still_computes_after_tuning():
    code = (
        "from jax_adalora.runtime import keep_freed_memory; keep_freed_memory(); import jax.numpy as jnp; "
        "x = jnp.ones((1024, 1024)); print(float((x @ x).sum()))"
    )
    assert float(_in_fresh_process(code)) == 1024.0**3

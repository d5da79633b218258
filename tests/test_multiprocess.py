"""Two processes on this machine, as several hosts run the command: the same run as one process.

Each process runs ``python -m jax_adalora.train --distributed`` with the coordinator (127.0.0.1), the
process count and its index in the environment (CPU collectives through gloo), as on several hosts; each
feeds its own two local devices. One process with four devices is the reference.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_train import REPO, _flags
from tiny_assets import make_sst2_dir, make_tiny_bert

LAUNCH = (
    "import sys, jax; jax.config.update('jax_cpu_collectives_implementation', 'gloo'); "
    "jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]), "
    "heartbeat_timeout_seconds=10); "
    "from jax_adalora.cli.train import main; sys.exit(main(sys.argv[3:]))"
)
COMMON = ["--score", "sensitivity", "--no-export", "--epochs", "1", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return make_tiny_bert(root / "tiny-bert"), make_sst2_dir(root / "sst2")


def _env(devices: int) -> dict[str, str]:
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _two_processes(
    flags: list[str], logs: Path, *, command_line: bool = False, extra: dict[int, list[str]] | None = None
) -> list[subprocess.Popen]:
    """Processes 0 and 1 of one run; their stderr goes to ``logs/<pid>.err`` (a pipe could fill and block).

    ``command_line``: ``python -m jax_adalora.train --distributed`` with the coordinator, process count and
    index in the environment, as a user launches it on several hosts; else through ``LAUNCH``, which also
    shortens JAX's heartbeat timeout to 10 s. ``extra``: flags added to one process's command."""
    address = f"127.0.0.1:{_free_port()}"
    logs.mkdir()

    def command(pid):
        own = [*flags, *(extra or {}).get(pid, [])]
        if command_line:
            return [sys.executable, "-m", "jax_adalora.train", "--distributed", *own]
        return [sys.executable, "-c", LAUNCH, address, str(pid), *own]

    def env(pid):
        where = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid)}
        return {**_env(2), **(where if command_line else {})}

    return [
        subprocess.Popen(
            command(pid),
            env=env(pid),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(logs / f"{pid}.err", "w"),  # noqa: SIM115 - the child holds it
        )
        for pid in (0, 1)
    ]


@pytest.mark.slow
def test_two_processes_train_as_one(assets, tmp_path):
    one = subprocess.Popen(  # the reference runs beside the two processes: each process uses about one core
        [sys.executable, "-m", "jax_adalora.train", *_flags(assets, tmp_path / "one", *COMMON)],
        env=_env(4),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    processes = _two_processes(_flags(assets, tmp_path / "two", *COMMON), tmp_path / "logs", command_line=True)
    _, one_err = one.communicate(timeout=600)
    assert one.returncode == 0, one_err[-2000:]
    for pid, process in enumerate(processes):
        assert process.wait(timeout=600) == 0, (tmp_path / "logs" / f"{pid}.err").read_text()[-2000:]

    a, b = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == sorted(
        p.name for p in (b / "checkpoints").iterdir()
    )
    assert json.loads((a / "rank_pattern.json").read_text()) == json.loads((b / "rank_pattern.json").read_text())
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    assert [(r["step"], "eval" in r) for r in rows[0]] == [(r["step"], "eval" in r) for r in rows[1]]  # written once
    for row_a, row_b in zip(*rows, strict=True):
        if "eval" in row_a:
            assert row_a == row_b  # gathered from both processes: every dev example, scored once
        else:
            assert row_a["budget"] == row_b["budget"]
            assert row_a["loss"] == pytest.approx(row_b["loss"], rel=1e-5)
    wa, wb = load_file(a / "final_adapters.safetensors"), load_file(b / "final_adapters.safetensors")
    for key in wa:  # four devices either way; only the order of the float32 sums across processes differs
        np.testing.assert_allclose(wb[key], wa[key], rtol=1e-4, atol=5e-4 * float(np.abs(wa[key]).max()), err_msg=key)


@pytest.mark.slow
def test_a_dead_peer_stops_the_other_process(assets, tmp_path):
    out = tmp_path / "run"
    survivor, victim = _two_processes(_flags(assets, out, *COMMON), tmp_path / "logs")
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "2").exists() and survivor.poll() is None:
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=120) != 0  # the heartbeat timeout is 10 s: it stops, it does not hang
    assert "another task died" in (tmp_path / "logs" / "0.err").read_text()


def test_processes_started_with_other_settings_stop_naming_them(assets, tmp_path):
    """Process 1 started with another learning rate: both stop at once (exit 2) naming the flag, instead of
    waiting on each other's collectives forever; nothing is written."""
    out = tmp_path / "run"
    processes = _two_processes(
        _flags(assets, out, *COMMON), tmp_path / "logs", command_line=True, extra={1: ["--learning-rate", "0.5"]}
    )
    for pid, process in enumerate(processes):
        assert process.wait(timeout=300) == 2, (tmp_path / "logs" / f"{pid}.err").read_text()[-2000:]
        last = (tmp_path / "logs" / f"{pid}.err").read_text().strip().splitlines()[-1]
        assert "process 1 was started with other settings than process 0: --learning-rate;" in last, last
    assert not out.exists()


def _alone(assets, tmp_path, variables: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in _env(2).items() if not k.startswith("JAX_") or k == "JAX_PLATFORMS"}
    return subprocess.run(
        [sys.executable, "-m", "jax_adalora.train", "--distributed", *_flags(assets, tmp_path / "run", *COMMON)],
        env={**env, **variables}, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_distributed_with_nothing_to_join_names_the_variables(assets, tmp_path):
    done = _alone(assets, tmp_path, {})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "--distributed:" in lines[0] and "JAX_COORDINATOR_ADDRESS" in lines[0] and "JAX_NUM_PROCESSES" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_peer_that_never_comes_stops_in_one_line(assets, tmp_path):
    where = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    done = _alone(assets, tmp_path, {**where, "JAX_PROCESS_ID": "0", "JAX_ADALORA_JOIN_TIMEOUT": "5"})
    lines = [line for line in done.stderr.strip().splitlines() if line]
    assert done.returncode == 1, done.stderr[-2000:]
    assert lines[0].startswith("jax_adalora: joining 2 processes at 127.0.0.1:") and "up to 5 s" in lines[0]
    assert "not every process joined" in lines[-1] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "run").exists()

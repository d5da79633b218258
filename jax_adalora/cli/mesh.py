"""The devices and processes a run uses: one ``data`` mesh axis over every device of every process, batches placed
on it, which process writes, and waiting for every process."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh


def data_mesh() -> Mesh:
    """One ``data`` axis over every device of every process (one host: its local devices)."""
    return Mesh(np.array(jax.devices()), ("data",))


def device_batch(batch: dict, sharding) -> dict:
    """The global batch as arrays sharded over the ``data`` axis.

    Every process iterates the same global batches (same seed); each contributes its contiguous slice
    of rows, so on several hosts the result is the same global array as on one.
    """
    batch = dict(batch)
    if "example_index" not in batch:
        batch["example_index"] = np.arange(len(batch["example_mask"]), dtype=np.int32)
    n_proc, pid = jax.process_count(), jax.process_index()
    out = {}
    for key, value in batch.items():
        if not isinstance(value, np.ndarray):
            continue
        rows = value.shape[0] // n_proc
        out[key] = jax.make_array_from_process_local_data(sharding, value[pid * rows : (pid + 1) * rows], value.shape)
    return out


def host_local(tree):
    """Arrays sharded over the devices of every process, whole on each process (numpy)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 only (checkpoints: orbax, on every process)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits for every process (a no-op on one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)

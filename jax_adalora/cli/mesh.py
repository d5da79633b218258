"""The devices and processes a run uses: a ``data`` mesh axis over every device of every process (and with
``--fsdp`` an ``fsdp`` axis beside it, over which the frozen base weights are sharded), batches placed on it,
which process writes, and waiting for every process."""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

FSDP_AXIS = "fsdp"


def data_mesh(fsdp: int = 1) -> Mesh:
    """Every device of every process (one host: its local devices): one ``data`` axis, or with ``fsdp`` > 1 the
    axes ``("data", "fsdp")`` of shape ``(devices / fsdp, fsdp)``."""
    devices = np.array(jax.devices())
    if fsdp <= 1:
        return Mesh(devices, ("data",))
    if devices.size % fsdp:
        raise ValueError(f"--fsdp {fsdp}: the {devices.size} devices cannot be split into groups of {fsdp}")
    return Mesh(devices.reshape(-1, fsdp), ("data", FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split along their first axis over every device of ``mesh`` (all of its axes)."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def weight_shardings(tree, mesh: Mesh):
    """A sharding per leaf of ``tree`` (the frozen base weights): with an ``fsdp`` axis, each array is split over
    it along its largest dimension that the axis size divides (replicated when none does); otherwise every
    leaf is replicated."""
    if FSDP_AXIS not in mesh.axis_names:
        return jax.tree.map(lambda _: replicated(mesh), tree)
    size = mesh.shape[FSDP_AXIS]

    def sharding(leaf) -> NamedSharding:
        shape = np.shape(leaf)
        fits = [i for i, d in enumerate(shape) if d % size == 0]
        if not fits:
            return replicated(mesh)
        axis = max(fits, key=lambda i: shape[i])
        return NamedSharding(mesh, PartitionSpec(*(FSDP_AXIS if i == axis else None for i in range(len(shape)))))

    return jax.tree.map(sharding, tree)


def bytes_per_device(tree) -> tuple[int, int]:
    """(bytes of the whole ``tree``, bytes its arrays hold on the first device)."""
    leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    whole = sum(int(x.nbytes) for x in leaves)
    first = jax.devices()[0]
    local = sum(int(s.data.nbytes) for x in leaves for s in x.addressable_shards if s.device == first)
    return whole, local


def device_batch(batch: dict, sharding) -> dict:
    """The global batch as arrays split along their first axis over every device (:func:`batch_sharding`).

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


def check_same_settings(sections: dict[str, dict[str, Any]]) -> None:
    """Refuses a run whose processes were started with different settings: they would compute different steps
    and wait on each other's collectives forever. Every process sends a checksum per setting; each names the
    settings where any process differs from process 0 (a no-op on one process).

    Args:
      sections: ``{section: {field: value}}`` (``RunConfig.to_dict()``'s train, adalora and optim sections).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    names = sorted((section, name) for section, fields in sections.items() for name in fields)
    digests = np.array(
        [zlib.crc32(json.dumps(sections[s][n], sort_keys=True, default=str).encode()) for s, n in names], np.uint32
    )
    everyone = np.asarray(multihost_utils.process_allgather(np.concatenate([[len(names)], digests]).astype(np.uint32)))
    if not (everyone[:, 0] == len(names)).all():
        raise ValueError("--distributed: the processes run different versions of jax_adalora (their settings differ)")
    differing = [n for i, (_, n) in enumerate(names) if not (everyone[:, i + 1] == everyone[0, i + 1]).all()]
    if differing:
        processes = [p for p in range(len(everyone)) if (everyone[p, 1:] != everyone[0, 1:]).any()]
        raise ValueError(
            f"--distributed: process{'es' if len(processes) > 1 else ''} {', '.join(map(str, processes))} "
            f"{'were' if len(processes) > 1 else 'was'} started with other settings than process 0: "
            f"{', '.join('--' + n.replace('_', '-') for n in differing)}; start every process with the same command"
        )

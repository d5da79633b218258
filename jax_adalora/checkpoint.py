"""Checkpoints of a training run with orbax: train state + a JSON of host-side progress.

Each checkpoint holds the trainable parameters, the optimizer state (the rank allocator's scores,
masks and step count included), the running-moment state, and a JSON with the data iterator's
position, the epoch, the best metric so far and the metric history. The step key is derived from
the seed and the step, so no RNG state needs saving. Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a killed run never leaves a half-written checkpoint;
the manager keeps the last ``keep`` of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, progress: dict) -> None:
        host_state = jax.tree.map(np.asarray, state)
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(host_state), progress=ocp.args.JsonSave(progress)),
        )
        self.manager.wait_until_finished()

    def restore(self, like_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores into the structure (and shardings) of ``like_state``; the latest step by default."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to resume from")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.tree.map(np.asarray, like_state))
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()),
        )
        state = jax.tree.map(
            lambda new, like: jax.device_put(new, like.sharding) if isinstance(like, jax.Array) else new,
            restored["state"],
            like_state,
        )
        return state, dict(restored["progress"])

    def close(self) -> None:
        self.manager.close()

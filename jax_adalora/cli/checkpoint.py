"""Checkpoints of a training run with orbax: train state + a JSON of host-side progress.

Each checkpoint holds the trainable parameters, the optimizer state (the rank allocator's scores,
masks and step count included), the running-moment state, and a JSON with the data iterator's
position, the epoch, the best metric so far and the metric history. The step key is derived from
the seed and the step, so no RNG state needs saving. Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a killed run never leaves a half-written checkpoint;
the manager keeps the last ``keep`` of them.

Only finite parameters are saved (a diverged state raises :class:`NonFiniteState` instead), and a
checkpoint that cannot be read (a truncated file, a disk error) is reported by path, moved aside to
``corrupt-<step>`` and the one before it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class NonFiniteState(FloatingPointError):
    """The state to checkpoint holds NaN or infinite parameters; it is never saved."""


class NoUsableCheckpoint(RuntimeError):
    """Every checkpoint in the directory failed to restore."""


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, progress: dict) -> None:
        """Saves ``state`` and ``progress`` as checkpoint ``step``.

        Raises:
          NonFiniteState: a parameter holds NaN or inf (nothing is written: a diverged state must never
            become the checkpoint a resume starts from).
        """
        host_state = jax.device_get(state)  # one explicit copy to the host
        bad = non_finite_leaves(host_state.params if hasattr(host_state, "params") else host_state)
        if bad:
            raise NonFiniteState(f"parameters {', '.join(bad[:3])} hold NaN or inf at step {step}")
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
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.device_get(like_state))
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

    def restore_latest_usable(self, like_state: Any) -> tuple[Any, dict]:
        """The newest checkpoint that restores; each one that fails is logged by path and moved aside.

        Raises:
          NoUsableCheckpoint: none restores (the message names the directory and the last failure).
        """
        failure = ""
        for step in sorted(self.manager.all_steps(), reverse=True):
            path = self.directory / str(step)
            try:
                return self.restore(like_state, step)
            except Exception as err:  # orbax and tensorstore raise many types for an unreadable checkpoint
                failure = f"{path}: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
                aside = self.directory / f"corrupt-{step}"
                for n in range(2, 1000):
                    if not aside.exists():
                        break
                    aside = self.directory / f"corrupt-{step}-{n}"
                log.warning("checkpoint %s cannot be read (%s); moved to %s, trying the one before", path, err, aside)
                path.rename(aside)
                self.manager.reload()
        raise NoUsableCheckpoint(f"no checkpoint in {self.directory} can be read (last: {failure})")

    def close(self) -> None:
        self.manager.close()


def non_finite_leaves(tree: Any) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` that hold a NaN or an infinity."""
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        value = np.asarray(leaf)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad.append(jax.tree_util.keystr(path))
    return bad

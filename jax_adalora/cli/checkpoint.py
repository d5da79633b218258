"""Checkpoints of a training run with orbax: train state + a JSON of host-side progress.

Each checkpoint holds the trainable parameters, the optimizer state (the rank allocator's scores,
masks and step count included), the running-moment state, and a JSON with the data iterator's
position, the epoch, the best metric so far and the metric history. The step key is derived from
the seed and the step, so no RNG state needs saving. Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a killed run never leaves a half-written checkpoint;
the manager keeps the last ``keep`` of them.

Only finite parameters are saved (a diverged state raises :class:`NonFiniteState` instead). Each checkpoint
gets a SHA-256 of every file it holds (``checksums.json`` in its directory, written atomically once orbax has
finished it), verified before it is restored, so a file changed in place (even at the same size) is found
before it is read. A checkpoint that fails the check or cannot be read (a truncated file, a disk error) is
reported in one line by path, moved aside to ``corrupt-<step>`` and the one before it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_adalora.cli.errors import RunStopped
from jax_adalora.cli.report import atomic_write_json

log = logging.getLogger(__name__)


class NonFiniteState(FloatingPointError):
    """The state to checkpoint holds NaN or infinite parameters; it is never saved."""


class NoUsableCheckpoint(RunStopped):
    """Every checkpoint in the directory failed to restore."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint's files do not match the checksums saved with it."""


class CheckpointWriteFailed(RunStopped):
    """A checkpoint could not be written (disk full, a file-size limit, a disk error); its partial files are
    removed and the run stops, keeping the checkpoints before it."""


# What tensorstore's messages say for the errors of a full disk or a file-size limit (it raises ValueError with
# the absl status text, not OSError).
_WRITE_ERRORS = (
    ("no space left", "no space left on device"),
    ("resource_exhausted", "no space left on device (RESOURCE_EXHAUSTED)"),
    ("file too large", "a file would exceed the file-size limit (File too large)"),
    ("disk quota", "disk quota exceeded"),
)


CHECKSUMS = "checksums.json"


def file_checksums(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` but the checksum file itself."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name == CHECKSUMS:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        out[name] = digest.hexdigest()
    return out


def verify_checksums(directory: Path) -> None:
    """Raises :class:`CorruptCheckpoint` naming the first file that changed, appeared or vanished since the
    checkpoint was saved; a checkpoint saved without checksums (by an older version) passes."""
    saved_file = directory / CHECKSUMS
    if not saved_file.is_file():
        return
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpoint(f"{saved_file} cannot be read ({type(err).__name__})") from None
    now = file_checksums(directory)
    for name in sorted(set(saved) | set(now)):
        if name not in now:
            raise CorruptCheckpoint(f"{directory / name} is missing")
        if name not in saved:
            raise CorruptCheckpoint(f"{directory / name} was not part of the checkpoint")
        if now[name] != saved[name]:
            raise CorruptCheckpoint(f"{directory / name} has changed since it was saved (checksum mismatch)")


@contextlib.contextmanager
def _quiet_orbax_logs():
    """A checkpoint that fails to restore or to save makes orbax and tensorstore log a traceback per array
    (hundreds); the caller reports the failure in one line instead."""
    loggers = [logging.getLogger(name) for name in ("asyncio", "absl", "orbax", "orbax.checkpoint")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


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
        try:
            with _quiet_orbax_logs():
                self.manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(host_state), progress=ocp.args.JsonSave(progress)
                    ),
                )
                self.manager.wait_until_finished()
            if jax.process_index() == 0:
                step_dir = self.directory / str(step)
                atomic_write_json(step_dir / CHECKSUMS, {"sha256": True, "files": file_checksums(step_dir)})
        except Exception as err:  # tensorstore reports a full disk as ValueError, orbax wraps others
            reason = write_failure_reason(err)
            if reason is None:
                raise
            self._remove_partial(step)
            earlier = [s for s in self.manager.all_steps() if s != step]
            kept = f"the checkpoint of step {max(earlier)} is kept" if earlier else "no earlier checkpoint exists"
            raise CheckpointWriteFailed(
                f"cannot write the checkpoint of step {step} to {self.directory}: {reason}; its partial files were "
                f"removed and {kept}. Free space (or raise the limit) and rerun the same command"
                + (" with --resume" if earlier else "")
            ) from err

    def _remove_partial(self, step: int) -> None:
        """Removes what a failed save left: orbax's temporary directories and an unfinished step directory."""
        if jax.process_index() != 0:
            return
        for path in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(path, ignore_errors=True)
        step_dir = self.directory / str(step)
        if step_dir.is_dir() and not (step_dir / CHECKSUMS).is_file():
            shutil.rmtree(step_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            self.manager.reload()

    def restore(self, like_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores into the structure (and shardings) of ``like_state``; the latest step by default."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to resume from")
        verify_checksums(self.directory / str(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, jax.device_get(like_state))
        with _quiet_orbax_logs():
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
                log.warning(
                    "checkpoint %s cannot be read (%s: %s); moved to %s, trying the one before",
                    path, type(err).__name__, " ".join(str(err).split())[:200], aside,
                )  # fmt: skip
                path.rename(aside)
                self.manager.reload()
        raise NoUsableCheckpoint(
            f"no checkpoint in {self.directory} can be read (last: {failure}); each was moved to corrupt-<step>"
        )

    def close(self) -> None:
        self.manager.close()


def write_failure_reason(err: BaseException) -> str | None:
    """What a failed checkpoint write ran into, when it is the disk (full, a file-size or quota limit), from the
    exception or any it was raised from; None for anything else."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return {
                errno.ENOSPC: "no space left on device",
                errno.EFBIG: "a file would exceed the file-size limit",
            }.get(err.errno, "disk quota exceeded")
        text = str(err).lower()
        for needle, reason in _WRITE_ERRORS:
            if needle in text:
                return reason
        err = err.__cause__ or err.__context__
    return None


def non_finite_leaves(tree: Any) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` that hold a NaN or an infinity."""
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        value = np.asarray(leaf)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad.append(jax.tree_util.keystr(path))
    return bad

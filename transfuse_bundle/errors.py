"""Refusals of user input, and how a bundle command shows them: one line, no traceback.

Every check that refuses what a user gave (a file, a folder, a dataset, weights, a config value) raises a
subclass of :class:`UserInputError` whose message names the file and the problem. Commands report it as

    error: trained weights (run training first or pass --ckpt_path): 'runs/a/models/model.pt' does not exist

and exit 1. ``python -m monai.bundle run`` is MONAI's command, not ours: MONAI wraps what a config
expression raises in ``RuntimeError("Failed to evaluate ConfigExpression: ...")`` and the user would get a
50-70 line traceback ending in that generic line. :func:`install_excepthook` (run when the package is
imported, which the configs do before any of their expressions) replaces the traceback of an uncaught
exception whose cause chain holds a :class:`UserInputError` with that one line; any other exception (a real
crash) keeps its full traceback, followed by an ``error:`` line with the innermost cause when MONAI wrapped it.
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = ["UserInputError", "ConfigValueError", "DiskFullError", "FolderInUseError", "MissingFileError", "NotAFolderError",
           "NotWritableError", "find_user_error", "root_cause", "install_excepthook"]


class UserInputError(Exception):
    """A refusal of something the user gave; the message (``str()``) is what the user reads, naming the file."""


class ConfigValueError(UserInputError, ValueError):
    """A config value that cannot work (an image size the network cannot take, an unknown variant); the message
    names the value and what would work."""


class MissingFileError(UserInputError, FileNotFoundError):
    """A file the run needs does not exist (a ``FileNotFoundError``, for callers that catch that)."""


class NotAFolderError(UserInputError, NotADirectoryError):
    """A path given as a folder is a file, or a file is in the way of creating it."""


class NotWritableError(UserInputError, PermissionError):
    """A folder this run must write into cannot be written (permissions, a read-only file system)."""


class DiskFullError(UserInputError, OSError):
    """A file could not be written for lack of room (a full disk, a quota, a file-size limit); the previous file is
    kept (:func:`transfuse_bundle.files.atomic_file`). Not the user's input, but theirs to fix, so one line too."""


class FolderInUseError(UserInputError):
    """Another process is writing into an output folder (see :func:`transfuse_bundle.locking.lock_folders`)."""


def find_user_error(error: BaseException | None) -> UserInputError | None:
    """The first :class:`UserInputError` in ``error`` and its causes / contexts (outermost first), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s cause chain (``raise ... from``)."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def _report_user_errors(previous):
    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        found = find_user_error(error)
        if found is not None:
            print(f"error: {found}", file=sys.stderr, flush=True)
            return
        previous(kind, error, traceback)
        root = root_cause(error)
        if root is not error:  # MONAI's wrapper ("Failed to evaluate ...") would be the last line: name the cause
            print(f"error: {type(root).__name__}: {root}".rstrip(), file=sys.stderr, flush=True)

    hook.transfuse_user_errors = True
    return hook


def install_excepthook() -> None:
    """Makes ``sys.excepthook`` print an uncaught :class:`UserInputError` (even wrapped, e.g. by MONAI's config
    parser) as ``error: MESSAGE`` without a traceback; other exceptions go to the hook installed before, then,
    when they wrap another exception, ``error: TYPE: MESSAGE`` of the innermost one is printed last.
    Idempotent. The interpreter still exits with status 1."""
    if not getattr(sys.excepthook, "transfuse_user_errors", False):
        sys.excepthook = _report_user_errors(sys.excepthook)

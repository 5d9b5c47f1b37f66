"""Files the bundle writes: whole or not at all, and their sha256.

:func:`atomic_file` gives a hidden temporary file next to the target (``.NAME.PID-XXXXXXXX.partial``, unique, so
two writers never write into or move each other's file); when the block ends without an error the bytes are
flushed to disk (``fsync``) and ``os.replace`` swaps the file in, which is atomic on POSIX and Windows within one
file system. A failed write removes its temporary file (a full disk is a one-line
:class:`~transfuse_bundle.errors.DiskFullError`); a process killed at any moment leaves at worst a stale
one, which the next run that locks the folder removes (:func:`transfuse_bundle.locking.lock_folders`). So a
target is always either its previous content or the complete new one: weights, checkpoints, datalists, the
output manifest, packaged zips.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import DiskFullError

__all__ = ["PARTIAL_SUFFIX", "atomic_file", "write_text_atomically", "save_atomically", "sha256"]

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` is replaced by what was written only if the block
    succeeds (see the module docstring). ``mode``: ``"wb"`` or ``"w"`` (UTF-8 text)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:  # O_EXCL: never another writer's file; mode 0o666 less the umask, as open() gives the file it replaces
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), mode,
                  encoding=None if "b" in mode else "utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            partial.unlink()
        full = _no_room(error)
        if full is not None:
            raise DiskFullError(f"{path}: could not be written: {full.strerror} (a full disk, a quota or a file-size "
                                f"limit); the previous {path.name} is kept as it was and no partial file is left") from full
        raise


def _no_room(error: BaseException | None) -> OSError | None:
    """The OSError of :data:`NO_ROOM` in ``error``'s chain (``torch.save`` wraps it in its own RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


#: the errors of a write that found no room: a full disk, a quota, a file-size limit (RLIMIT_FSIZE)
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, "w") as file:
        file.write(text)


def save_atomically(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_file`: ``path`` is always either the previous file or the
    complete new one."""
    import torch

    with atomic_file(path) as file:
        torch.save(obj, file)


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file (the hash ``download_large_files`` checks and the output manifest keeps)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()

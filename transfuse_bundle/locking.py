"""One writer per output folder: the runs of a bundle lock the folders they write before they write.

Two trainings with one ``bundle_root`` would write the same ``models/checkpoint.pt`` and ``models/model.pt``
(each replacing the other's files, and racing on the temporary files of the atomic saves), two evaluations
with one ``output_dir`` the same report. The configs therefore call :func:`lock_folders` on their output
folders after their checks and before any work; a second run is refused in one line that names the folder
and the process holding it.

The lock is an OS file lock (``flock``) on ``FOLDER/.transfuse-run.lock``, which the kernel releases when the
process ends however it ends (``kill -9`` included): a lock file left behind by a dead run blocks nothing.
The file is removed at a normal exit. The lock belongs to the process, so locking a folder that this
process holds already is a no-op (several workflows run one after the other in one Python process). On
systems without ``fcntl`` (Windows) folders are not locked.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

from .errors import FolderInUseError, NotAFolderError, UserInputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK_NAME", "PARTIAL_SUFFIX", "lock_folders", "locked_folders", "release_folders"]

LOCK_NAME = ".transfuse-run.lock"
#: :func:`transfuse_bundle.handlers.save_atomically` writes ``.NAME.XXXXXXXX.partial`` next to its target first
PARTIAL_SUFFIX = ".partial"

logger = logging.getLogger(__name__)

# real path of a locked folder -> (descriptor of its lock file, the lock file, the pid that locked it)
_held: dict[str, tuple[int, Path, int]] = {}


def _holder(fd: int) -> str:
    """`` (pid N)`` from a lock file's content, or ``""`` while the holder has not written it yet."""
    words = os.pread(fd, 64, 0).split()
    return f" (pid {int(words[0])})" if words and words[0].isdigit() else ""


def _lock(folder: Path) -> None:
    lock_path = folder / LOCK_NAME
    if folder.exists() and not folder.is_dir():
        raise NotAFolderError(f"{folder}: is a file, not a folder; give this run a folder (--bundle_root, --output_dir)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise FolderInUseError(
                    f"{folder}: another run{holder} is writing into this folder; wait for it to finish, or give "
                    f"this run another folder (--bundle_root, --output_dir)"
                ) from None
            # a holder that ended between our open and our lock removed the file: lock the one that is there now
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            os.close(fd)  # unlocks
            raise
    except OSError as e:  # read-only or missing permissions: say so before any work, in one line
        raise UserInputError(f"{folder}: cannot write into this folder ({e.strerror}); give this run a writable "
                             f"folder (--bundle_root, --output_dir)") from None
    _held[os.path.realpath(folder)] = (fd, lock_path, os.getpid())
    # only the lock holder writes here, so a temporary file of an atomic save is what a killed run left behind
    for stale in folder.glob(f".*{PARTIAL_SUFFIX}"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            logger.info("removed %s, left by an interrupted save", stale)


def lock_folders(folders: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Creates each folder if needed and locks it for this process until it exits (or :func:`release_folders`).

    Args:
        folders: the folder(s) this run writes into, e.g. ``[ckpt_dir, tensorboard_dir]``.

    Returns:
        the folders, as strings.

    Raises:
        FolderInUseError: another process holds the lock of one of them (the message names the folder and,
            once the holder has written it, its pid); the folders locked before it are released again.
        UserInputError: a folder cannot be created or written (read-only file system, permissions).
    """
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    _lock_new(folders)
    return [str(f) for f in folders]


def _lock_new(folders: Sequence[str | os.PathLike]) -> list[str]:
    """Locks the folders this process does not hold yet; returns those (all or none of them are locked)."""
    taken = []
    if fcntl is None:
        return taken
    try:
        for folder in folders:
            if os.path.realpath(folder) not in _held:
                _lock(Path(folder))
                taken.append(os.path.realpath(folder))
    except UserInputError:
        release_folders(taken)
        raise
    return taken


@contextlib.contextmanager
def locked_folders(folders: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterator[None]:
    """:func:`lock_folders` for a block of code (e.g. installing into an app folder): the locks it took are
    released at its end, those this process held before are kept."""
    taken = _lock_new([folders] if isinstance(folders, (str, os.PathLike)) else list(folders))
    try:
        yield
    finally:
        release_folders(taken)


def release_folders(folders: Sequence[str] | None = None) -> None:
    """Unlocks the folders this process locked (all by default, as at exit) and removes their lock files."""
    for key in list(_held) if folders is None else [os.path.realpath(f) for f in folders]:
        fd, lock_path, pid = _held.get(key, (None, None, None))
        if fd is None or pid != os.getpid():  # a forked child (a DataLoader worker) leaves its parent's lock alone
            continue
        del _held[key]
        lock_path.unlink(missing_ok=True)  # before unlocking: a waiting run then sees a new file and locks that one
        os.close(fd)


atexit.register(release_folders)

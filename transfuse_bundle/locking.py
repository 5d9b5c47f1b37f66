"""One writer per output folder: the runs of a bundle lock the folders they write before they write.

Two trainings with one ``bundle_root`` would write the same ``models/checkpoint.pt`` and ``models/model.pt``
(each replacing the other's files, and racing on the temporary files of the atomic saves), two evaluations
with one ``output_dir`` the same report. The configs therefore call :func:`lock_folders` on their output
folders after their checks and before any work; a second run is refused in one line that names the folder
and the process holding it.

The lock is an OS file lock (``flock``) on the folder itself, which the kernel releases when the process ends
however it ends (``kill -9`` included): nothing is written into the folder for it, so nothing is left behind
to block a later run or to show up among the outputs. The holder's pid comes from ``/proc/locks`` (Linux;
elsewhere the message has no pid). The lock belongs to the process, so locking a folder that this process
holds already is a no-op (several workflows run one after the other in one Python process). Where folders
cannot be locked (Windows, a network file system without ``flock`` on folders) the runs are not locked.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

from .errors import FolderInUseError, NotAFolderError, UserInputError
from .files import PARTIAL_SUFFIX

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["lock_folders", "locked_folders", "release_folders"]


logger = logging.getLogger(__name__)

# real path of a locked folder -> (descriptor of the open folder, the pid that locked it)
_held: dict[str, tuple[int, int]] = {}


def _holder(fd: int) -> str:
    """`` (pid N)``: the process holding the flock on the folder open as ``fd`` (``/proc/locks``), or ``""``."""
    st = os.fstat(fd)
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:  # "1: FLOCK  ADVISORY  WRITE 4711 fe:00:2146775 0 EOF"
                words = line.split()
                if len(words) > 5 and words[1] == "FLOCK" and words[5] == where:
                    return f" (pid {words[4]})"
    except OSError:
        pass
    return ""


def _lock(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotAFolderError(f"{folder}: is a file, not a folder; give this run a folder (--bundle_root, --output_dir)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:  # read-only or missing permissions: say so before any work, in one line
        raise UserInputError(f"{folder}: cannot write into this folder ({e.strerror}); give this run a writable "
                             f"folder (--bundle_root, --output_dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise FolderInUseError(
            f"{folder}: another run{holder} is writing into this folder; wait for it to finish, or give this run "
            f"another folder (--bundle_root, --output_dir)"
        ) from None
    except OSError as e:  # no flock on folders here: run unlocked rather than refuse
        os.close(fd)
        logger.debug("%s cannot be locked (%s); running without the lock", folder, e)
        return
    _held[os.path.realpath(folder)] = (fd, os.getpid())
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
    """Unlocks the folders this process locked (all by default, as at exit)."""
    for key in list(_held) if folders is None else [os.path.realpath(f) for f in folders]:
        fd, pid = _held.get(key, (None, None))
        if fd is None or pid != os.getpid():  # a forked child (a DataLoader worker) leaves its parent's lock alone
            continue
        del _held[key]
        os.close(fd)


atexit.register(release_folders)

"""Cheap checks the configs' ``run`` lists make before any work: yes/no values, files, writable folders.

Each raises a :class:`~transfuse_bundle.errors.UserInputError` whose message names the value or path, so a
run stops in one line before a model is built or a file written.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigValueError, MissingFileError, NotAFolderError, NotWritableError

__all__ = ["flag", "require_file", "require_writable_dir"]

def flag(value: bool | str | int, name: str = "option") -> bool:
    """A yes/no config value as a bool. ``monai.bundle run --name false`` passes the *string* ``"false"``
    (python-fire reads only ``True``/``False`` as booleans), which plain ``bool()`` would take for true;
    ``true/false/yes/no/1/0`` in any case are read as meant, anything else raises ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ConfigValueError(f"{name} must be true or false, got {value!r}")


def require_file(path: str | os.PathLike, what: str = "file") -> str:
    """Returns ``path`` if it is an existing file, else raises ``MissingFileError`` (a ``FileNotFoundError``)
    naming it and ``what``."""
    if not Path(path).is_file():
        problem = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise MissingFileError(f"{what}: {str(path)!r} {problem}")
    return str(path)


def require_writable_dir(path: str | os.PathLike, what: str = "output folder") -> str:
    """Returns ``path`` if it is a folder this process can write in, or can create (its nearest existing parent
    is such a folder); nothing is created. Raises ``NotADirectoryError`` / ``PermissionError`` naming ``what``
    and the path otherwise, so that a run stops before any work instead of at its first save."""
    target = Path(os.path.abspath(Path(path).expanduser()))
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == target else f"cannot be created: {existing} is a file"
        raise NotAFolderError(f"{what}: {str(path)!r} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # permissions, or a read-only file system (also for root)
        where = "" if existing == target else f" cannot be created: {existing}"
        raise NotWritableError(f"{what}: {str(path)!r}{where} is not writable by this user")
    return str(path)

"""Small checks the configs run in their ``initialize`` step, so problems surface before any work."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["require_file"]


def require_file(path: str | os.PathLike, what: str = "file") -> str:
    """Returns ``path`` if it is an existing file, else raises ``FileNotFoundError`` naming it and ``what``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what}: {str(path)!r} does not exist")
    return str(path)

"""Small checks the configs run before any work, and the one trusted way the package reads weights.

Weights files are pickles, and unpickling can run code. Every weights file the bundle reads goes
through :func:`load_weights`: ``torch.load(..., weights_only=True)``, whose restricted unpickler builds
tensors and plain containers only and refuses any other Python object *before* creating it, so a file
with pickled code is refused without running it. MONAI's ``CheckpointLoader`` and ``monai.bundle.load``
also pass ``weights_only=True``; MONAI Label 0.8.5 calls ``torch.load`` without it and relies on
torch's default (``True`` since torch 2.6; the server is started with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``
by :func:`transfuse_bundle.monailabel_app.server_env` so that no call site can turn it off).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["WeightsFileError", "flag", "load_weights", "require_file", "require_weights"]

RESAVE_HINT = "re-save it with torch.save(model.state_dict(), path)"


class WeightsFileError(ValueError):
    """A weights file that is refused: pickled Python objects, not a state dict, or unreadable."""


def flag(value: bool | str | int, name: str = "option") -> bool:
    """A yes/no config value as a bool. ``monai.bundle run --name false`` passes the *string* ``"false"``
    (python-fire reads only ``True``/``False`` as booleans), which plain ``bool()`` would take for true;
    ``true/false/yes/no/1/0`` in any case are read as meant, anything else raises ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}")


def require_file(path: str | os.PathLike, what: str = "file") -> str:
    """Returns ``path`` if it is an existing file, else raises ``FileNotFoundError`` naming it and ``what``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what}: {str(path)!r} does not exist")
    return str(path)


def load_weights(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """Loads a plain state dict with ``weights_only=True`` (on CPU) and checks that it is one.

    Args:
        path: a file written by ``torch.save(model.state_dict(), path)``. A checkpoint dict whose
            ``"model"`` entry is such a state dict (what ignite's ``Checkpoint`` writes and MONAI's
            ``CheckpointLoader`` reads) is accepted too; its ``"model"`` entry is returned.
        what: what the file is, for the error messages (e.g. ``"trained weights"``).

    Returns:
        ``{parameter or buffer name: tensor}``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        WeightsFileError: the file holds pickled Python objects other than tensors and plain
            containers (never created, so never run), is not a ``{str: Tensor}`` dict, or is
            truncated / not a torch file. The message names the file.
    """
    import torch

    require_file(path, what)
    name = str(path)
    try:
        content = torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r"GLOBAL ([\w.]+)", str(err))  # the class or function the unpickler refused
        if found:
            raise WeightsFileError(
                f"{what}: {name!r} contains pickled Python objects ({', '.join(found)}), which could run code "
                f"(refused before any was created); only plain state dicts of tensors are loaded "
                f"(torch.load with weights_only=True): {RESAVE_HINT}"
            ) from None
        detail = re.findall(r"Unsupported operand \d+|Unsupported class [\w.]+", str(err))
        raise WeightsFileError(
            f"{what}: {name!r} is corrupt, or a pickle with content the weights-only loader refuses "
            f"({detail[0] if detail else str(err)[:200]}); only plain state dicts of tensors are loaded: {RESAVE_HINT}"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for truncated or foreign files
        raise WeightsFileError(
            f"{what}: {name!r} is truncated, corrupt or not a torch weights file "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = content["model"]
    if not isinstance(content, dict) or not content:
        kind = "an empty dict" if isinstance(content, dict) else type(content).__name__
        raise WeightsFileError(f"{what}: {name!r} holds {kind}, not a state dict of tensors: {RESAVE_HINT}")
    bad = [k for k, v in content.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsFileError(
            f"{what}: {name!r} is not a plain state dict: entry {bad[0]!r} is a "
            f"{type(content[bad[0]]).__name__}, not a tensor ({len(bad)} such entries): {RESAVE_HINT}"
        )
    return content


def require_weights(path: str | os.PathLike, what: str = "weights") -> str:
    """Returns ``path`` after :func:`load_weights` accepted it; for the configs' ``run`` lists, so that a
    missing, unsafe or corrupt weights file stops the run with a clear message before any work."""
    load_weights(path, what)
    return str(path)

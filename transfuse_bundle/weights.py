"""The one trusted way the package reads weights, and whether they fit a network.

Weights files are pickles, and unpickling can run code. Every weights file the bundle reads goes
through :func:`load_weights`: ``torch.load(..., weights_only=True)``, whose restricted unpickler builds
tensors and plain containers only and refuses any other Python object *before* creating it, so a file
with pickled code is refused without running it. MONAI's ``CheckpointLoader`` and ``monai.bundle.load``
also pass ``weights_only=True``; MONAI Label 0.8.5 calls ``torch.load`` without it and relies on
torch's default (``True`` since torch 2.6; the server is started with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``
by :func:`transfuse_bundle.monailabel.app.server_env` so that no call site can turn it off).
"""

from __future__ import annotations

import math
import pickle
import re
from typing import TYPE_CHECKING, Any, Mapping

from .checks import require_file
from .errors import UserInputError

if TYPE_CHECKING:
    import os

    import torch

__all__ = ["WeightsFileError", "load_weights", "load_checkpoint", "weights_misfit", "require_weights", "require_checkpoint",
           "raise_misfit"]

RESAVE_HINT = "re-save it with torch.save(model.state_dict(), path)"


class WeightsFileError(UserInputError, ValueError):
    """A weights file that is refused: pickled Python objects, not a state dict, or unreadable."""


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
    content = _safe_load(path, what)
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        content = content["model"]
    return _state_dict(content, str(path), what)


def _safe_load(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; every failure is a :class:`WeightsFileError` naming the file."""
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
    return content


def _state_dict(content: Any, name: str, what: str) -> dict[str, torch.Tensor]:
    """``content`` if it is a non-empty ``{str: Tensor}`` dict, else a :class:`WeightsFileError` naming the file."""
    import torch

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


def load_checkpoint(path: str | os.PathLike, what: str = "training checkpoint") -> dict[str, Any]:
    """A training checkpoint (:class:`~transfuse_bundle.handlers.TrainingCheckpoint`'s file), read weights-only
    like :func:`load_weights`: ``{"network": state dict, "optimizer": ..., "trainer": ...}``.

    Raises:
        FileNotFoundError, WeightsFileError: as :func:`load_weights`; also when the file has no ``network``
            state dict (e.g. it holds plain weights, which start a training but cannot resume one).
    """
    content = _safe_load(path, what)
    if not isinstance(content, dict) or not isinstance(content.get("network"), dict):
        found = sorted(map(str, content))[:5] if isinstance(content, dict) else type(content).__name__
        raise WeightsFileError(f"{what}: {str(path)!r} is not a training checkpoint (expected the keys 'network', "
                               f"'optimizer', 'trainer'..., found {found})")
    _state_dict(content["network"], str(path), what)
    return content


def weights_misfit(network: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Why ``state`` does not load strictly into ``network``: empty when it does, otherwise the configuration
    values its shapes tell first, then the other differences.

    The values told: ``in_channels`` (the input side of the first convolution, and every weight that
    differs the same way), ``out_channels`` (the output side of the last one: the heads) and the image size
    (a ViT ``pos_embed``, whose grid is the image size over the patch size; read from the network's
    ``img_size``). Everything else (another variant or network) is listed as missing and unexpected keys and
    shapes, e.g. ``["weights have out_channels 3, the config 1", "missing head.bias"]``.
    """
    network = getattr(network, "module", network)  # DDP-wrapped
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    differ = [k for k in expected if k in found and found[k] != expected[k]]
    told: list[str] = []
    convs = [k for k in expected if len(expected[k]) >= 3]
    for name, key, axis in (("in_channels", convs[0] if convs else None, 1), ("out_channels", convs[-1] if convs else None, 0)):
        if key not in differ or len(found[key]) != len(expected[key]):
            continue
        pair = (found[key][axis], expected[key][axis])
        if [i for i, (a, b) in enumerate(zip(found[key], expected[key])) if a != b] != [axis]:
            continue
        told.append(f"weights have {name} {pair[0]}, the config {pair[1]}")
        differ = [k for k in differ if not _only_axis_differs(found[k], expected[k], axis, pair)]
    for key in [k for k in differ if k.endswith("pos_embed") and _only_axis_differs(found[k], expected[k], 1)]:
        told.append(_grid_message(found[key][1], expected[key][1], getattr(network, "img_size", None)))
        differ.remove(key)
    rest = [f"missing {k}" for k in expected if k not in found]
    rest += [f"unexpected {k}" for k in found if k not in expected]
    rest += [f"{k} has shape {list(found[k])}, the network {list(expected[k])}" for k in differ]
    if rest:
        shown = "; ".join(rest[:3]) + (f"; and {len(rest) - 3} more" if len(rest) > 3 else "")
        rest = [f"{'other differences' if told else 'another variant or network'}: {shown}"]
    return told + rest


def _only_axis_differs(found: tuple, expected: tuple, axis: int, pair: tuple[int, int] | None = None) -> bool:
    """Whether shapes differ on ``axis`` only (and there as ``pair`` (found, expected), when given)."""
    if len(found) != len(expected) or len(found) <= axis or found[axis] == expected[axis]:
        return False
    if pair is not None and (found[axis], expected[axis]) != pair:
        return False
    return all(a == b for i, (a, b) in enumerate(zip(found, expected)) if i != axis)


def _grid_message(found_tokens: int, expected_tokens: int, img_size: Any) -> str:
    """The image size a ViT position grid of ``found_tokens`` was made for, next to the network's ``img_size``."""
    if img_size is None or len(img_size) != 2:
        return f"weights have {found_tokens} position-grid tokens, the network {expected_tokens}: image_size differs"
    height, width = (int(v) for v in img_size)
    patch = math.sqrt(height * width / expected_tokens)
    scale = math.sqrt(found_tokens / expected_tokens)
    rows, cols = round(height / patch * scale), round(width / patch * scale)
    guess = ""
    if rows * cols != found_tokens:  # another aspect ratio: the squarest grid of that many patches, as a guess
        rows = max(r for r in range(1, math.isqrt(found_tokens) + 1) if found_tokens % r == 0)
        cols = found_tokens // rows
        guess = f" ({found_tokens} {round(patch)}-pixel patches: {rows}x{cols}, or another shape)"
    size = [round(rows * patch), round(cols * patch)]
    return (f"weights were trained at image size {size[0]}x{size[1]}{guess}, the config {height}x{width}: set "
            f"image_size to theirs (--image_size [{size[0]},{size[1]}]; --set image_size=[{size[0]},{size[1]}] "
            f"when packaging)")


def require_weights(path: str | os.PathLike, what: str = "weights", network: torch.nn.Module | None = None) -> str:
    """Returns ``path`` after :func:`load_weights` accepted it and, given ``network``, after they were found to fit
    it (:func:`weights_misfit`); for the configs' ``run`` lists, so that a missing, unsafe, corrupt or misfitting
    weights file stops the run with a clear message before any work."""
    state = load_weights(path, what)
    if network is not None:
        raise_misfit(network, state, f"{what}: {str(path)!r}")
    return str(path)


def require_checkpoint(path: str | os.PathLike, what: str = "training checkpoint") -> str:
    """Returns ``path`` after :func:`load_checkpoint` read it (the configs check a checkpoint to resume from
    this way first, before any data is loaded)."""
    load_checkpoint(path, what)
    return str(path)


def raise_misfit(network: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str,
                 network_name: str = "the network") -> None:
    """Raises :class:`WeightsFileError` ``"NAME does not fit NETWORK_NAME: ..."`` unless ``state`` fits ``network``
    (what differs: :func:`weights_misfit`)."""
    problems = weights_misfit(network, state)
    if problems:
        raise WeightsFileError(f"{name} does not fit {network_name}: {'; '.join(problems)}")

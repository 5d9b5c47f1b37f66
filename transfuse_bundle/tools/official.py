"""The real official TransFuse code (github.com/Rayicer/TransFuse), imported from a local checkout at run time.

Nothing of the official repository is part of this project: the benchmark takes the path of a checkout
(``transfuse-benchmark --official-code DIR``) and imports its ``lib/TransFuse.py`` (with ``lib/DeiT.py`` and
``lib/vision_transformer.py``) from there. The code was written for timm 0.3.2; what it needs from today's
timm is shimmed for the import only, never in its files:

* ``timm.models.registry.register_model`` is replaced by the identity while the official modules import, so
  their ``deit_*`` factories do not overwrite timm's own in the registry (this project's networks build timm's);
* ``timm.models.helpers.load_pretrained`` (only used for ImageNet weights, which the benchmark never loads) is a
  stub that refuses.

The official ``TransFuse_S`` is written for 192x256 inputs only: its ViT position embedding is resized to the
12x16 token grid in the ``deit_small_patch16_224`` factory and ``forward`` reshapes the tokens with
``view(B, -1, 12, 16)``. For another size (352x352: 22x22 tokens) the constants 12 and 16 of that ``view`` call
are replaced by the size's grid in the parsed source (the module is compiled from the changed syntax tree; the
file is not touched), and the position embedding is resized from 12x16 to that grid the way the factory
resized it from 14x14 (bilinear, corners aligned). Every other operation is the official one.

:func:`check_official` proves that what runs is the official model: the reference state dict of
``shared/reference`` (random weights, stored in float16) loaded strictly must reproduce the official outputs
stored beside it for a fixed 192x256 input.

Example::

    net = official_transfuse_s("/work/official_transfuse", (352, 352))   # eval mode; forward returns map_2
    check_official("/work/official_transfuse", "../shared/reference")    # raises OfficialCodeError if not
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError

__all__ = ["OfficialCodeError", "PATCH", "official_grid", "load_official_module", "official_transfuse_s",
           "check_official", "REFERENCE_FILES"]

PATCH = 16
#: the official code's own token grid (192x256 inputs)
OFFICIAL_GRID = (12, 16)
#: ``shared/reference``: the official TransFuse_S state dict (random weights, float16) and its outputs
REFERENCE_FILES = ("official_transfuse_s_random_fp16.pt", "official_transfuse_s_io.pt")


class OfficialCodeError(UserInputError):
    """The official checkout is missing, is not the official code, or does not reproduce the reference outputs."""


def official_grid(size: tuple[int, int]) -> tuple[int, int]:
    """The ViT token grid of an input of ``size`` (sides multiples of 16)."""
    if size[0] % PATCH or size[1] % PATCH:
        raise OfficialCodeError(f"the official TransFuse_S takes sides that are multiples of {PATCH}, got {size}")
    return size[0] // PATCH, size[1] // PATCH


class _GridNames(ast.NodeTransformer):
    """``x.view(a, b, 12, 16)`` -> ``x.view(a, b, _GRID_ROWS, _GRID_COLS)`` (the official S forward's reshape)."""

    def __init__(self) -> None:
        self.replaced = 0

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        last = node.args[-2:]
        if (isinstance(node.func, ast.Attribute) and node.func.attr == "view" and len(node.args) == 4
                and all(isinstance(a, ast.Constant) for a in last) and tuple(a.value for a in last) == OFFICIAL_GRID):
            node.args[-2:] = [ast.Name("_GRID_ROWS", ast.Load()), ast.Name("_GRID_COLS", ast.Load())]
            self.replaced += 1
        return node


@contextlib.contextmanager
def _timm_0_3_2() -> Iterator[None]:
    """The timm names the official modules import, as timm 0.3.2 had them, for the import only."""
    registry, helpers = types.ModuleType("timm.models.registry"), types.ModuleType("timm.models.helpers")
    registry.register_model = lambda fn: fn  # keep timm's own registry untouched

    def load_pretrained(*args, **kwargs):
        raise OfficialCodeError("the official code's ImageNet weights are not used by this project")

    helpers.load_pretrained = load_pretrained
    saved = {name: sys.modules.get(name) for name in ("timm.models.registry", "timm.models.helpers")}
    sys.modules.update({"timm.models.registry": registry, "timm.models.helpers": helpers})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


_loaded: dict[tuple[str, tuple[int, int]], types.ModuleType] = {}


def load_official_module(checkout: str | os.PathLike, grid: tuple[int, int] = OFFICIAL_GRID) -> types.ModuleType:
    """``lib/TransFuse.py`` of the official ``checkout``, imported with its forward's token grid set to ``grid``
    (see the module doc); one import per checkout and grid in a process."""
    lib = Path(checkout).resolve() / "lib"
    source_file = lib / "TransFuse.py"
    for needed in (source_file, lib / "DeiT.py", lib / "vision_transformer.py"):
        if not needed.is_file():
            raise OfficialCodeError(f"{needed}: not found; --official-code takes a checkout of "
                                    f"github.com/Rayicer/TransFuse (its lib/ holds TransFuse.py, DeiT.py, "
                                    f"vision_transformer.py)")
    key = (str(lib), tuple(grid))
    if key in _loaded:
        return _loaded[key]
    package = f"_official_transfuse_{len(_loaded)}"
    tree = ast.parse(source_file.read_text(), str(source_file))
    names = _GridNames()
    tree = ast.fix_missing_locations(names.visit(tree))
    if not names.replaced:
        raise OfficialCodeError(f"{source_file}: no view(..., 12, 16) token reshape found; not the official code")
    lib_package = types.ModuleType(package)
    lib_package.__path__ = [str(lib)]  # lib/ has no __init__.py: a package for its relative imports
    sys.modules[package] = lib_package
    module = types.ModuleType(f"{package}.TransFuse")
    module.__file__, module.__package__ = str(source_file), package
    module._GRID_ROWS, module._GRID_COLS = grid
    sys.modules[module.__name__] = module
    with _timm_0_3_2(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="timm")  # its deprecated import paths
        importlib.import_module(f"{package}.DeiT")
        exec(compile(tree, str(source_file), "exec"), module.__dict__)
    _loaded[key] = module
    return module


class _OfficialMap2(nn.Module):
    """The official model as its test script uses it: all three heads computed, ``map_2`` kept; in training the
    three heads in this project's order ``(map_2, map_1, map_x)`` (the official returns ``(map_x, map_1, map_2)``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        map_x, map_1, map_2 = self.net(x)
        return (map_2, map_1, map_x) if self.training else map_2


def official_transfuse_s(checkout: str | os.PathLike, size: tuple[int, int] = (192, 256),
                         heads: bool = False) -> nn.Module:
    """The official ``TransFuse_S`` (random weights, no dropout at inference) for inputs of ``size``, in eval
    mode. ``heads``: the module itself, whose forward returns ``(map_x, map_1, map_2)``; default: a wrapper
    returning ``map_2`` ``(B, 1, H, W)``, what the official test script keeps."""
    grid = official_grid(size)
    module = load_official_module(checkout, grid)
    net = module.TransFuse_S(pretrained=False)
    if grid != OFFICIAL_GRID:
        with torch.no_grad():
            pe = net.transformer.pos_embed.detach().transpose(1, 2).reshape(1, -1, *OFFICIAL_GRID)
            pe = F.interpolate(pe, size=grid, mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
        net.transformer.pos_embed = nn.Parameter(pe.contiguous())
    net.eval()
    return net if heads else _OfficialMap2(net).eval()


def check_official(checkout: str | os.PathLike, reference: str | os.PathLike, tolerance: float = 1e-4) -> float:
    """Loads the reference state dict into the official ``TransFuse_S`` of ``checkout`` (strictly) and returns the
    largest relative error of its three outputs against the reference outputs for the reference input; raises
    :class:`OfficialCodeError` when a file is missing or the error exceeds ``tolerance``."""
    reference = Path(reference)
    for name in REFERENCE_FILES:
        if not (reference / name).is_file():
            raise OfficialCodeError(f"{reference / name}: not found (the official reference state dict and outputs)")
    state = torch.load(reference / REFERENCE_FILES[0], weights_only=True, map_location="cpu")
    io = torch.load(reference / REFERENCE_FILES[1], weights_only=True, map_location="cpu")
    net = official_transfuse_s(checkout, tuple(io["input"].shape[2:]), heads=True)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as error:
        raise OfficialCodeError(f"{checkout}: the reference state dict does not fit its TransFuse_S: "
                                f"{str(error).splitlines()[0]}") from None
    with torch.no_grad():
        outputs = net(io["input"].float())
    errors = [float((out - io[name]).norm() / io[name].norm()) for out, name in zip(outputs, ("map_x", "map_1", "map_2"))]
    if max(errors) > tolerance:
        raise OfficialCodeError(f"{checkout}: its TransFuse_S does not reproduce the reference outputs "
                                f"(relative errors {', '.join(f'{e:.1e}' for e in errors)} > {tolerance})")
    return max(errors)

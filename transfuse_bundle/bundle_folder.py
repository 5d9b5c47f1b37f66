"""Self-contained bundle folders: the repository's bundle (or a preset of it) copied into one folder.

A bundle folder is what MONAI Label's ``monaibundle`` app loads from ``APP/model/NAME`` and what the
model zoo packages as ``NAME/``: ``configs/``, ``models/``, ``docs/``, ``LICENSE`` and, so that the
folder works without ``pip install``, a copy of the ``transfuse_bundle`` package (the configs point at
it with ``_target_``; MONAI Label and ``monai.bundle run`` put the bundle root on ``sys.path``).

A *preset* selects a dataset/task variant of the bundle. Its JSON configs are the repository's configs
with overlay files merged on top, exactly as ``monai.bundle run --config_file "[base, overlay]"``
merges them (top-level keys replace, ``a#b`` keys replace nested items), so the copy needs no
overlay at run time:

========  ==============================================================================
polyp     the repository's configs unchanged (2D RGB, 1 sigmoid channel: background, polyp)
prostate  T2 MRI volumes: trained on axial slices, served and evaluated slice by slice
          (``SliceInferer``) by the 2D network, 1 input channel, 3 classes (background, central
          gland/transition zone, peripheral zone): ``configs/presets/prostate_*.json``
========  ==============================================================================

Example::

    from transfuse_bundle.bundle_folder import copy_bundle, write_initial_weights
    copy_bundle("apps/monaibundle/model/transfuse_polyp", preset="polyp")
    copy_bundle("/tmp/prostate", preset="prostate", overrides={"image_size": [256, 256]})
    write_initial_weights("/tmp/prostate")          # untrained weights, e.g. to train from MONAI Label
"""

from __future__ import annotations

import argparse

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = [
    "parse_override",
    "read_json_object",
    "write_json",
    "PRESETS",
    "Preset",
    "BundleFolderError",
    "source_root",
    "merged_config",
    "copy_bundle",
    "write_initial_weights",
]

logger = logging.getLogger(__name__)

PACKAGE_NAME = "transfuse_bundle"
# what a bundle folder holds besides configs/ and the package (copied when present in the source)
DOC_ITEMS = ("docs", "LICENSE")
MODEL_FILES = ("model.pt", "model.ts", "model.onnx", "large_files.yml")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".DS_Store")


class BundleFolderError(RuntimeError):
    """A bundle folder cannot be made; the message names the file or folder and the problem."""


@dataclass(frozen=True)
class Preset:
    """A variant of the bundle.

    Args:
        description: one line for ``--help`` and logs.
        overlays: ``{config file name: [overlay paths relative to configs/]}``, merged in order on top of
            ``configs/<name>``; a name without a base file in configs/ is built from its overlays alone.
        exclude: config files of the repository that the preset does not ship (e.g. a training config
            that would train the wrong task).
        models_dir: the folder (relative to the source root) whose weights the preset ships as
            ``models/``; weights of another preset would not fit its network.
    """

    description: str
    overlays: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exclude: Sequence[str] = ()
    models_dir: str = "models"


PRESETS: dict[str, Preset] = {
    "polyp": Preset("2D RGB polyp segmentation (the repository's configs unchanged)"),
    "prostate": Preset(
        "T2 MRI prostate zones: trained on axial slices, volumes served and evaluated slice by slice",
        overlays={
            "train.json": ["presets/prostate_train.json"],
            "evaluate.json": ["presets/prostate_evaluate.json"],
            "inference.json": ["presets/prostate_inference.json"],
            "metadata.json": ["presets/prostate_metadata.json"],
        },
        models_dir="models/prostate",
    ),
}


def source_root(root: str | os.PathLike | None = None) -> Path:
    """The repository root holding ``configs/metadata.json`` and the ``transfuse_bundle`` package.

    Defaults to the parent of this package, which is the repository for an editable install or a
    bundle folder made by :func:`copy_bundle` (so a bundle folder can copy itself again).
    """
    path = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    for needed in (path / "configs" / "metadata.json", path / PACKAGE_NAME / "__init__.py"):
        if not needed.is_file():
            raise BundleFolderError(
                f"{needed} does not exist: {path} is not a TransFuse bundle source "
                f"(a repository checkout or a bundle folder); pass its path explicitly"
            )
    return path


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (a config); errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise BundleFolderError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise BundleFolderError(f"{path} must hold a JSON object, found {type(content).__name__}")
    return content


def merged_config(files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The config that ``monai.bundle run --config_file "[files...]"`` would see, as a plain dict.

    Uses MONAI's own merge (``ConfigParser.load_config_files``): later files replace top-level keys and
    ``a#b`` keys replace nested items. ``$``/``@``/``%`` expressions are kept as text, not evaluated.
    """
    from monai.bundle import ConfigParser

    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise BundleFolderError(f"config file {p} does not exist")
        read_json_object(p)  # a clear error for broken JSON before MONAI's
    return dict(ConfigParser.load_config_files([str(p) for p in paths]))


def parse_override(text: str) -> tuple[str, Any]:
    """``"ID=JSON"`` -> ``(ID, value)``, the ``--set`` option of the scripts (a non-JSON value stays a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected ID=JSON (e.g. image_size=[128,128]), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _set_id(config: dict[str, Any], id_: str, value: Any) -> bool:
    """Sets ``config[a][b]...`` for the MONAI id ``a#b...`` if the item exists; returns whether it did."""
    keys = id_.split("#")
    node: Any = config
    for k in keys[:-1]:
        if isinstance(node, dict) and k in node:
            node = node[k]
        elif isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        else:
            return False
    last = keys[-1]
    if isinstance(node, dict) and last in node:
        node[last] = value
        return True
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
        return True
    return False


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Writes a config the way the zoo formats them: 4-space indent, final newline."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=4)
        f.write("\n")


def copy_bundle(
    dest: str | os.PathLike,
    preset: str = "polyp",
    overrides: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    include_models: bool = True,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a self-contained bundle folder for ``preset`` at ``dest`` and returns its path.

    Args:
        dest: the bundle folder to create (its name is the bundle/MONAI Label model name).
        preset: a key of :data:`PRESETS`.
        overrides: ``{config id: value}`` set in every JSON config of the copy that already has that id
            (``a#b`` ids reach nested items, e.g. ``{"image_size": [128, 128]}`` or
            ``{"network_data_format#inputs#image#spatial_shape": [128, 128]}``); an id found in no
            config is an error. ``metadata.json``'s spatial shapes follow ``image_size`` automatically.
        weights: a state dict to install as ``models/model.pt`` (else the source's models/ are copied).
        include_models: copy the preset's weights from the source (``Preset.models_dir``: model.pt/ts/onnx,
            large_files.yml) when present.
        source: the repository (or bundle folder) to copy from; default :func:`source_root`.
        overwrite: replace an existing ``dest``; otherwise an existing non-empty ``dest`` is an error.
    """
    if preset not in PRESETS:
        raise BundleFolderError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    src = source_root(source)
    dest = Path(dest).resolve()
    if dest == src or dest in src.parents:
        raise BundleFolderError(f"destination {dest} is the source {src} or contains it")
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise BundleFolderError(f"{dest} exists and is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(dest)
    (dest / "configs").mkdir(parents=True, exist_ok=True)

    # configs: every file of configs/ (not presets/), with the preset's overlays merged in
    src_configs = src / "configs"
    names = sorted({p.name for p in src_configs.iterdir() if p.is_file()} | set(spec.overlays))
    names = [n for n in names if n not in spec.exclude]
    written: dict[str, dict[str, Any]] = {}
    for name in names:
        base = src_configs / name
        overlay_files = [src_configs / o for o in spec.overlays.get(name, ())]
        if not name.endswith(".json"):
            shutil.copy2(base, dest / "configs" / name)
            continue
        files = ([base] if base.is_file() else []) + overlay_files
        if not files:
            raise BundleFolderError(f"preset {preset!r}: {name} has neither a base config nor overlays")
        # a config without overlays is copied as it is: overlays such as evaluate.json only make sense
        # on top of train.json, at run time; an overlay of such an overlay adds or replaces its keys
        if overlay_files and base.is_file() and any("#" in key for key in read_json_object(base)):
            written[name] = {k: v for f in files for k, v in read_json_object(f).items()}
        else:
            written[name] = merged_config(files) if overlay_files else read_json_object(base)

    # overrides, applied where the id exists
    overrides = dict(overrides or {})
    for id_, value in overrides.items():
        hit = [n for n, cfg in written.items() if _set_id(cfg, id_, value)]
        if not hit:
            raise BundleFolderError(f"override {id_!r}: no config of preset {preset!r} has this id ({sorted(written)})")
        logger.info("override %s=%r in %s", id_, value, hit)
    if "image_size" in overrides and "metadata.json" in written:
        fmt = written["metadata.json"].get("network_data_format", {})
        for section in ("inputs", "outputs"):
            for item in fmt.get(section, {}).values():
                if isinstance(item, dict) and "spatial_shape" in item:
                    item["spatial_shape"] = list(overrides["image_size"])
    for name, cfg in written.items():
        write_json(dest / "configs" / name, cfg)

    # package code, docs, licence
    shutil.copytree(src / PACKAGE_NAME, dest / PACKAGE_NAME, ignore=IGNORE, dirs_exist_ok=True)
    for item in DOC_ITEMS:
        path = src / item
        if path.is_dir():
            shutil.copytree(path, dest / item, ignore=IGNORE, dirs_exist_ok=True)
        elif path.is_file():
            shutil.copy2(path, dest / item)
    if not (dest / "LICENSE").is_file():
        raise BundleFolderError(f"{src / 'LICENSE'} is missing: a bundle must ship its licence")

    # weights
    (dest / "models").mkdir(exist_ok=True)
    models_src = src / spec.models_dir
    if include_models and models_src.is_dir():
        for name in MODEL_FILES:
            if (models_src / name).is_file():
                shutil.copy2(models_src / name, dest / "models" / name)
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise BundleFolderError(f"weights file {weights} does not exist")
        shutil.copy2(weights, dest / "models" / "model.pt")
    logger.info("bundle folder %s written (preset %s)", dest, preset)
    return dest


def write_initial_weights(bundle: str | os.PathLike, config: str = "inference.json", seed: int = 0) -> Path:
    """Writes ``models/model.pt`` of ``bundle`` as the untrained (seeded) state dict of its ``network_def``.

    MONAI Label ignores a bundle without weights; with these it serves an untrained model that
    annotators then train through ``/train``. An existing ``model.pt`` is an error: it is never replaced.
    The network is built by this ``transfuse_bundle`` (already imported, so a bundle root on ``sys.path``
    would not change which copy ``_target_`` resolves to); the bundle's configs choose what is built.
    """
    import torch
    from monai.bundle import ConfigParser

    bundle = Path(bundle).resolve()
    target = bundle / "models" / "model.pt"
    if target.exists():
        raise BundleFolderError(f"{target} exists: refusing to replace trained weights with untrained ones")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    if "pretrained" in parser:
        parser["pretrained"] = False  # never download ImageNet weights here
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def", instantiate=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), target)
    return target

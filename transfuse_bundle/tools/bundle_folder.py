"""Self-contained bundle folders: one task of the repository (``configs/tasks/<task>/``) in one folder.

A bundle folder is what MONAI Label's ``monaibundle`` app loads from ``APP/model/NAME`` and what the
model zoo packages as ``NAME/``: ``configs/``, ``models/``, ``docs/README.md`` (the model card),
``docs/data_license.txt``, ``LICENSE`` and, so that the folder works without ``pip install``, the modules of the
``transfuse_bundle`` package that its configs run (:func:`runtime_files`; the configs point at them with
``_target_``; MONAI Label and ``monai.bundle run`` put the bundle root on ``sys.path``).

Its ``train.json``, ``inference.json`` and ``metadata.json`` are the task's configs merged in the order of
:data:`transfuse_bundle.tools.tasks.CHAINS`, exactly as ``monai.bundle run --config_file "[base, overlay, ...]"``
merges them, so the folder needs no overlay at run time; ``evaluate.json`` and ``multi_gpu_train.json``
stay overlays of its ``train.json`` (with the task's own evaluation overlay added), as in any zoo bundle.
``metadata.json``'s network description (shapes, channels, class names) is derived from the configs.

Example::

    from transfuse_bundle.tools.bundle_folder import copy_bundle, write_initial_weights
    copy_bundle("apps/monaibundle/model/transfuse_polyp", task="polyp")
    copy_bundle("/tmp/prostate", task="prostate", overrides={"image_size": [256, 256]})
    write_initial_weights("/tmp/prostate")          # untrained weights, e.g. to train from MONAI Label
"""

from __future__ import annotations

import argparse
import json
import logging
import modulefinder
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..cpu_engine import quantized_files
from ..errors import UserInputError, root_cause
from . import REPOSITORY
from .tasks import CHAINS, TaskError, config_files, config_parser, task_dir

__all__ = [
    "parse_override",
    "read_json_object",
    "write_json",
    "BundleFolderError",
    "source_root",
    "merged_config",
    "copy_bundle",
    "runtime_files",
    "task_configs",
    "serve_with",
    "served_config",
    "describe_network",
    "bundle_network",
    "check_weights_fit",
    "write_initial_weights",
]

logger = logging.getLogger(__name__)

PACKAGE_NAME = "transfuse_bundle"
# what a bundle folder holds besides configs/ and the package (copied when present in the source)
# the model card and the licences; the repository's other documents (experiments, speed logs) stay there
DOC_ITEMS = ("docs/README.md", "docs/data_license.txt", "LICENSE")
MODEL_FILES = ("model.pt", "model.ts", "model.onnx", "large_files.yml", "model.int8.xml", "model.int8.bin",
               "model.int8.json")


class BundleFolderError(UserInputError, RuntimeError):
    """A bundle folder cannot be made; the message names the file or folder and the problem."""


def source_root(root: str | os.PathLike | None = None) -> Path:
    """The repository root holding ``configs/metadata.json`` and the ``transfuse_bundle`` package.

    Defaults to the checkout this package lives in (an editable install).
    """
    path = Path(root) if root is not None else REPOSITORY
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
    """``"ID=JSON"`` -> ``(ID, value)``, the ``--set`` option of the scripts.

    The value must be JSON: a typo such as ``image_size=[256,256`` or Python's ``True`` would otherwise reach
    the configs as a string and fail far from here, or not at all. A string is quoted: ``variant="L"``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected ID=JSON (e.g. image_size=[128,128]), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as e:
        start = value.strip()[:1]
        python = {"True": "true", "False": "false", "None": "null"}.get(value.strip())
        if python:
            hint = f"JSON spells it {python}"
        elif start and (start in '[{"-' or start.isdigit()):
            hint = "check its brackets, quotes and commas"
        else:
            hint = f"quote a string: {key}='\"{value}\"'"
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid JSON ({e.msg}); {hint}") from None


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
    task: str = "polyp",
    overrides: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    include_models: bool = True,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a self-contained bundle folder for ``task`` at ``dest`` and returns its path.

    Args:
        dest: the bundle folder to create (its name is the bundle/MONAI Label model name).
        task: a task of the registry (:func:`transfuse_bundle.tools.tasks.task_names`), e.g. ``"polyp"``.
        overrides: ``{config id: value}`` set in every JSON config of the copy that already has that id
            (``a#b`` ids reach nested items, e.g. ``{"image_size": [128, 128]}``); an id found in no config is
            an error. ``metadata.json``'s network description follows the configs automatically.
        weights: a state dict to install as ``models/model.pt`` (else the source's models/ are copied).
        include_models: copy the source's weights (``models/``: model.pt/ts/onnx, large_files.yml) when present.
        source: the repository checkout to copy from; default :func:`source_root`.
        overwrite: replace an existing ``dest``; otherwise an existing non-empty ``dest`` is an error.
    """
    src = source_root(source)
    try:
        task_dir(task, src)
    except TaskError as e:
        raise BundleFolderError(str(e)) from None
    dest = Path(dest).resolve()
    if dest == src or dest in src.parents:
        raise BundleFolderError(f"destination {dest} is the source {src} or contains it")
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise BundleFolderError(f"{dest} exists and is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(dest)
    (dest / "configs").mkdir(parents=True, exist_ok=True)
    written = _write_configs(dest, task, src, overrides)
    # the code the configs run, the model card, the licence
    for path in [*runtime_files(written.values(), src), *(Path(item) for item in DOC_ITEMS if (src / item).is_file())]:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / path, dest / path)
    if not (dest / "LICENSE").is_file():
        raise BundleFolderError(f"{src / 'LICENSE'} is missing: a bundle must ship its licence")
    _copy_weights(dest, src, weights, include_models)
    logger.info("bundle folder %s written (task %s)", dest, task)
    return dest


def _write_configs(dest: Path, task: str, src: Path, overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Writes ``dest/configs/``: the task's configs (:func:`task_configs`) with ``overrides`` set, the metadata's
    network description derived from them, and ``logging.conf``; returns the JSON configs written."""
    written = task_configs(task, src)
    for id_, value in dict(overrides or {}).items():
        hit = [n for n, cfg in written.items() if _set_id(cfg, id_, value)]
        if not hit:
            raise BundleFolderError(f"override {id_!r}: no config of task {task!r} has this id ({sorted(written)})")
        logger.info("override %s=%r in %s", id_, value, hit)
    describe_network(written["metadata.json"], written["train.json"], written["inference.json"])
    for name, cfg in written.items():
        write_json(dest / "configs" / name, cfg)
    for path in (src / "configs").iterdir():  # logging.conf
        if path.is_file() and path.suffix != ".json":
            shutil.copy2(path, dest / "configs" / path.name)
    return written


def _copy_weights(dest: Path, src: Path, weights: str | os.PathLike | None, include_models: bool) -> None:
    """``dest/models/``: the source's weight files (``include_models``), then ``weights`` as ``model.pt``."""
    (dest / "models").mkdir(exist_ok=True)
    if include_models and (src / "models").is_dir():
        for name in MODEL_FILES:
            if (src / "models" / name).is_file():
                shutil.copy2(src / "models" / name, dest / "models" / name)
    if weights is not None:
        if not Path(weights).is_file():
            raise BundleFolderError(f"weights file {weights} does not exist")
        shutil.copy2(weights, dest / "models" / "model.pt")
        # an INT8 model belongs to the weights it was quantized from: the one beside the given weights, if any
        for made, shipped in zip(quantized_files(weights), quantized_files(dest / "models" / "model.pt")):
            shipped.unlink(missing_ok=True)
            if made.is_file():
                shutil.copy2(made, shipped)


def serve_with(bundle: str | os.PathLike, overlay: str) -> Path:
    """Merges the bundle folder's ``configs/OVERLAY`` (e.g. ``inference_cpu.json``) into its ``inference.json``, the
    config that ``monai.bundle run --config_file configs/inference.json`` and MONAI Label serve; returns ``bundle``."""
    configs = Path(bundle) / "configs"
    for path in (configs / "inference.json", configs / overlay):
        if not path.is_file():
            raise BundleFolderError(f"cannot serve {Path(bundle).name} with {overlay}: {path} does not exist")
    write_json(configs / "inference.json", merged_config([configs / "inference.json", configs / overlay]))
    return Path(bundle)


def runtime_files(configs: Iterable[Mapping[str, Any]], source: str | os.PathLike | None = None) -> list[Path]:
    """The files of the ``transfuse_bundle`` package that ``configs`` run, relative to the source root, sorted.

    They are the modules the configs name (``imports``, ``_target_`` and ``$`` expressions), the modules those
    import, found by the standard library's :class:`modulefinder.ModuleFinder` (imports inside functions
    included), and their packages' ``__init__.py``: the tools (``tools/``) and the MONAI Label integration
    (``monailabel/``) are not among them, so a bundle ships only its runtime code."""
    src = source_root(source)
    names = set(re.findall(rf"\b{PACKAGE_NAME}(?:\.\w+)*", json.dumps(list(configs))))
    finder = modulefinder.ModuleFinder(path=[str(src)])  # only this package is searched: nothing else is scanned
    for name in sorted(names):
        parts = name.split(".")
        while parts and not any((src.joinpath(*parts).with_suffix(".py").is_file(),
                                 (src.joinpath(*parts) / "__init__.py").is_file())):
            parts.pop()  # transfuse_bundle.data.to_mask -> the module transfuse_bundle.data
        finder.import_hook(".".join(parts))
    files = {Path(m.__file__).resolve().relative_to(src.resolve()) for n, m in finder.modules.items()
             if n.split(".")[0] == PACKAGE_NAME and m.__file__}
    return sorted(files)


#: the bundle configs that hold their whole chain merged; evaluate.json and multi_gpu_train.json stay overlays of
#: the bundle's train.json, as in the zoo's bundles
MERGED_CONFIGS = ("train.json", "inference.json", "metadata.json")
#: the ids of inference.json that MONAI (``InferProperties``), MONAI Label's ``monaibundle`` app and the run lists
#: read: :func:`served_config` keeps them and what they refer to
SERVED_IDS = ("imports", "initialize", "run", "finalize", "bundle_root", "device", "dataset_dir", "dataset",
              "evaluator", "network_def", "network", "inferer", "handlers", "preprocessing", "postprocessing",
              "key_metric", "displayable_configs")
_REFERENCE = re.compile(r"[@%]([A-Za-z_]\w*)")  # MONAI's @id / %id (a#b: the top-level id a)


def _referenced_ids(value: Any) -> set[str]:
    """The top-level ids that ``@`` references and ``%`` macros in ``value`` (any nesting) name."""
    if isinstance(value, str):
        return set(_REFERENCE.findall(value))
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(*map(_referenced_ids, items)) if items else set()


def served_config(config: Mapping[str, Any], overlays: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The merged inference chain ``config`` without what serving never reaches (the optimizer, the training
    data, the trainer...): the ids of :data:`SERVED_IDS`, those that ``overlays`` (the bundle's
    ``inference_*.json``) refer to, and every id they refer to in turn, in ``config``'s order."""
    wanted = set(SERVED_IDS).union(*map(_referenced_ids, overlays))
    kept: set[str] = set()
    while wanted - kept:
        new = {i for i in wanted - kept if i in config}
        kept |= wanted - kept
        wanted |= set().union(*(_referenced_ids(config[i]) for i in new)) if new else set()
    return {k: v for k, v in config.items() if k in kept}


def task_configs(task: str, source: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """``{file name: config}`` of the bundle folder of ``task``, every JSON file of ``configs/``:

    * :data:`MERGED_CONFIGS` are their chains merged (:func:`transfuse_bundle.tools.tasks.config_files`),
      inference.json without what serving never reaches (:func:`served_config`);
    * evaluate.json and multi_gpu_train.json stay overlays of the bundle's train.json: the keys of the files of
      their chains after train.json's chain, in that order;
    * any other JSON file (an overlay such as ``inference_torchscript.json``) is copied as it is.
    """
    src = source_root(source)
    configs: dict[str, dict[str, Any]] = {}
    train_chain = config_files("train.json", task, src)
    for path in sorted((src / "configs").glob("*.json")):
        if path.name in MERGED_CONFIGS:
            configs[path.name] = merged_config(config_files(path.name, task, src))
        elif path.name in CHAINS:
            overlays = [f for f in config_files(path.name, task, src) if f not in train_chain]
            configs[path.name] = {k: v for f in overlays for k, v in read_json_object(f).items()}
        else:
            configs[path.name] = read_json_object(path)
    inference_overlays = [c for name, c in configs.items() if name.startswith("inference_")]
    configs["inference.json"] = served_config(configs["inference.json"], inference_overlays)
    return configs


def describe_network(metadata: dict[str, Any], train: Mapping[str, Any], inference: Mapping[str, Any]) -> None:
    """Sets ``metadata``'s ``network_data_format`` from the configs' plain values, so that it cannot contradict
    them: input/output spatial shapes (``image_size``), channel counts (``in_channels``/``out_channels``) and
    the output channels' names (``class_names``)."""
    fmt = metadata.get("network_data_format", {})
    image, pred = fmt.get("inputs", {}).get("image"), fmt.get("outputs", {}).get("pred")
    size, names = inference.get("image_size"), train.get("class_names")
    for item, channels in ((image, inference.get("in_channels")), (pred, inference.get("out_channels"))):
        if not isinstance(item, dict):
            continue
        if isinstance(size, list):
            item["spatial_shape"] = list(size)
        if isinstance(channels, int):
            item["num_channels"] = channels
    if isinstance(pred, dict) and isinstance(names, list):
        pred["channel_def"] = {str(i): name for i, name in enumerate(names)}


def bundle_network(bundle: str | os.PathLike, config: str = "inference.json",
                   overrides: Mapping[str, Any] | None = None) -> Any:
    """The untrained ``network_def`` of a bundle folder's ``config`` with ``overrides`` (``{id: value}``;
    ``pretrained`` off: nothing is downloaded).

    It is built by this ``transfuse_bundle`` (already imported, so a bundle root on ``sys.path`` would not
    change which copy ``_target_`` resolves to); the bundle's configs choose what is built."""
    bundle = Path(bundle).resolve()
    parser = config_parser(config, source=bundle, bundle_root=str(bundle), **dict(overrides or {}))
    if "pretrained" in parser:
        parser["pretrained"] = False  # never download ImageNet weights here
    try:
        return parser.get_parsed_content("network_def", instantiate=True)
    except Exception as e:  # MONAI wraps the network's own ValueError (e.g. an image size it cannot take)
        raise BundleFolderError(f"{bundle / 'configs' / config}: network_def cannot be built: {root_cause(e)}") from None


def check_weights_fit(bundle: str | os.PathLike, weights: str | os.PathLike,
                      overrides: Mapping[str, Any] | None = None) -> None:
    """Raises :class:`BundleFolderError` unless the state dict ``weights`` loads strictly into the network of
    the bundle folder's ``inference.json`` (with ``overrides``; :func:`~transfuse_bundle.weights.raise_misfit`: the
    message names the file, the config and what differs), so that weights of another task, size or class count are
    refused before they are shipped, served or exported."""
    from ..weights import WeightsFileError, load_weights, raise_misfit

    try:
        raise_misfit(bundle_network(bundle, overrides=overrides), load_weights(weights, "weights"), str(weights),
                     f"the network of {Path(bundle).name}/configs/inference.json")
    except WeightsFileError as e:
        raise BundleFolderError(str(e)) from None


def write_initial_weights(bundle: str | os.PathLike, config: str = "inference.json", seed: int = 0) -> Path:
    """Writes ``models/model.pt`` of ``bundle`` as the untrained (seeded) state dict of its ``network_def``.

    MONAI Label ignores a bundle without weights; with these it serves an untrained model that
    annotators then train through ``/train``. An existing ``model.pt`` is an error: it is never replaced.
    """
    import torch

    bundle = Path(bundle).resolve()
    target = bundle / "models" / "model.pt"
    if target.exists():
        raise BundleFolderError(f"{target} exists: refusing to replace trained weights with untrained ones")
    torch.manual_seed(seed)
    network = bundle_network(bundle, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), target)
    return target

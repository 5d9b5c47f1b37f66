"""Model-zoo distribution: the bundle as ``dist/<name>_v<version>.zip``, TorchScript/ONNX exports.

A package is the self-contained bundle folder of :func:`transfuse_bundle.tools.bundle_folder.copy_bundle` (configs
with the task merged in, the ``transfuse_bundle`` modules they run, the model card, ``LICENSE``) zipped with its top
folder ``<name>/``, the layout ``python -m monai.bundle download --name NAME --url URL`` extracts. Weights
travel either inside (``models/model.pt``) or, with ``large_files_url``, next to the zip: the files are
written to ``dist/`` as ``<name>_v<version>_<file>`` for upload, and the zip holds ``large_files.yml``
(path, url, sha256) that ``python -m monai.bundle download_large_files`` reads.

Exports use MONAI's own commands on the bundle folder, with the packaged weights:

* ``models/model.ts``: ``python -m monai.bundle ckpt_export network_def ...`` (``torch.jit.script``, the
  mode the zoo CI checks; metadata and configs are embedded in the file);
* ``models/model.onnx``: ``python -m monai.bundle onnx_export network_def ...`` (torch's dynamo exporter;
  fixed input shape ``[1, C, H, W]`` from ``metadata.json``, input ``image``, output ``pred``).

The exports are made only from the weights being packaged, never copied from elsewhere, so a package
cannot ship a ``model.ts`` of other weights.

Example::

    from transfuse_bundle.tools.packaging import package_bundle
    package = package_bundle("polyp", out="dist", weights="models/model.pt", export=True)
    package_bundle("hip", out="dist", init_weights=True)   # untrained weights of the hip network
    print(package.zip_path)      # dist/transfuse_polyp_v0.1.0.zip
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..files import atomic_file, sha256, write_text_atomically
from .bundle_folder import (BundleFolderError, check_weights_fit, copy_bundle, read_json_object, serve_with,
                            source_root, write_initial_weights, write_json)
from .tasks import TaskError, config_file_option, task_dir
from ..weights import WeightsFileError, load_weights

__all__ = [
    "PackagingError",
    "Package",
    "REQUIRED_FILES",
    "EXPORT_FILES",
    "bundle_name",
    "sha256",
    "bundle_env",
    "cli_arguments",
    "export_commands",
    "export_models",
    "write_large_files",
    "zip_bundle",
    "CHECKSUM_SUFFIX",
    "write_checksum",
    "package_bundle",
    "make_torchscript_only",
]

logger = logging.getLogger(__name__)

# what the model zoo and this project's users expect in every package (models/model.pt: inside, or after
# `download_large_files`)
REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/inference.json",
    "docs/README.md",
    "docs/data_license.txt",
)
EXPORT_FILES = {"ts": "model.ts", "onnx": "model.onnx"}
WEIGHT_FILES = ("model.pt", "model.ts", "model.onnx")  # what goes to large_files.yml, in this order
STORED_SUFFIXES = (".pt", ".ts", ".onnx")  # zipped without compression (weights barely compress)
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
CHECKSUM_SUFFIX = ".sha256"  # dist/X.zip.sha256, published beside the zip


class PackagingError(BundleFolderError):
    """A package or export cannot be made; the message names the file and the problem."""


@dataclass
class Package:
    """What :func:`package_bundle` wrote.

    Attributes:
        zip_path: ``out/<name>_v<version>.zip``.
        checksum_path: ``out/<name>_v<version>.zip.sha256`` (``sha256sum`` format), to publish beside the zip.
        name, version: the bundle name (the zip's top folder) and the metadata version.
        large_files: ``{path in the bundle: file written next to the zip for upload}`` (large-files mode).
        large_files_entries: the entries of ``large_files.yml`` (path, url, hash_val, hash_type).
    """

    zip_path: Path
    name: str
    version: str
    large_files: dict[str, Path] = field(default_factory=dict)
    large_files_entries: list[dict[str, str]] = field(default_factory=list)
    checksum_path: Path | None = None


def bundle_name(task: str) -> str:
    """The default bundle name of a task: ``transfuse_<task>`` (e.g. ``transfuse_polyp``)."""
    return f"transfuse_{task}"


def bundle_env(bundle: str | os.PathLike, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which the bundle folder's own ``transfuse_bundle`` copy is importable first.

    MONAI puts the bundle root on ``sys.path`` only in ``ConfigWorkflow.run()``, after the config's imports
    were resolved, so commands run from outside the bundle folder need ``PYTHONPATH=<bundle root>``.
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(bundle).resolve())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def cli_arguments(overrides: Mapping[str, Any]) -> list[str]:
    """``{ID: value}`` -> ``["--ID", "text", ...]`` for ``python -m monai.bundle``, the inverse of
    :func:`~transfuse_bundle.tools.bundle_folder.parse_override`: strings as they are, other values as JSON
    (which MONAI's CLI reads back as Python literals)."""
    return [text for key, value in overrides.items()
            for text in (f"--{key}", value if isinstance(value, str) else json.dumps(value))]


def export_commands(
    bundle: str | os.PathLike,
    formats: Sequence[str] = ("ts", "onnx"),
    overrides: Mapping[str, Any] | None = None,
    python: str | None = None,
) -> list[list[str]]:
    """The ``python -m monai.bundle ckpt_export|onnx_export`` command lines for ``bundle`` (run in its root)."""
    unknown = [f for f in formats if f not in EXPORT_FILES]
    if unknown:
        raise PackagingError(f"unknown export format(s) {unknown}; expected some of {sorted(EXPORT_FILES)}")
    common = ["--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json",
              "--config_file", config_file_option("inference.json", source=bundle), *cli_arguments(overrides or {})]
    exe = python or sys.executable
    commands = []
    for fmt in formats:
        filepath = f"models/{EXPORT_FILES[fmt]}"
        if fmt == "ts":
            commands.append([exe, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", filepath, *common])
        else:
            commands.append([exe, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", filepath, *common,
                             "--converter_kwargs", "{'input_names': ['image'], 'output_names': ['pred']}"])
    return commands


def export_models(
    bundle: str | os.PathLike,
    formats: Sequence[str] = ("ts", "onnx"),
    overrides: Mapping[str, Any] | None = None,
    python: str | None = None,
    timeout: float = 3600,
) -> dict[str, Path]:
    """Writes ``models/model.ts`` and/or ``models/model.onnx`` of a bundle folder from its ``models/model.pt``.

    Runs MONAI's CLI (:func:`export_commands`) in the bundle root with the bundle's own ``transfuse_bundle``
    first on ``PYTHONPATH``. Returns ``{format: written file}``; a failing command raises
    :class:`PackagingError` with its output.

    Args:
        bundle: a bundle folder (the repository root works too).
        formats: ``"ts"`` (TorchScript, script mode) and/or ``"onnx"``.
        overrides: config ids for the export, e.g. ``{"image_size": [256, 256]}``.
        python: the interpreter with MONAI (default: this one).
        timeout: seconds per command.
    """
    bundle = Path(bundle).resolve()
    weights = bundle / "models" / "model.pt"
    for needed in (weights, bundle / "configs" / "inference.json", bundle / "configs" / "metadata.json"):
        if not needed.is_file():
            raise PackagingError(f"cannot export: {needed} does not exist")
    # before an export replaces anything: weights of another size, task or class count failed deep in MONAI's
    # export, after the previous model.ts had been removed
    check_weights_fit(bundle, weights, overrides)
    written = {}
    # MONAI's onnx_export exports to a temporary file first and leaves that file's external weights
    # (<tmp>.data, the size of model.pt) in the temporary folder: give it one that is removed afterwards
    with tempfile.TemporaryDirectory(prefix="transfuse-export-") as scratch:
        env = {**bundle_env(bundle), "TMPDIR": scratch}
        for fmt, cmd in zip(formats, export_commands(bundle, formats, overrides, python)):
            target = bundle / "models" / EXPORT_FILES[fmt]
            target.unlink(missing_ok=True)  # never leave an export of other weights behind a failed run
            logger.info("export %s: %s", fmt, " ".join(cmd))
            proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0 or not target.is_file():
                raise PackagingError(
                    f"export to {target} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
                )
            written[fmt] = target
    return written


def write_large_files(bundle: str | os.PathLike, out: str | os.PathLike, base_url: str, prefix: str) -> tuple[dict[str, Path], list[dict[str, str]]]:
    """Moves the bundle's weights (model.pt/ts/onnx) to ``out/<prefix>_<file>`` and writes ``large_files.yml``.

    Each entry has ``path`` (relative to the bundle root), ``url`` (``base_url/<prefix>_<file>``: upload the
    file there), ``hash_val`` (sha256) and ``hash_type`` — the format ``monai.bundle download_large_files``
    reads. Returns ``({path: moved file}, entries)``.
    """
    import yaml

    bundle, out = Path(bundle), Path(out)
    if not re.match(r"^[a-z][a-z0-9+.-]*://", base_url):
        raise PackagingError(f"large-files URL {base_url!r} must be absolute, e.g. https://host/path")
    moved: dict[str, Path] = {}
    entries: list[dict[str, str]] = []
    for name in WEIGHT_FILES:
        src = bundle / "models" / name
        if not src.is_file():
            continue
        dest = out / f"{prefix}_{name}"
        shutil.move(str(src), str(dest))
        path = f"models/{name}"
        moved[path] = dest
        entries.append({"path": path, "url": f"{base_url.rstrip('/')}/{dest.name}", "hash_val": sha256(dest), "hash_type": "sha256"})
    if not entries:
        raise PackagingError(f"{bundle / 'models'} has no weights to list in large_files.yml")
    with open(bundle / "large_files.yml", "w", encoding="utf-8") as f:
        yaml.safe_dump({"large_files": entries}, f, sort_keys=False)
    return moved, entries


def zip_bundle(bundle: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zips the folder ``bundle`` as ``zip_path`` with the top folder ``<bundle name>/`` (sorted, reproducible
    order; weights stored, text deflated), written whole or not at all (:func:`~transfuse_bundle.files.atomic_file`)."""
    bundle, zip_path = Path(bundle), Path(zip_path)
    with atomic_file(zip_path) as file, zipfile.ZipFile(file, "w") as zf:
        for path in sorted(bundle.rglob("*")):
            arcname = f"{bundle.name}/{path.relative_to(bundle).as_posix()}"
            if path.is_dir():
                if not any(path.iterdir()):
                    zf.writestr(arcname + "/", b"")  # keep empty folders such as models/
                continue
            method = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            zf.write(path, arcname, compress_type=method)
    return zip_path


def write_checksum(path: str | os.PathLike) -> Path:
    """Writes ``PATH.sha256``: one line ``<sha256>  <file name>`` (what ``sha256sum -c`` and
    :func:`transfuse_bundle.tools.download.download_zip` read), so a download can be checked before it is opened."""
    path = Path(path)
    checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
    write_text_atomically(checksum, f"{sha256(path)}  {path.name}\n")
    return checksum


def package_bundle(
    task: str = "polyp",
    out: str | os.PathLike = "dist",
    weights: str | os.PathLike | None = None,
    version: str | None = None,
    name: str | None = None,
    large_files_url: str | None = None,
    export: bool = False,
    overrides: Mapping[str, Any] | None = None,
    source: str | os.PathLike | None = None,
    schema: str | os.PathLike | None = None,
    init_weights: bool = False,
) -> Package:
    """Writes ``out/<name>_v<version>.zip`` (top folder ``<name>/``) and its ``.zip.sha256``; returns what was written.

    Args:
        task: a task of the registry (:func:`transfuse_bundle.tools.tasks.task_names`).
        out: the output folder (created).
        weights: the state dict to ship as ``models/model.pt``; default: ``models/model.pt`` of the source
            (what training writes there). It must fit the task's network (checked before anything is written).
        version: the version to publish; it must be a key of ``changelog`` in ``metadata.json`` (the zoo
            requires it) and is written to the package's metadata. Default: the metadata's version.
        name: the bundle name; default ``transfuse_<task>``.
        large_files_url: if given, the weights are not zipped: they are written next to the zip as
            ``<name>_v<version>_<file>`` to be uploaded to this URL (a folder), and ``large_files.yml``
            lists their URLs and sha256.
        export: also write ``models/model.ts`` (TorchScript, ``ckpt_export``) and ``models/model.onnx``
            (``onnx_export``) from the packaged weights.
        overrides: config ids set in every config of the package (see ``copy_bundle``), e.g. a smaller
            ``image_size``.
        source: the repository to package (default: the one this package lives in).
        schema: a local copy of the metadata schema: if given, the package's metadata is verified against
            it with ``monai.bundle.verify_metadata`` before zipping.
        init_weights: ship untrained (seeded) weights of the task's network instead of ``weights``, for
            tests and for users who will train the bundle from MONAI Label.
    """
    src = source_root(source)
    try:
        task_dir(task, src)
    except TaskError as e:
        raise PackagingError(str(e)) from None
    name = name or bundle_name(task)
    if not NAME_PATTERN.match(name):
        raise PackagingError(f"bad bundle name {name!r}: use letters, digits and underscores, starting with a letter")
    weights = _weights_to_ship(src, weights, init_weights)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=".staging_", dir=out) as staging:
        # exports are made from these weights below, never copied from the source's models/
        bundle = copy_bundle(Path(staging) / name, task=task, overrides=overrides, weights=weights,
                             include_models=False, source=src)
        meta_path = bundle / "configs" / "metadata.json"
        version = _set_version(meta_path, version, src)
        missing = [f for f in REQUIRED_FILES if not (bundle / f).is_file()]
        if missing:
            raise PackagingError(f"the package of {src} would lack {missing}: add them to the repository")
        if schema is not None:
            _verify_metadata(meta_path, Path(schema))
        # the network is built only after the cheap checks above
        if init_weights:
            write_initial_weights(bundle)
        else:
            try:
                check_weights_fit(bundle, weights)
            except BundleFolderError as e:
                raise PackagingError(str(e)) from None
        if export:
            export_models(bundle)

        stem = f"{name}_v{version}"
        package = Package(zip_path=out / f"{stem}.zip", name=name, version=version)
        if large_files_url:
            package.large_files, package.large_files_entries = write_large_files(bundle, out, large_files_url, stem)
        zip_bundle(bundle, package.zip_path)
        package.checksum_path = write_checksum(package.zip_path)
    logger.info("package %s written", package.zip_path)
    return package


def _weights_to_ship(src: Path, weights: str | os.PathLike | None, init_weights: bool) -> Path | None:
    """The weights file to package (default: the source's ``models/model.pt``), checked to be a readable plain
    state dict; None with ``init_weights``."""
    if init_weights and weights is not None:
        raise PackagingError("pass either weights or init_weights, not both")
    if init_weights:
        return None
    weights = Path(weights) if weights is not None else src / "models" / "model.pt"
    if not weights.is_file():
        raise PackagingError(
            f"weights file {weights} {'is not a file' if weights.exists() else 'does not exist'}: train the bundle "
            f"first (models/model.pt), pass --weights FILE or --init-weights")
    try:  # never ship a file that users' torch.load would refuse (pickled code) or could not read
        load_weights(weights, "weights to package")
    except WeightsFileError as e:
        raise PackagingError(str(e)) from None
    return weights


def _set_version(meta_path: Path, version: str | None, src: Path) -> str:
    """The version to publish (default: the metadata's), written into ``meta_path``; it must be a key of the
    metadata's ``changelog``, as the model zoo requires."""
    meta = read_json_object(meta_path)
    version = version or meta.get("version")
    if not version:
        raise PackagingError(f"{meta_path} has no version and none was given")
    if version not in meta.get("changelog", {}):
        raise PackagingError(f"version {version!r} is not a key of 'changelog' in {src / 'configs' / 'metadata.json'}: "
                             f"add a changelog entry for it (the model zoo requires one)")
    if meta.get("version") != version:
        meta["version"] = version
        write_json(meta_path, meta)
    return version


def _verify_metadata(meta_path: Path, schema: Path) -> None:
    """Runs ``monai.bundle.verify_metadata`` against a local schema copy (it would download to a missing path)."""
    from monai.bundle import verify_metadata

    if not schema.is_file():
        raise PackagingError(f"schema file {schema} does not exist (verify_metadata would try to download it there)")
    try:
        verify_metadata(meta_file=str(meta_path), filepath=str(schema))
    except Exception as e:  # jsonschema's ValidationError and friends
        raise PackagingError(f"{meta_path} is not valid against {schema}: {e}") from e


def make_torchscript_only(bundle: str | os.PathLike) -> Path:
    """Turns a bundle folder with ``models/model.ts`` into one that is served from the TorchScript file alone.

    Its ``inference.json`` gets the overlay ``configs/inference_torchscript.json`` merged in (``network_def``
    becomes ``torch.jit.load`` of ``models/model.ts``, without the ``CheckpointLoader``), like the model zoo's
    ``inference_trt.json``; ``models/model.pt`` and the training configs (which need the Python network)
    are removed. Returns ``bundle``.
    """
    bundle = Path(bundle)
    configs = bundle / "configs"
    needed = (bundle / "models" / "model.ts", configs / "inference.json", configs / "inference_torchscript.json")
    for path in needed:
        if not path.is_file():
            raise PackagingError(f"cannot make a TorchScript-only bundle: {path} does not exist")
    serve_with(bundle, "inference_torchscript.json")
    (bundle / "models" / "model.pt").unlink(missing_ok=True)
    for name in ("train.json", "evaluate.json", "multi_gpu_train.json"):
        (configs / name).unlink(missing_ok=True)
    return bundle

"""The task registry: one folder of config overlays per task, ``configs/tasks/<task>/``.

The folder names are the task names and nothing else lists them: training, evaluation, inference,
packaging (:mod:`transfuse_bundle.tools.packaging`), MONAI Label (:mod:`transfuse_bundle.monailabel.app`),
the docs and the tests all read them from here. Adding a task means adding a folder with a ``task.json``.

A task folder holds MONAI bundle overlays, merged the way ``python -m monai.bundle run --config_file
"[a, b, ...]"`` merges them (later files replace top-level keys, ``a#b`` keys replace nested items):

==============  ====================================================================================
task.json       required: what the task is (image size, channels, class names, spatial dims) and how its
                images are read and preprocessed; on every config of the task
train.json      training settings (batch size, epochs, multi-scale, augmentation by name)
evaluate.json   evaluation, on top of the training config and ``configs/evaluate.json``
inference.json  serving, on top of the training config and ``configs/inference.json``
metadata.json   the bundle metadata (name, task, description, data source)
==============  ====================================================================================

``configs/train.json`` is the one home of what training and serving share: the network, the precision
(``amp_dtype``), the reading and preprocessing of an image, the inferer. Evaluation and inference are overlays
on the training chain, so the served network and preprocessing are the trained ones by construction. A
packaged bundle folder holds each chain merged (:mod:`transfuse_bundle.tools.bundle_folder`), as the zoo's do.

:func:`config_files` gives the merge order of each config, e.g. for the prostate evaluation::

    configs/train.json, tasks/prostate/task.json, tasks/prostate/train.json,
    configs/evaluate.json, tasks/prostate/evaluate.json

:func:`config_parser` and :func:`config_workflow` are the one way to build a task's parser or workflow, from
the repository or from a bundle folder; ``python -m transfuse_bundle.tools.tasks`` prints every task with its
bundle commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import UserInputError
from . import REPOSITORY

if TYPE_CHECKING:
    from monai.bundle import ConfigParser, ConfigWorkflow

__all__ = ["TASK_DIR", "TASK_FILE", "CHAINS", "BUNDLE_CHAINS", "WORKFLOW_TYPES", "TaskError", "task_names", "task_dir",
           "is_repository", "config_files", "config_parser", "config_workflow", "config_file_option", "commands"]

TASK_DIR = Path("configs") / "tasks"
TASK_FILE = "task.json"
_TASK = "TASK/"
_TRAIN = ("train.json", "TASK/task.json", "TASK/train.json")
#: for each config of a task in the repository, the files merged into it in order: ``TASK/x`` is the task
#: folder's ``x`` (skipped when the task has none), anything else a file of ``configs/``.
CHAINS: dict[str, tuple[str, ...]] = {
    "train.json": _TRAIN,
    "evaluate.json": (*_TRAIN, "evaluate.json", "TASK/evaluate.json"),
    "multi_gpu_train.json": (*_TRAIN, "multi_gpu_train.json"),
    "inference.json": (*_TRAIN, "inference.json", "TASK/inference.json"),
    "metadata.json": ("metadata.json", "TASK/metadata.json"),
}
#: the same in a bundle folder, whose train.json, inference.json and metadata.json are their chains merged
BUNDLE_CHAINS: dict[str, tuple[str, ...]] = {
    "train.json": ("train.json",),
    "evaluate.json": ("train.json", "evaluate.json"),
    "multi_gpu_train.json": ("train.json", "multi_gpu_train.json"),
    "inference.json": ("inference.json",),
    "metadata.json": ("metadata.json",),
}
#: the MONAI workflow type of each config
WORKFLOW_TYPES = {"train.json": "train", "evaluate.json": "train", "multi_gpu_train.json": "train",
                  "inference.json": "infer"}
#: the files a task folder may hold
TASK_CONFIGS = frozenset(c.removeprefix(_TASK) for chain in CHAINS.values() for c in chain if c.startswith(_TASK))


class TaskError(UserInputError, ValueError):
    """An unknown task or a malformed task folder; the message names the folder or file."""


def _root(source: str | os.PathLike | None) -> Path:
    """``source``, a repository or a bundle folder; default: the checkout this package lives in."""
    return Path(source) if source is not None else REPOSITORY


def task_names(source: str | os.PathLike | None = None) -> list[str]:
    """The tasks of the repository ``source`` (default: the one this package lives in), sorted."""
    folder = _root(source) / TASK_DIR
    return sorted(p.name for p in folder.iterdir() if (p / TASK_FILE).is_file()) if folder.is_dir() else []


def task_dir(task: str, source: str | os.PathLike | None = None) -> Path:
    """The folder of ``task``, checked: it exists, has ``task.json`` and holds no file the chains ignore."""
    names = task_names(source)
    if task not in names:
        raise TaskError(f"unknown task {task!r}: expected one of {names} (folders of {_root(source) / TASK_DIR})")
    folder = _root(source) / TASK_DIR / task
    unknown = sorted(p.name for p in folder.iterdir() if p.name not in TASK_CONFIGS)
    if unknown:
        raise TaskError(f"{folder}: unexpected {unknown}; a task folder holds only {sorted(TASK_CONFIGS)}")
    return folder


def is_repository(source: str | os.PathLike | None = None) -> bool:
    """Whether ``source`` is a repository checkout (it has task folders), not a bundle folder."""
    return (_root(source) / TASK_DIR).is_dir()


def config_files(config: str, task: str | None = None, source: str | os.PathLike | None = None) -> list[Path]:
    """The files merged, in order, into the bundle config ``config`` (e.g. ``"evaluate.json"``) of ``task``.

    ``source`` is the repository (default) or a bundle folder (:data:`BUNDLE_CHAINS`; it has no tasks, so
    ``task`` must be None). ``task=None`` in the repository gives its own configs without a task (the synthetic
    default).
    """
    if config not in CHAINS:
        raise TaskError(f"unknown bundle config {config!r}: expected one of {sorted(CHAINS)}")
    root = _root(source)
    if not is_repository(source):
        if task is not None:
            raise TaskError(f"{root} is a bundle folder (no {TASK_DIR}): its configs are its one task's")
        return [root / "configs" / name for name in BUNDLE_CHAINS[config]]
    folder = task_dir(task, source) if task is not None else None
    files = []
    for name in CHAINS[config]:
        if not name.startswith(_TASK):
            files.append(root / "configs" / name)
        elif folder is not None and (folder / name.removeprefix(_TASK)).is_file():
            files.append(folder / name.removeprefix(_TASK))
    return files


def _with_overlays(config: str, task: str | None, overlays: Sequence[str | os.PathLike],
                   source: str | os.PathLike | None) -> list[str]:
    """The chain of ``config`` then ``overlays`` (relative to the source root, or absolute), as strings."""
    root = _root(source)
    return [str(f) for f in config_files(config, task, source)] + [str(root / f) for f in overlays]


def config_parser(config: str, task: str | None = None, overlays: Sequence[str | os.PathLike] = (),
                  source: str | os.PathLike | None = None, **overrides: Any) -> ConfigParser:
    """MONAI's ``ConfigParser`` of ``config`` of ``task`` (:func:`config_files`), then ``overlays`` (e.g.
    ``["configs/options/sliding_window.json"]``), then ``overrides`` (``{id: value}``), merged as
    ``python -m monai.bundle run --config_file "[...]" --id value`` merges them. Nothing is evaluated yet."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_with_overlays(config, task, overlays, source))
    parser.update(overrides)
    return parser


def config_workflow(config: str, task: str | None = None, overlays: Sequence[str | os.PathLike] = (),
                    source: str | os.PathLike | None = None, **overrides: Any) -> ConfigWorkflow:
    """MONAI's ``ConfigWorkflow`` of ``config`` of ``task`` (as :func:`config_parser`), what ``python -m
    monai.bundle run`` builds: the task's merged metadata, the bundle's ``logging.conf``, the workflow type of
    ``config`` (:data:`WORKFLOW_TYPES`). Call ``initialize()``, ``run()``, ``finalize()``."""
    from monai.bundle import ConfigWorkflow

    files = _with_overlays(config, task, overlays, source)
    workflow = ConfigWorkflow(config_file=files, meta_file=[str(f) for f in config_files("metadata.json", task, source)],
                              logging_file=str(_root(source) / "configs" / "logging.conf"),
                              workflow_type=WORKFLOW_TYPES[config], **overrides)
    workflow.config_files = files  # the ids they define are the known ones (transfuse_bundle.checks.check_config)
    return workflow


def config_file_option(config: str, task: str | None = None, source: str | os.PathLike | None = None,
                       overlays: Sequence[str | os.PathLike] = ()) -> str:
    """The ``--config_file`` value for ``monai.bundle run`` (the chain of :func:`config_parser`), with paths
    relative to the source root when they are inside it."""
    root = _root(source).resolve()
    files = [Path(f).resolve() for f in _with_overlays(config, task, overlays, source)]
    files = [f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f) for f in files]
    return files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"


def commands(task: str | None, source: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"training", "evaluating", "inference"}`` -> the ``python -m monai.bundle run`` command of ``task``."""
    # MONAI finds configs/metadata.json and configs/logging.conf next to the first config file
    run = "python -m monai.bundle run"

    def option(config: str) -> str:
        files = config_file_option(config, task, source)
        return f'"{files}"' if files.startswith("[") else files  # quoted for the shell

    return {"training": f"{run} training --config_file {option('train.json')}",
            "evaluating": f"{run} evaluating --config_file {option('evaluate.json')}",
            "inference": f"{run} --config_file {option('inference.json')}"}


def main() -> None:
    """Prints each task with its bundle commands (``python -m transfuse_bundle.tools.tasks``)."""
    for task in task_names():
        print(f"{task}:")
        for name, command in commands(task).items():
            print(f"  {name:<10} {command}")


if __name__ == "__main__":
    main()

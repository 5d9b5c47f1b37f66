"""The task registry: one folder of config overlays per task, ``configs/tasks/<task>/``.

The folder names are the task names and nothing else lists them: training, evaluation, inference,
packaging (:mod:`transfuse_bundle.tools.packaging`), MONAI Label (:mod:`transfuse_bundle.monailabel.app`),
the docs and the tests all read them from here. Adding a task means adding a folder with a ``task.json``.

A task folder holds MONAI bundle overlays, merged the way ``python -m monai.bundle run --config_file
"[a, b, ...]"`` merges files (later files replace top-level keys, ``a#b`` keys replace nested items):

==============  ====================================================================================
task.json       required: what all of the task's configs share (image size, channels, class names,
                spatial dims), merged on ``configs/train.json`` and ``configs/inference.json`` alike,
                so the trained and the served network cannot disagree
train.json      training settings (batch size, epochs, multi-scale, transforms by name)
evaluate.json   evaluation, on top of the training config and ``configs/evaluate.json``
inference.json  inference, on top of ``configs/inference.json``
metadata.json   the bundle metadata (name, task, description, data source)
==============  ====================================================================================

:func:`config_files` gives the merge order of each config, e.g. for the prostate evaluation::

    configs/train.json, tasks/prostate/task.json, tasks/prostate/train.json,
    configs/evaluate.json, tasks/prostate/evaluate.json

and ``python -m transfuse_bundle.tools.tasks`` prints every task with its bundle commands.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserInputError
from . import REPOSITORY

__all__ = ["TASK_DIR", "TASK_FILE", "CHAINS", "TaskError", "task_names", "task_dir", "config_files",
           "config_file_option", "commands"]

TASK_DIR = Path("configs") / "tasks"
TASK_FILE = "task.json"
_TASK = "TASK/"
#: for each config of a bundle, the files merged into it in order: ``TASK/x`` is the task folder's ``x``
#: (skipped when the task has none), anything else a file of ``configs/``.
CHAINS: dict[str, tuple[str, ...]] = {
    "train.json": ("train.json", "TASK/task.json", "TASK/train.json"),
    "evaluate.json": ("train.json", "TASK/task.json", "TASK/train.json", "evaluate.json", "TASK/evaluate.json"),
    "multi_gpu_train.json": ("train.json", "TASK/task.json", "TASK/train.json", "multi_gpu_train.json"),
    "inference.json": ("inference.json", "TASK/task.json", "TASK/inference.json"),
    "metadata.json": ("metadata.json", "TASK/metadata.json"),
}
#: the files a task folder may hold
TASK_CONFIGS = frozenset(c.removeprefix(_TASK) for chain in CHAINS.values() for c in chain if c.startswith(_TASK))


class TaskError(UserInputError, ValueError):
    """An unknown task or a malformed task folder; the message names the folder or file."""


def _root(source: str | os.PathLike | None) -> Path:
    # the repository, or a bundle folder: the parent of this package (see bundle_folder.source_root)
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


def config_files(config: str, task: str | None = None, source: str | os.PathLike | None = None) -> list[Path]:
    """The files merged, in order, into the bundle config ``config`` (e.g. ``"evaluate.json"``) of ``task``.

    ``task=None`` gives the repository's own configs without a task (the synthetic default).
    """
    if config not in CHAINS:
        raise TaskError(f"unknown bundle config {config!r}: expected one of {sorted(CHAINS)}")
    root = _root(source)
    folder = task_dir(task, source) if task is not None else None
    files = []
    for name in CHAINS[config]:
        if not name.startswith(_TASK):
            files.append(root / "configs" / name)
        elif folder is not None and (folder / name.removeprefix(_TASK)).is_file():
            files.append(folder / name.removeprefix(_TASK))
    return files


def config_file_option(config: str, task: str | None = None, source: str | os.PathLike | None = None) -> str:
    """The ``--config_file`` value for ``monai.bundle run``, with paths relative to the repository root."""
    root = _root(source).resolve()
    files = [p.resolve().relative_to(root).as_posix() for p in config_files(config, task, source)]
    return files[0] if len(files) == 1 else "\"[" + ",".join(f"'{f}'" for f in files) + "]\""


def commands(task: str | None, source: str | os.PathLike | None = None) -> dict[str, str]:
    """``{"training", "evaluating", "inference"}`` -> the ``python -m monai.bundle run`` command of ``task``."""
    # MONAI finds configs/metadata.json and configs/logging.conf next to the first config file
    run = "python -m monai.bundle run"
    return {
        "training": f"{run} training --config_file {config_file_option('train.json', task, source)}",
        "evaluating": f"{run} evaluating --config_file {config_file_option('evaluate.json', task, source)}",
        "inference": f"{run} --config_file {config_file_option('inference.json', task, source)}",
    }


def main() -> None:
    """Prints each task with its bundle commands (``python -m transfuse_bundle.tools.tasks``)."""
    for task in task_names():
        print(f"{task}:")
        for name, command in commands(task).items():
            print(f"  {name:<10} {command}")


if __name__ == "__main__":
    main()

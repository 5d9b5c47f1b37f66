"""Datasets on disk -> MONAI datalists (lists of ``{"image": path, "label": path}`` dicts).

Two layouts are accepted for ``dataset_dir``:

* the common folder layout ``DIR/images/<stem>.<ext>`` with ``DIR/masks/<stem>.<ext>``
  (Kvasir-SEG, PH2, CVC-ClinicDB, ISIC), ext one of :data:`IMAGE_EXTENSIONS`;
* an MSD-style ``datalist.json`` (``DIR/datalist.json`` or the JSON file itself) with ``training``,
  optional ``validation`` and ``test`` lists; relative paths are relative to the JSON's folder.

Every problem (missing folder, image without a mask or mask without an image, duplicate stem, empty
list, missing file) raises a :class:`DatasetError` that names the path, when the config is parsed and
before any training starts; the files' contents are checked by :mod:`.validate`.

Every entry of a folder that is read is either used or reported: a file of another type, a broken
symbolic link, a link loop, a subfolder or a pipe is a problem naming it. Only hidden entries (names
starting with ``.``) and what this package wrote there itself (inference masks, reports: see
:mod:`transfuse_bundle.outputs`) are left out, the latter with a log line.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserInputError
from ..files import write_text_atomically
from ..outputs import MANIFEST_NAME, ours

__all__ = [
    "IMAGE_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "DATALIST_NAME",
    "file_stem",
    "entry_problem",
    "path_problem",
    "spacing_problem",
    "DatasetError",
    "DatasetProblem",
    "pair_images_and_masks",
    "find_image_mask_pairs",
    "find_images",
    "split_training",
    "shared_case_problems",
    "rank_shares",
    "check_rank_split",
    "DATALIST_LISTS",
    "load_datalist",
    "evaluation_datalist",
    "inference_datalist",
    "write_datalist",
    "check_datalist_output",
    "write_datalist_file",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
VOLUME_EXTENSIONS = (".nii.gz", ".nii")
DATALIST_NAME = "datalist.json"

logger = logging.getLogger(__name__)


class DatasetError(UserInputError, ValueError):
    """A dataset folder or datalist that cannot be used; the message names the path and the problem.

    ``problems`` holds every :class:`DatasetProblem` found (one line each in the message), so a user
    fixes them all in one go instead of one per run.
    """

    def __init__(self, message: str | Sequence["DatasetProblem"]) -> None:
        self.problems: list[DatasetProblem] = [] if isinstance(message, str) else list(message)
        if not isinstance(message, str):
            lines = [str(problem) for problem in self.problems]
            message = lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n" + "\n".join(lines)
        super().__init__(message)


@dataclass(frozen=True)
class DatasetProblem:
    """One problem of one file (or folder) of a dataset; ``str()`` gives the one-line report ``path: message``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def spacing_problem(spacing: Any, spatial_dims: int | None = None) -> str | None:
    """Why ``spacing`` (mm per pixel or voxel: one number, or one per spatial axis) cannot be used, or None.

    The one rule for a datalist's ``"spacing"`` and ``prepare_data --spacing``: numbers > 0 and at most
    :data:`MAX_SPACING_MM`, one or ``spatial_dims`` of them (2 for ``[row, col]``)."""
    values = spacing if isinstance(spacing, (list, tuple)) else [spacing]
    counts = (1, spatial_dims) if spatial_dims else None
    if (not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)
            or any(not math.isfinite(v) or not 0 < v <= MAX_SPACING_MM for v in values)
            or (counts and len(values) not in counts)):
        count = f"{spatial_dims} (one per axis)" if spatial_dims else "one per axis"
        return f"spacing {spacing!r} must be one number or {count}, > 0 and <= {MAX_SPACING_MM:g} (mm per pixel)"
    return None


#: the largest pixel or voxel spacing taken, in mm (a kilometre): a finite but absurd one such as ``[1e308, 1e308]``
#: passed the check and the run failed later in a traceback (distances in mm are squared: they overflow)
MAX_SPACING_MM = 1e6


def entry_problem(entry: Any, spatial_dims: int | None = None) -> str | None:
    """Why one datalist entry cannot be used, or None: it must be an object (``{"image": path, ...}``) whose
    ``image``, and ``label`` when present, are non-empty path strings and whose ``spacing``, when present,
    passes :func:`spacing_problem`. JSON gives ``null``, numbers and lists as easily as strings."""
    if not isinstance(entry, dict):
        return f"entry is {type(entry).__name__} {_short(entry)}, not an object like {{\"image\": path, \"label\": path}}"
    if "image" not in entry:
        return f"entry has no 'image': {_short(entry)}"
    for key in ("image", "label"):
        if key in entry and (not isinstance(entry[key], (str, os.PathLike)) or not str(entry[key])):
            return f"{key!r} is {_short(entry[key])}, not a file path (entry {_short(entry)})"
    if "spacing" in entry:
        return spacing_problem(entry["spacing"], spatial_dims)
    return None


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, os.PathLike) else repr(str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_stem(name: str, extensions: Sequence[str], suffix: str = "") -> str | None:
    """``name`` without ``suffix`` + its extension (case-insensitive; two-part extensions such as ``.nii.gz``
    included), or None when it ends in none of ``extensions``: ``x_segmentation.png`` -> ``x`` with suffix
    ``_segmentation``, ``t2.nii.gz`` -> ``t2``."""
    lower = name.lower()
    ext = next((e for e in extensions if lower.endswith(suffix.lower() + e)), None)
    return None if ext is None else name[: len(name) - len(suffix) - len(ext)]


def path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file that can be read, or None. The phrase follows "<what> file":
    ``does not exist``, ``is a symbolic link to 'x', which does not exist``, ``is a symbolic link loop``,
    ``is a folder ...``, ``is not a regular file ...``."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
        return "does not exist" if err.errno == errno.ENOENT else f"cannot be read ({err.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file (files in subfolders are not read: move them up, or list them in a datalist.json)"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


def _folder_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` a dataset may use, sorted: all but hidden ones (``.name``) and what this
    package wrote there (recorded in its output manifest, or a subfolder with its own manifest), which are
    left out with a log line."""
    written = ours(folder)
    tops = {name.split(os.sep)[0] for name in written}
    entries, left_out = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.name in tops or (path.is_dir() and (path / MANIFEST_NAME).is_file()):
            left_out.append(path.name)
        else:
            entries.append(path)
    if left_out:
        logger.info("%s: %d entries are this tool's own outputs (%s), not inputs: left out (e.g. %s)", folder,
                    len(left_out), MANIFEST_NAME, left_out[0])
    return entries


def _files_by_stem(folder: Path, suffix: str, extensions: Sequence[str],
                   problems: list[DatasetProblem], what: str = "image") -> dict[str, Path]:
    """``{stem without suffix: path}`` of the files directly in ``folder`` ending in ``suffix + ext``.

    Suffix-aware (``x_segmentation.png`` -> ``x``; ``t2.nii.gz`` -> ``t2``). Every other entry (see
    :func:`_folder_entries`) is appended to ``problems`` naming it: a file of another type, a broken link,
    a subfolder, and a second file with the same stem; ``what`` (``image``, ``mask``) is in the messages.
    """
    found: dict[str, Path] = {}
    for path in _folder_entries(folder):
        problem = path_problem(path)
        if problem:
            problems.append(DatasetProblem(str(path), f"{what} file {problem}"))
            continue
        stem = file_stem(path.name, extensions, suffix)
        if stem is None:
            article = "an" if what[0] in "aeiou" else "a"
            problems.append(DatasetProblem(str(path), f"not {article} {what} file this bundle reads (expected <stem>{suffix} "
                                                      f"with one of {', '.join(extensions)}): remove it from {folder}"))
            continue
        if stem in found:
            problems.append(DatasetProblem(str(path), f"two files with the stem {stem!r} in {folder}: "
                                                      f"{found[stem].name} and {path.name}"))
            continue
        found[stem] = path
    return found


def _names(paths: list[Path], limit: int = 5) -> str:
    return ", ".join(p.name for p in paths[:limit]) + (f" ... ({len(paths) - limit} more)" if len(paths) > limit else "")


def pair_images_and_masks(images_dir: str | os.PathLike, masks_dir: str | os.PathLike, mask_suffix: str = "",
                          extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[list[dict[str, str]], list[DatasetProblem]]:
    """Pairs ``images_dir/<stem><ext>`` with ``masks_dir/<stem><mask_suffix><ext>``, sorted by stem.

    The one pairing rule of the package (folder datasets and :mod:`.prepare` layouts). Returns the
    pairs and the problems: a missing folder, no images, duplicate stems, images without a mask and
    masks without an image (each kind names its files). Callers raise ``DatasetError(problems)``.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    problems = [DatasetProblem(str(d), "expected a folder here, which does not exist")
                for d in (images_dir, masks_dir) if not d.is_dir()]
    if problems:
        return [], problems
    images = _files_by_stem(images_dir, "", extensions, problems)
    masks = _files_by_stem(masks_dir, mask_suffix, extensions, problems, what="mask")
    if not images:
        problems.append(DatasetProblem(str(images_dir), f"no images ({', '.join(extensions)}) found in {images_dir}"))
    no_mask = [images[s] for s in sorted(set(images) - set(masks))]
    if no_mask:
        problems.append(DatasetProblem(str(images_dir), f"{len(no_mask)} image(s) have no mask in {masks_dir} "
                                       f"(expected <stem>{mask_suffix}.<ext>): {_names(no_mask)}"))
    no_image = [masks[s] for s in sorted(set(masks) - set(images))]
    if no_image:
        problems.append(DatasetProblem(str(masks_dir), f"{len(no_image)} mask(s) have no image in {images_dir}: "
                                       f"{_names(no_image)}"))
    pairs = [{"image": str(images[s]), "label": str(masks[s])} for s in sorted(set(images) & set(masks))]
    return pairs, problems


def _check_dir(dataset_dir: str | os.PathLike) -> Path:
    root = Path(os.path.abspath(Path(dataset_dir).expanduser()))  # datalists hold absolute paths, valid from any folder
    if not root.exists():
        raise DatasetError(f"dataset_dir {str(root)!r} does not exist")
    return root


def find_image_mask_pairs(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Pairs ``DIR/images/<stem>.*`` with ``DIR/masks/<stem>.*``, sorted by stem.

    Raises:
        DatasetError: the folder or its ``images``/``masks`` subfolders are missing, there are no images,
            two files share a stem, an image has no mask or a mask has no image (all listed, naming the files).
    """
    root = _check_dir(dataset_dir)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DatasetError(
            f"dataset_dir {str(root)!r} has neither a {DATALIST_NAME} nor the folders images/ and masks/ "
            f"(expected DIR/images/<stem>.{{png,jpg,jpeg,bmp,tif}} with DIR/masks/<stem>.*)"
        )
    pairs, problems = pair_images_and_masks(images_dir, masks_dir, extensions=IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)
    if problems:
        raise DatasetError(problems)
    return pairs


def find_images(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Every entry of ``DIR/images/`` if that folder exists, else of ``DIR`` (no masks needed), sorted by name.

    Not only image files: everything but hidden entries and this package's own outputs is listed, so that
    :func:`~transfuse_bundle.data.validate.screen_images` reports what cannot be segmented (a file of another
    type, a broken link, a subfolder, a volume given to a 2D config, a duplicate stem) instead of silently
    leaving it out. Raises ``DatasetError`` when the folder holds nothing.
    """
    root = _check_dir(dataset_dir)
    folder = root / "images" if (root / "images").is_dir() else root
    if not folder.is_dir():
        raise DatasetError(f"{str(folder)!r} is not a folder of images")
    entries = _folder_entries(folder)
    if not entries:
        extensions = IMAGE_EXTENSIONS + VOLUME_EXTENSIONS
        raise DatasetError([DatasetProblem(str(folder), f"no images ({', '.join(extensions)}) found in {folder}")])
    return [{"image": str(path)} for path in entries]


def split_training(items: list[dict[str, Any]], val_fraction: float = 0.2, seed: int = 0,
                   name: str = "val_fraction") -> tuple[list, list]:
    """Deterministic split into (training, validation): sort by image path, shuffle with ``seed``.

    At least one case goes to validation when there are two or more cases; the same inputs always give
    the same split, whatever order the files were listed in. ``name`` is the option that errors name.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"{name} must be in (0, 1), got {val_fraction}")
    ordered = sorted(items, key=lambda d: str(d["image"]))
    random.Random(seed).shuffle(ordered)
    n_val = min(len(ordered) - 1, max(1, round(val_fraction * len(ordered)))) if len(ordered) > 1 else 0
    return ordered[n_val:], ordered[:n_val]


def rank_shares(count: int, world_size: int) -> list[list[int]]:
    """The case indices each of ``world_size`` ranks validates, as the multi-GPU config's validation sampler
    (MONAI's ``DistributedSampler``, ``even_divisible=False``, no shuffling) hands them out: rank r gets
    cases r, r + world_size, ...; every case once, none twice, so the metrics gathered over the ranks are
    those of a single process. Shapes: ``count`` cases -> ``world_size`` lists of indices."""
    from monai.data import DistributedSampler

    if count == 0:  # the sampler refuses fewer cases than ranks; no validation at all is no share for anyone
        return [[] for _ in range(world_size)]
    return [list(DistributedSampler(range(count), even_divisible=False, num_replicas=world_size, rank=rank,
                                    shuffle=False)) for rank in range(world_size)]


def check_rank_split(items: Sequence[Any], world_size: int | str = 1, what: str = "validation") -> list[list[int]]:
    """Returns :func:`rank_shares` of ``items`` over ``world_size`` processes, or raises :class:`DatasetError`
    before any work when a rank would get no case: a rank without validation data fails its first
    validation (its metric has nothing to reduce) while the others wait for it. ``world_size`` is torchrun's
    ``WORLD_SIZE``; an empty list (no validation at all) is left to the single-process rules."""
    world_size = int(world_size)
    if world_size > 1 and 0 < len(items) < world_size:
        raise DatasetError(f"the {what} list has {len(items)} case(s), fewer than the {world_size} processes of this "
                           f"run: each process validates its own share and one would have none; give at least "
                           f"{world_size} {what} cases (--val_fraction, or the datalist's '{what}' list) or start "
                           f"{len(items)} process(es) (torchrun --nproc_per_node {len(items)})")
    return rank_shares(len(items), world_size)


def _datalist_file(dataset_dir: str | os.PathLike) -> Path | None:
    path = Path(dataset_dir).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        return path
    if (path / DATALIST_NAME).is_file():
        return path / DATALIST_NAME
    return None


#: The lists of a datalist.json; any other key holding a list of cases, or spelled like one of these
#: (``Validation``, ``val``, ``testing``), is refused: the bundle would never read those cases.
DATALIST_LISTS = ("training", "validation", "test")
_LIST_ALIASES = {"train": "training", "trainings": "training", "val": "validation", "valid": "validation",
                 "validate": "validation", "validations": "validation", "testing": "test", "tests": "test"}


def _unread_list_key(key: str, value: Any) -> str | None:
    """Why a datalist's top-level ``key`` (not one of :data:`DATALIST_LISTS`) would be silently ignored, or None
    for a key that is simply not ours (MSD's ``name``, ``labels``, ``numTraining``; ``layout``, ``source``)."""
    meant = _LIST_ALIASES.get(key.lower(), key.lower() if key.lower() in DATALIST_LISTS else None)
    if meant is not None:
        return f"key {key!r} is not read (the lists are {', '.join(map(repr, DATALIST_LISTS))}, lower case): rename it {meant!r}"
    if isinstance(value, list) and value and all(isinstance(v, dict) and "image" in v for v in value):
        return (f"key {key!r} holds {len(value)} case(s) that are never read (the lists are "
                f"{', '.join(map(repr, DATALIST_LISTS))}): rename it to one of them, or remove it")
    return None


def shared_case_problems(lists: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[DatasetProblem]:
    """One problem per image that two lists of ``lists`` (``training``, ``validation``, ``test``) both hold, by
    real path (a symbolic link or a relative path to the same file is the same case): a case trained on and
    validated or tested on gives a score that says nothing about new images."""
    first: dict[str, str] = {}
    problems = []
    for split, items in lists.items():
        if not isinstance(items, (list, tuple)):
            continue
        for index, entry in enumerate(items):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("image"), (str, os.PathLike)):
                continue  # entry_problem reports it
            real = os.path.realpath(entry["image"])
            where = f"{split}[{index}]"
            if real in first and first[real].split("[")[0] != split:
                problems.append(DatasetProblem(str(entry["image"]), f"the same case is in {first[real]} and {where}: "
                                               f"a case used for training must not be validated or tested on; "
                                               f"keep the lists disjoint"))
            first.setdefault(real, where)
    return problems


def _read_datalist_json(path: Path, need_labels: bool = True) -> dict[str, list[dict[str, str]]]:
    """Reads an MSD-style datalist; returns absolute paths; checks that every referenced file exists, that no
    list is misspelled (see :func:`_unread_list_key`) and that no case is in two lists."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(content, dict):
        raise DatasetError(f"{path} must hold a JSON object with 'training' / 'validation' / 'test' lists")
    unread = [DatasetProblem(str(path), problem) for key, value in content.items() if key not in DATALIST_LISTS
              for problem in [_unread_list_key(str(key), value)] if problem]
    if unread:
        raise DatasetError(unread)
    base = path.parent
    lists: dict[str, list[dict[str, str]]] = {}
    for split in DATALIST_LISTS:
        entries = content.get(split, [])
        if not isinstance(entries, list):
            raise DatasetError(f"{path}: {split!r} must be a list, got {type(entries).__name__}")
        items = []
        for index, entry in enumerate(entries):
            entry = {"image": entry} if isinstance(entry, str) else entry
            problem = entry_problem(entry)
            if problem:
                raise DatasetError(f"{path}: {split}[{index}]: {problem}")
            entry = dict(entry)
            if need_labels and split != "test" and "label" not in entry:
                raise DatasetError(f"{path}: {split}[{index}] has no 'label' key: {entry}")
            for key in ("image", "label"):
                if key in entry:
                    file = Path(entry[key]) if os.path.isabs(entry[key]) else base / entry[key]
                    problem = path_problem(file)
                    if problem:
                        raise DatasetError(f"{path}: {split}[{index}] {key} file {str(file)!r} {problem}")
                    entry[key] = str(file)
            items.append(entry)
        lists[split] = items
    shared = shared_case_problems(lists)
    if shared:
        raise DatasetError([DatasetProblem(f"{path}: {p.path}", p.message) for p in shared])
    return lists


def load_datalist(dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0,
                  need_training: bool = True) -> dict[str, list]:
    """``{"training", "validation", "test"}`` lists of ``{"image", "label"}`` dicts with absolute paths.

    Args:
        dataset_dir: a folder with ``images/`` + ``masks/``, a folder with ``datalist.json``, or the JSON file.
        val_fraction: share of the training cases used for validation when the datalist has no
            ``validation`` list (folder layouts never have one).
        seed: seed of the deterministic split.
        need_training: refuse a datalist without training cases (training needs them; checking a
            datalist of test cases only does not).
    """
    json_file = _datalist_file(dataset_dir)
    if json_file is not None:
        lists = _read_datalist_json(json_file)
        if need_training and not lists["training"]:
            raise DatasetError(f"{json_file}: the 'training' list is empty")
        if not lists["validation"] and lists["training"]:
            lists["training"], lists["validation"] = split_training(lists["training"], val_fraction, seed)
        return lists
    training, validation = split_training(find_image_mask_pairs(dataset_dir), val_fraction, seed)
    return {"training": training, "validation": validation, "test": []}


def evaluation_datalist(dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> list[dict]:
    """Cases to evaluate: every pair of a folder layout; the ``test`` list of a datalist (with labels),
    else its ``validation`` list (or the deterministic validation split of its ``training`` list). A
    datalist of test cases only needs no training list."""
    json_file = _datalist_file(dataset_dir)
    if json_file is None:
        return find_image_mask_pairs(dataset_dir)
    lists = load_datalist(dataset_dir, val_fraction, seed, need_training=False)
    if lists["test"]:
        unlabelled = [d["image"] for d in lists["test"] if "label" not in d]
        if unlabelled:
            raise DatasetError(f"{json_file}: evaluation needs a 'label' for every 'test' entry; missing for {unlabelled[0]}")
        return lists["test"]
    if not lists["validation"]:
        raise DatasetError(f"{json_file}: no 'test', 'validation' or 'training' cases to evaluate")
    return lists["validation"]


def inference_datalist(dataset_dir: str | os.PathLike) -> list[dict]:
    """Images to segment: the ``test`` list of a datalist (else ``validation``), else every image of the folder."""
    json_file = _datalist_file(dataset_dir)
    if json_file is None:
        return find_images(dataset_dir)
    lists = _read_datalist_json(json_file, need_labels=False)
    items = lists["test"] or lists["validation"]
    if not items:
        raise DatasetError(f"{json_file}: no 'test' or 'validation' entries to run inference on")
    return [{"image": d["image"]} for d in items]


def write_datalist(
    dataset_dir: str | os.PathLike,
    output: str | os.PathLike,
    num_training: int | None = None,
    num_validation: int = 0,
    num_test: int = 0,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, list]:
    """Writes an MSD-style datalist.json from a folder layout: a shuffled, disjoint subset per list.
    ``output`` is checked first (:func:`check_datalist_output`: ``overwrite`` replaces a datalist this
    package did not write) and written atomically.

    ``num_training=None`` takes every case left after validation and test. Paths are absolute, so
    the JSON can live anywhere (e.g. a temporary folder, not next to read-only data). Returns the lists.
    """
    counts = {"num_training": num_training, "num_validation": num_validation, "num_test": num_test}
    negative = [f"{name} {n}" for name, n in counts.items() if n is not None and n < 0]
    if negative or num_training == 0:
        raise DatasetError(f"case counts must be >= 0 (and num_training >= 1), got {', '.join(negative) or 'num_training 0'}")
    check_datalist_output(output, overwrite)
    pairs = sorted(find_image_mask_pairs(dataset_dir), key=lambda d: d["image"])
    random.Random(seed).shuffle(pairs)
    wanted = num_validation + num_test + (num_training or 0)
    if wanted > len(pairs) or (num_training is None and num_validation + num_test >= len(pairs)):
        raise DatasetError(f"{dataset_dir} has {len(pairs)} cases, fewer than the {wanted or num_validation + num_test + 1} asked for")
    validation, test = pairs[:num_validation], pairs[num_validation : num_validation + num_test]
    rest = pairs[num_validation + num_test :]
    lists = {"training": rest if num_training is None else rest[:num_training], "validation": validation, "test": test}
    write_datalist_file(output, lists, overwrite)
    return lists


def check_datalist_output(output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Returns ``output`` (a datalist file to write) as a path, or raises before any work: it must be a ``.json``
    name in a folder that can be written or created; an existing file there must be a datalist this package
    wrote itself, unchanged since (recorded in the folder's output manifest, see :mod:`transfuse_bundle.outputs`),
    so re-running replaces its own datalist while a hand-edited one raises ``OutputConflictError`` unless
    ``overwrite``; any other file (an image, a config) is never written over."""
    from ..checks import require_writable_dir
    from ..outputs import claim

    output = Path(os.path.abspath(Path(output).expanduser()))
    if output.is_dir():
        raise DatasetError(f"--output {str(output)!r} is a folder: give the datalist file to write, e.g. {output / DATALIST_NAME}")
    if output.suffix.lower() != ".json":
        raise DatasetError(f"--output {str(output)!r} must be a .json file (the datalist to write)")
    if output.exists():
        try:
            content = json.loads(output.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            content = None
        if not isinstance(content, dict) or not isinstance(content.get("training"), list):
            raise DatasetError(f"--output {str(output)!r} exists and is not a datalist: not replaced (choose another name)")
    try:
        require_writable_dir(output.parent, "the folder of --output")
    except OSError as err:
        raise DatasetError(str(err)) from None
    claim(output.parent, [output.name], overwrite, option="--output")
    return output


def write_datalist_file(output: str | os.PathLike, content: dict[str, Any], overwrite: bool = False) -> Path:
    """Writes ``content`` to ``output`` atomically, after :func:`check_datalist_output`, and records it as this
    package's output: an interrupted or failed write leaves neither half a datalist nor a temporary file."""
    from ..outputs import record

    output = check_datalist_output(output, overwrite)
    write_text_atomically(output, json.dumps(content, indent=4))
    record(output.parent, [output])
    return output

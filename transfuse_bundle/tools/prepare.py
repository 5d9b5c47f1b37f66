"""Public dataset layouts -> the bundle's MSD-style ``datalist.json``.

One function per layout the paper evaluates on; :func:`prepare` detects the layout. Every entry is
``{"image": path, "label": path, "dataset": name}`` with absolute paths (plus ``"spacing"`` where
the layout gives one), so the datalist can be written anywhere. Missing or mismatched files raise a
:class:`~transfuse_bundle.data.datalist.DatasetError` naming them, before anything is written.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.datalist import (IMAGE_EXTENSIONS, DatasetError, check_datalist_output, entry_problem, pair_images_and_masks,
                       spacing_problem, split_training, write_datalist_file)

__all__ = ["LAYOUTS", "detect_layout", "prepare", "polyp_pranet", "pranet_test_cases", "folder_pairs", "isic2017",
           "msd_prostate", "prostate158", "hip", "PRANET_TEST_SETS", "PRANET_SEEN_SETS"]

logger = logging.getLogger(__name__)

Datalist = dict[str, list[dict[str, Any]]]

PRANET_TEST_SETS = ("Kvasir", "CVC-ClinicDB", "CVC-ColonDB", "CVC-300", "ETIS-LaribPolypDB")
#: the test sets drawn from the same collections as PraNet's TrainDataset; the others are unseen.
PRANET_SEEN_SETS = ("Kvasir", "CVC-ClinicDB")


def _pair(images_dir: Path, masks_dir: Path, dataset: str, mask_suffix: str = "",
          extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[dict[str, Any]]:
    """Pairs images and masks by stem (see :func:`pair_images_and_masks`), tagging each with ``dataset``;
    every image needs a mask and every mask an image."""
    pairs, problems = pair_images_and_masks(images_dir, masks_dir, mask_suffix, extensions)
    if problems:
        raise DatasetError(problems)
    return [{**pair, "dataset": dataset} for pair in pairs]


def _split(cases: list[dict[str, Any]], val_fraction: float, test_fraction: float, seed: int) -> Datalist:
    """Deterministic training / validation / test lists: the test share first (none when ``test_fraction``
    is 0), then the validation share of the rest."""
    rest, test = split_training(cases, test_fraction, seed, name="test_fraction") if test_fraction > 0 else (cases, [])
    training, validation = split_training(rest, val_fraction, seed + 1)
    return {"training": training, "validation": validation, "test": test}


def polyp_pranet(root: Path, val_fraction: float = 0.1, seed: int = 0) -> Datalist:
    """PraNet split: ``TrainDataset/{image,mask}`` for training (a deterministic share for
    validation) and each of ``TestDataset/<set>/{images,masks}`` as test cases tagged with the set."""
    training = _pair(root / "TrainDataset" / "image", root / "TrainDataset" / "mask", "TrainDataset")
    training, validation = split_training(training, val_fraction, seed)
    test, _ = pranet_test_cases(root / "TestDataset")
    return {"training": training, "validation": validation, "test": test}


def pranet_test_cases(test_root: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """``(cases, missing)``: the pairs of every ``<set>/{images,masks}`` of :data:`PRANET_TEST_SETS` found
    in ``test_root`` (PraNet's ``TestDataset``), tagged with the set's name, and the names of the sets
    that are not there. Raises :class:`DatasetError` when none is there."""
    test_root = Path(test_root)
    sets = [name for name in PRANET_TEST_SETS if (test_root / name).is_dir()]
    if not sets:
        raise DatasetError(f"{test_root} holds none of the PraNet test sets {list(PRANET_TEST_SETS)}")
    cases: list[dict[str, Any]] = []
    for name in sets:
        cases += _pair(test_root / name / "images", test_root / name / "masks", name)
    return cases, [name for name in PRANET_TEST_SETS if name not in sets]


def folder_pairs(root: Path, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> Datalist:
    """A plain ``images/`` + ``masks/`` folder (Kvasir-SEG, CVC-ClinicDB, PH2): deterministic
    training / validation / test split."""
    return _split(_pair(root / "images", root / "masks", root.name), val_fraction, test_fraction, seed)


def isic2017(root: Path) -> Datalist:
    """ISIC 2017: ``ISIC-2017_{Training,Validation,Test_v2}_Data/*.jpg`` with
    ``ISIC-2017_<split>_Part1_GroundTruth/<id>_segmentation.png`` (its own splits: no fractions, no seed)."""
    lists: Datalist = {}
    for split, name in (("training", "Training"), ("validation", "Validation"), ("test", "Test_v2")):
        lists[split] = _pair(root / f"ISIC-2017_{name}_Data", root / f"ISIC-2017_{name}_Part1_GroundTruth",
                             f"ISIC2017-{name}", mask_suffix="_segmentation")
    return lists


def msd_prostate(root: Path, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> Datalist:
    """MSD Task05 Prostate: ``dataset.json`` listing ``imagesTr/*.nii.gz`` (T2 and ADC as two channels)
    and ``labelsTr`` (1 = peripheral zone, 2 = transition zone); split deterministically."""
    meta_file = root / "dataset.json"
    if not meta_file.is_file():
        raise DatasetError(f"{meta_file} not found: an MSD task folder has dataset.json, imagesTr/ and labelsTr/")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{meta_file} is not valid JSON: {err}") from None
    entries = meta.get("training", []) if isinstance(meta, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(f"{meta_file} must hold an object with a 'training' list")
    cases = []
    for index, entry in enumerate(entries):
        problem = entry_problem(entry) or (None if "label" in entry else "entry has no 'label'")
        if problem:
            raise DatasetError(f"{meta_file}: training[{index}]: {problem}")
        case = {key: str((root / entry[key]).resolve()) for key in ("image", "label")}
        for key, path in case.items():
            if not Path(path).is_file():
                raise DatasetError(f"{meta_file}: training[{index}] {key} file {path!r} does not exist")
        cases.append({**case, "dataset": meta.get("name", "Prostate")})
    if not cases:
        raise DatasetError(f"{meta_file} lists no training cases")
    return _split(cases, val_fraction, test_fraction, seed)


def prostate158(root: Path, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
                reader: str = "t2_anatomy_reader1") -> Datalist:
    """Prostate158: ``<case>/t2.nii.gz`` with ``<case>/<reader>.nii.gz`` (1 = central gland /
    transition zone, 2 = peripheral zone)."""
    cases = []
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        image, label = case_dir / "t2.nii.gz", case_dir / f"{reader}.nii.gz"
        if not image.is_file():
            continue
        if not label.is_file():
            raise DatasetError(f"{image} has no label {label.name} in {case_dir}")
        cases.append({"image": str(image), "label": str(label), "dataset": "Prostate158"})
    if not cases:
        raise DatasetError(f"no <case>/t2.nii.gz volumes in {root}")
    return _split(cases, val_fraction, test_fraction, seed)


def hip(root: Path, spacing: Sequence[float] | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
        seed: int = 0) -> Datalist:
    """Hip-style X-rays: ``images/`` + ``masks/`` with integer labels (1 = pelvis, 2 = left femur,
    3 = right femur) and a pixel ``spacing`` in mm (row, column) so HD and ASD come out in mm."""
    problem = "it is missing" if spacing is None else spacing_problem(list(spacing), 2)
    if problem:
        raise DatasetError(f"the hip layout needs the pixel spacing in mm as --spacing ROW_MM COL_MM: {problem}")
    lists = folder_pairs(root, val_fraction, test_fraction, seed)
    for entries in lists.values():
        for entry in entries:
            entry["spacing"] = [float(s) for s in spacing]
    return lists


LAYOUTS: dict[str, Callable[..., Datalist]] = {
    "polyp-pranet": polyp_pranet,
    "folder": folder_pairs,
    "isic2017": isic2017,
    "msd-prostate": msd_prostate,
    "prostate158": prostate158,
    "hip": hip,
}


def detect_layout(root: Path) -> str:
    """The layout of ``root`` from its marker files (hip folders look like plain folders: name it)."""
    if (root / "TrainDataset").is_dir() and (root / "TestDataset").is_dir():
        return "polyp-pranet"
    if (root / "ISIC-2017_Training_Data").is_dir():
        return "isic2017"
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd-prostate"
    if any((d / "t2.nii.gz").is_file() for d in root.iterdir() if d.is_dir()):
        return "prostate158"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    raise DatasetError(f"cannot tell the layout of {root}: expected one of {sorted(LAYOUTS)} "
                       "(see scripts/prepare_data.py --help)")


def prepare(root: str | os.PathLike, output: str | os.PathLike, layout: str | None = None, overwrite: bool = False,
            **options: Any) -> Datalist:
    """Write ``output`` (a datalist.json) for the dataset at ``root``; returns the lists.

    Args:
        root: the dataset's top folder as downloaded.
        output: the datalist file to write (its folder is created; checked first, see
            :func:`~.datalist.check_datalist_output`); nothing is written on error.
        layout: one of :data:`LAYOUTS`, detected when None.
        overwrite: replace an existing datalist at ``output`` that this package did not write (or that was
            edited since); without it such a file stops the run before any work.
        options: passed to the layout function (``val_fraction``, ``test_fraction``, ``seed``, ``spacing``).
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} {'is a file' if root.exists() else 'does not exist'}: "
                           f"give the dataset's top folder")
    check_datalist_output(output, overwrite)
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    taken = list(inspect.signature(LAYOUTS[layout]).parameters)[1:]
    unused = [name for name in options if name not in taken]
    if unused:
        raise DatasetError(f"the {layout} layout takes no {', '.join(unused)} (it takes {', '.join(taken) or 'no options'})")
    lists = LAYOUTS[layout](root, **options)
    write_datalist_file(output, {"layout": layout, "source": str(root), **lists}, overwrite)
    logger.info("wrote %s: %s", output, ", ".join(f"{k} {len(v)}" for k, v in lists.items()))
    return lists

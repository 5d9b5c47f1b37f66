"""Checks a dataset's files before any work starts, and reports every problem on one line naming the file.

* :func:`validate_datalist`: the checks, returning a list of :class:`~.datalist.DatasetProblem`;
* :func:`check_dataset`: the raising wrapper the training and evaluation configs call first;
* :func:`screen_images`: the inference version: bad images are logged and written to a report file,
  the good ones are still segmented, and :meth:`ScreenedImages.raise_if_any` fails the run at the end;
* :func:`validate_dataset` / ``scripts/validate_data.py``: the same checks on a folder or datalist, as a command.

What is checked, per file: it is a regular file (not a broken symbolic link, a link loop, a folder or a
pipe) of a type the bundle reads; it opens and decodes completely (a truncated JPEG/PNG/NIfTI is caught);
a picture has one frame (not an animated GIF/WEBP or a multi-page TIFF); it is a 2D picture for a 2D
config and a 3D volume for a 3D one; a mask has the size of its image; mask
values can be class ids (binary: 0/1 or 0/255, or 0 and full scale of 16 bits, with at most a few grey pixels
and those on edges, not grey areas; a mask painted as opacity is read from its alpha channel; multi-class:
integers ``0..num_classes-1``, as :class:`~.transforms.MaskToClassIdsd` accepts them); a volume has no
NaN or Inf and as many channels (4th axis) as the network's ``in_channels``; a label volume has its image's
geometry (orientation, spacing and origin, within :data:`GEOMETRY_TOLERANCE`: the pipelines pair voxels by
index, never by position, so a label with a flipped axis or a shifted origin would train mirrored or shifted);
a picture has no EXIF orientation other than 1 (see :func:`_exif_orientation`); one file is not listed
twice. Grey, palette, RGBA and 16-bit PNGs, empty masks and large images are accepted (see :mod:`.readers`
for how they are read).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigValueError
from ..outputs import is_ours, record
from .datalist import (DATALIST_NAME, IMAGE_EXTENSIONS, VOLUME_EXTENSIONS, DatasetError, DatasetProblem, entry_problem,
                       file_stem, find_images, load_datalist, pair_images_and_masks, path_problem,
                       shared_case_problems)
from .readers import MAX_PIXELS, check_picture_channels, full_scale, mask_channels

__all__ = ["validate_datalist", "validate_dataset", "check_dataset", "screen_images", "ScreenedImages", "GREY_MASK_FRACTION",
           "GEOMETRY_TOLERANCE"]

logger = logging.getLogger(__name__)

#: A binary mask may have this share of pixels that are neither near 0 nor near full scale
#: (anti-aliased edges, JPEG noise); more means the file is a picture, not a mask.
GREY_MASK_FRACTION = 0.05

#: A label volume's geometry may differ from its image's by this much: spacing (relative) and direction
#: cosines by 0.001, origin by 0.1 voxel (of the smallest side). Far above the rounding of NIfTI headers written
#: by different tools, far below a shift or drift of one voxel across a 512-voxel scan.
GEOMETRY_TOLERANCE = {"spacing": 1e-3, "direction": 1e-3, "origin_voxels": 0.1}

#: EXIF orientation tag values (what a viewer does to the stored pixels before showing them).
_EXIF_ORIENTATIONS = {2: "mirrored", 3: "rotated 180 degrees", 4: "flipped upside down", 5: "transposed",
                      6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise"}

Datalist = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]]


def _kind(path: str) -> str | None:
    name = path.lower()
    if name.endswith(VOLUME_EXTENSIONS):
        return "volume"
    if name.endswith(IMAGE_EXTENSIONS):
        return "picture"
    return None


def _stem(path: str) -> str:
    name = Path(path).name
    stem = file_stem(name, VOLUME_EXTENSIONS + IMAGE_EXTENSIONS)
    return Path(name).stem if stem is None else stem


@dataclass
class _File:
    """What one readable file looked like: spatial shape (H, W) or (X, Y, Z), and its values."""

    shape: tuple[int, ...]
    values: np.ndarray | None = None  # mask values (unique), or None
    grey_fraction: float = 0.0  # of all pixels: neither near 0 nor near full scale
    grey_area: float = 0.0  # of the pixels that are not background: grey ones away from any edge
    channels: int = 1  # of a volume: the size of the 4th axis (MSD stores modalities there)
    affine: np.ndarray | None = None  # of a volume: voxel index -> world mm (4 x 4)


class _Unusable(Exception):
    """The file cannot be used; the message says why."""


def _open_picture(path: str) -> Image.Image:
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise _Unusable(f"too large to read safely ({err}); downsample it first") from err
    except Exception as err:  # PIL raises several types for unreadable files
        raise _Unusable(f"not a readable image ({type(err).__name__}: {err})") from err
    if MAX_PIXELS and image.width * image.height > MAX_PIXELS:
        raise _Unusable(f"too large to read safely ({image.width} x {image.height} pixels, limit "
                        f"{MAX_PIXELS} pixels); downsample it first")
    _exif_orientation(image)
    return image


def _exif_orientation(image: Image.Image) -> None:
    """Refuses a picture whose EXIF orientation tag is not 1 (as stored).

    Viewers (and annotation tools) show such a picture rotated or mirrored, while every reader here, like
    MONAI's ``PILReader``, uses the stored pixels. Whether its mask was drawn on the stored or the displayed
    pixels cannot be told from the files, so the tag is neither applied nor ignored: the file is refused, an
    image or a mask alike, and the user re-saves both in one orientation.
    """
    try:
        orientation = image.getexif().get(0x0112, 1)  # ExifTags.Base.Orientation
    except Exception:  # a broken EXIF block: the pixels still decode, and nothing says they are turned
        return
    if orientation not in (None, 1):
        shown = _EXIF_ORIENTATIONS.get(orientation, "an invalid value")
        raise _Unusable(f"has EXIF orientation {orientation} (viewers show it {shown}), but it is read as stored, "
                        f"so which way its mask was drawn is unknown: save the image and its mask the way they "
                        f"were drawn, without the tag (e.g. PIL.ImageOps.exif_transpose, then save)")


def _read_picture(path: str, is_mask: bool) -> _File:
    """Decodes the whole file (catches truncation); for a mask, returns its unique values the way
    ``MaskToClassIdsd`` sees them (max over colour channels, alpha ignored)."""
    with _open_picture(path) as image:
        shape = (image.height, image.width)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:  # the readers would take the first frame and drop the others
            raise _Unusable(f"has {frames} frames (an animation or a multi-page file); give one picture per file")
        try:
            if not is_mask and image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))  # still reads every byte
            image.load()
            if not is_mask:
                return _File(shape)
            values = np.asarray(mask_channels(image))
        except Exception as err:
            raise _Unusable(f"unreadable or truncated image ({type(err).__name__}: {err})") from err
    if values.ndim == 3:
        values = values[..., :3].max(axis=-1)
    full = full_scale(float(values.max(initial=0)))
    grey = (values > full / 8) & (values < full * 7 / 8)
    grey_area = 0.0
    if grey.any():  # grey pixels with only grey ones within 2 pixels: an area, not an anti-aliased or JPEG edge
        from scipy.ndimage import binary_erosion

        grey_area = (np.count_nonzero(binary_erosion(grey, np.ones((5, 5), bool)))
                     / max(np.count_nonzero(values > full / 8), 1))
    if values.dtype == np.uint8:  # the common case: a histogram is ~10x faster than np.unique
        unique = np.flatnonzero(np.bincount(values.ravel(), minlength=256)).astype(np.uint8)
    else:
        unique = np.unique(values)
    return _File(shape, unique, np.count_nonzero(grey) / max(values.size, 1), grey_area=grey_area)


def _read_volume(path: str, is_mask: bool) -> _File:
    import nibabel as nib  # only needed for volumes

    try:
        volume = nib.load(path)
        data, affine = np.asanyarray(volume.dataobj), np.asarray(volume.affine, dtype=np.float64)
    except Exception as err:
        raise _Unusable(f"unreadable or truncated volume ({type(err).__name__}: {err})") from err
    if not is_mask and np.issubdtype(data.dtype, np.floating):
        bad = np.count_nonzero(~np.isfinite(data))
        if bad:
            raise _Unusable(f"{bad} voxel(s) are NaN or Inf")
    if is_mask:
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise _Unusable("the label volume has NaN or Inf values")
        if data.ndim > 3 and data[0, 0, 0].size > 1:  # training would read the extra axis as channels
            raise _Unusable(f"the label volume has {data[0, 0, 0].size} channels (shape {' x '.join(map(str, data.shape))}); "
                            f"a label holds one class id per voxel")
        return _File(tuple(data.shape[:3]), np.unique(data), affine=affine)
    if data.ndim < 3:
        return _File(tuple(data.shape))
    return _File(tuple(data.shape[:3]), channels=int(np.prod(data.shape[3:], dtype=np.int64)), affine=affine)


def _geometry_problem(label: np.ndarray, image: np.ndarray) -> str | None:
    """How a label volume's voxel grid differs from its image's, or None (within :data:`GEOMETRY_TOLERANCE`).

    Args:
        label, image: the volumes' affines (4 x 4, voxel index -> world mm), as nibabel reads them.
    """
    import nibabel as nib

    def parts(affine: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        return "".join(nib.aff2axcodes(affine)), spacing, affine[:3, :3] / spacing, affine[:3, 3]

    def mm(values: np.ndarray) -> str:
        return " x ".join(f"{v:.4g}" for v in values)

    (l_axes, l_spacing, l_dirs, l_origin), (i_axes, i_spacing, i_dirs, i_origin) = parts(label), parts(image)
    found = []
    if l_axes != i_axes:
        found.append(f"orientation {l_axes}, the image's {i_axes} (an axis is flipped or swapped)")
    elif np.abs(l_dirs - i_dirs).max() > GEOMETRY_TOLERANCE["direction"]:
        angle = np.degrees(np.arccos(np.clip(((l_dirs * i_dirs).sum(axis=0)).min(), -1, 1)))
        found.append(f"axes rotated by {angle:.2g} degrees from the image's")
    if np.abs(l_spacing / i_spacing - 1).max() > GEOMETRY_TOLERANCE["spacing"]:
        found.append(f"spacing {mm(l_spacing)} mm, the image's {mm(i_spacing)} mm")
    shift = float(np.linalg.norm(l_origin - i_origin))
    if shift > GEOMETRY_TOLERANCE["origin_voxels"] * i_spacing.min():
        found.append(f"origin {shift:.3g} mm from the image's")
    if not found:
        return None
    return (f"label geometry differs from its image's: {'; '.join(found)}. Voxels are paired by index, so the "
            f"label would be used mirrored or shifted: resample it onto the image's grid (e.g. MONAI "
            f"ResampleToMatch) or export both from the same scan")


def _read(path: str, spatial_dims: int, is_mask: bool) -> _File:
    kind = _kind(path)
    what = "mask" if is_mask else "image"
    problem = path_problem(path)
    if problem:
        raise _Unusable(f"{what} file {problem}")
    if os.path.getsize(path) == 0:
        raise _Unusable(f"{what} file is empty (0 bytes)")
    if kind is None:
        raise _Unusable(f"not a supported {what} file (expected one of {', '.join(IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)})")
    if kind == "picture" and spatial_dims == 3:
        raise _Unusable(f"a 2D {what}, but this config segments 3D volumes (spatial_dims=3): give .nii/.nii.gz volumes")
    if kind == "volume" and spatial_dims == 2:
        raise _Unusable("a 3D volume, but this config segments 2D images (spatial_dims=2): use a 3D task "
                        "(e.g. configs/tasks/prostate/) or 2D files")
    found = _read_picture(path, is_mask) if kind == "picture" else _read_volume(path, is_mask)
    if kind == "volume" and len(found.shape) < 3:
        raise _Unusable(f"a {len(found.shape)}D volume, but this config segments 3D volumes (spatial_dims=3)")
    return found


def _mask_value_problem(mask: _File, num_classes: int) -> str | None:
    """Why these mask values cannot be class ids, or None; the same rules as ``MaskToClassIdsd``."""
    values = mask.values
    if values is None or values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (" ..." if values.size > 8 else "")
    if num_classes == 2:
        full = full_scale(high)
        if low < 0:
            return f"mask has negative values ({shown}); a binary mask holds 0/1 or 0/255"
        if 1 < high < full / 2:
            return (f"mask values are {shown}: a binary config thresholds a mask at half its full scale ({full / 2:g} "
                    f"for values up to {full}), so this mask would become empty; store 0/1 or 0/255, or set "
                    f"out_channels to the number of classes for a class-id mask")
        if high > 1 and mask.grey_fraction > GREY_MASK_FRACTION:
            return (f"mask is not binary: {100 * mask.grey_fraction:.0f}% of its pixels are grey (values {shown}); "
                    f"a binary mask holds 0/255 (or 0/1)")
        if high > 1 and mask.grey_area > GREY_MASK_FRACTION:
            return (f"mask is not binary: {100 * mask.grey_area:.0f}% of its foreground is grey areas, not just "
                    f"anti-aliased edges (values {shown}), which a threshold at {full / 2:g} would split without a "
                    f"word; save the mask with 0/255 (or 0/1) as you mean it")
        return None
    if low < 0 or high > num_classes - 1 or not np.array_equal(values, np.round(values)):
        return (f"mask has values {shown}, but {num_classes} classes need integer class ids 0..{num_classes - 1}"
                + (" (a 0/255 binary mask? then use out_channels 1)" if high == 255 else ""))
    return None


def _entries(datalist: Datalist) -> list[tuple[str, Mapping[str, Any]]]:
    """``[(where, entry)]`` with ``where`` like ``training[3]``, for a list or a dict of lists."""
    if isinstance(datalist, Mapping):
        return [(f"{split}[{i}]", entry) for split, items in datalist.items() if isinstance(items, list)
                for i, entry in enumerate(items)]
    return [(f"[{i}]", entry) for i, entry in enumerate(datalist)]


def validate_datalist(datalist: Datalist, num_classes: int = 2, spatial_dims: int = 2,
                      unique_stems: bool = False, in_channels: int | None = None) -> list[DatasetProblem]:
    """Every problem of the files a datalist names, one :class:`DatasetProblem` per file and problem.

    Args:
        datalist: a list of ``{"image": path, "label": path}`` dicts (``label`` optional), or a dict of
            such lists (``{"training": [...], "validation": [...]}``).
        num_classes: classes including background (2 for a binary, single-channel network).
        spatial_dims: 2 for PNG/JPEG/... pictures, 3 for NIfTI volumes.
        unique_stems: also report two images with the same file stem (inference names its outputs by stem).
        in_channels: the network's input channels; a volume with another number of channels is reported
            (pictures are read with the configured channels, grey for 1 and RGB for 3; other numbers raise
            ``ValueError`` at once, see :func:`~.readers.check_picture_channels`).

    Returns:
        the problems, in datalist order; empty when the data can be used.
    """
    if spatial_dims not in (2, 3):
        raise ConfigValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if spatial_dims == 2 and in_channels is not None:
        check_picture_channels(in_channels)
    entries = _entries(datalist)
    if not entries:
        return [DatasetProblem("datalist", "no cases to use")]
    problems = shared_case_problems(datalist) if isinstance(datalist, Mapping) else []
    seen: dict[tuple[str, str], str] = {}
    done: set[str] = set()
    stems: dict[str, str] = {}
    for where, entry in entries:
        entry_error = entry_problem(entry, spatial_dims)
        if entry_error:
            problems.append(DatasetProblem(where, entry_error))
            continue
        image = str(entry["image"])
        split = where.split("[")[0]  # a case in two lists is reported above, by shared_case_problems
        if (split, image) in seen:
            problems.append(DatasetProblem(image, f"listed twice ({seen[split, image]} and {where})"))
            continue
        seen[split, image] = where
        if image in done:
            continue  # already checked as part of another list
        done.add(image)
        if unique_stems:
            stem = _stem(image)
            if stem in stems:
                problems.append(DatasetProblem(image, f"has the same stem {stem!r} as {stems[stem]}: "
                                                      f"their outputs would overwrite each other"))
                continue
            stems[stem] = image
        problems += _validate_case(image, entry.get("label"), num_classes, spatial_dims, in_channels)
    return problems


def _validate_case(image: str, label: str | None, num_classes: int, spatial_dims: int,
                   in_channels: int | None = None) -> list[DatasetProblem]:
    try:
        picture = _read(image, spatial_dims, is_mask=False)
    except _Unusable as err:
        picture = None
        problems = [DatasetProblem(image, str(err))]
    else:
        problems = []
        if spatial_dims == 3 and in_channels is not None and picture.channels != in_channels:
            problems.append(DatasetProblem(image, f"volume has {picture.channels} channel(s), but the network takes "
                                                  f"in_channels={in_channels}: pass --in_channels {picture.channels}"))
    if label is None:
        return problems
    label = str(label)
    try:
        mask = _read(label, spatial_dims, is_mask=True)
    except _Unusable as err:
        return problems + [DatasetProblem(label, str(err))]
    if picture is not None and mask.shape != picture.shape:
        axes = "height x width" if len(mask.shape) == 2 else "shape"
        problems.append(DatasetProblem(label, f"mask {axes} {' x '.join(map(str, mask.shape))} differs from its "
                                              f"image's {' x '.join(map(str, picture.shape))} ({image})"))
    if picture is not None and picture.affine is not None and mask.affine is not None:
        geometry = _geometry_problem(mask.affine, picture.affine)
        if geometry:
            problems.append(DatasetProblem(label, f"{geometry} (image {image})"))
    value_problem = _mask_value_problem(mask, num_classes)
    if value_problem:
        problems.append(DatasetProblem(label, value_problem))
    return problems


def check_dataset(datalist: Datalist, num_classes: int = 2, spatial_dims: int = 2,
                  in_channels: int | None = None) -> Datalist:
    """Returns ``datalist`` unchanged if :func:`validate_datalist` finds nothing, else raises.

    The training and evaluation configs call this first, so bad data stops the run before a model is
    built, trained or saved. Raises ``DatasetError`` listing every problem, one line each.
    """
    problems = validate_datalist(datalist, num_classes, spatial_dims, in_channels=in_channels)
    if problems:
        raise DatasetError(problems)
    n = len(_entries(datalist))
    logger.info("dataset checked: %d case(s), no problems", n)
    return datalist


@dataclass
class ScreenedImages:
    """The images inference can segment (``good``) and the problems of the others (``problems``)."""

    good: list[dict[str, Any]]
    problems: list[DatasetProblem] = field(default_factory=list)
    report_file: str | None = None

    def raise_if_any(self) -> None:
        """Called last in inference's ``run``: after every good image has its result, fail (non-zero
        exit) if some images were skipped, so scripts notice."""
        if self.problems:
            raise DatasetError([DatasetProblem(p.path, f"skipped: {p.message}") for p in self.problems]
                               + ([DatasetProblem(self.report_file, "lists the skipped images")]
                                  if self.report_file else []))


def screen_images(datalist: Sequence[Mapping[str, Any]], spatial_dims: int = 2,
                  report_file: str | os.PathLike | None = None, in_channels: int | None = None) -> ScreenedImages:
    """Inference's check: keeps the images that can be segmented, logs an error naming each one that
    cannot, and writes those to ``report_file`` (JSON list of ``{"image", "problem"}``; a stale report of
    an earlier run is removed). Raises ``DatasetError`` only when no image is usable."""
    problems = validate_datalist(datalist, spatial_dims=spatial_dims, unique_stems=True, in_channels=in_channels)
    bad = {p.path for p in problems}
    good = [dict(entry) for where, entry in _entries(datalist)
            if where not in bad and str(entry.get("image")) not in bad]
    for problem in problems:
        logger.error("skipping %s", problem)
    if report_file is not None:
        report = Path(report_file)
        if problems:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps([{"image": p.path, "problem": p.message} for p in problems], indent=4))
            record(report.parent, [report])
        elif is_ours(report):  # a stale report of an earlier run (never a file of the user's)
            report.unlink()
    if not good:
        raise DatasetError(problems or [DatasetProblem("datalist", "no images to segment")])
    return ScreenedImages(good, problems, None if report_file is None else str(report_file))


def validate_dataset(dataset_dir: str | os.PathLike, num_classes: int = 2, spatial_dims: int = 2,
                     in_channels: int | None = None) -> tuple[list[DatasetProblem], int]:
    """:func:`validate_datalist` for what a user passes as ``--dataset_dir``: a folder with ``images/`` +
    ``masks/``, a folder with ``datalist.json`` (or the JSON itself), or a plain folder of images to
    segment (checked as inference checks it). Problems of the folder itself (missing, empty, unpaired
    files, duplicate stems) are reported with those of the files. Returns ``(problems, number of cases)``."""
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        return [DatasetProblem(str(root), "dataset_dir does not exist")], 0
    try:
        if root.is_dir() and (root / "images").is_dir() and (root / "masks").is_dir() \
                and not (root / DATALIST_NAME).is_file():
            items, problems = pair_images_and_masks(root / "images", root / "masks",
                                                    extensions=IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)
            return (problems + validate_datalist(items, num_classes, spatial_dims, in_channels=in_channels)
                    if items else problems), len(items)
        if root.is_file() or (root / DATALIST_NAME).is_file():
            lists = load_datalist(root, need_training=False)
            if not _entries(lists):  # named here: validate_datalist has no file to name
                return [DatasetProblem(str(root), "holds no cases: its 'training', 'validation' and 'test' lists are empty")], 0
            return validate_datalist(lists, num_classes, spatial_dims, in_channels=in_channels), len(_entries(lists))
        items = find_images(root)
        return validate_datalist(items, num_classes, spatial_dims, True, in_channels), len(items)
    except DatasetError as err:  # its message names the file already
        return err.problems or [DatasetProblem(str(root), str(err).removeprefix(f"{root}: ").removeprefix(f"{root} "))], 0

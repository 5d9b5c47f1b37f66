"""The bundle's default dataset: RGB images with blob-shaped lesions, generated deterministically.

It lets ``python -m monai.bundle run training --config_file configs/train.json`` work on a fresh
machine with no download: the first run writes ``<bundle_root>/data/synthetic/{images,masks}/`` and a
``datalist.json`` (training / validation / test), later runs reuse it. The images look vaguely
endoscopic (a smooth pink-orange field with vessels-like noise) with one or two darker, redder
lesions whose outlines are random star-shaped curves, so a network has to learn colour *and* shape.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .datalist import DATALIST_NAME, DatasetError

__all__ = ["make_synthetic_case", "synthetic_dataset"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, size=(max(2, shape[0] // scale), max(2, shape[1] // scale)))
    img = Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize(shape[::-1], Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def make_synthetic_case(seed: int, size: tuple[int, int] = (160, 192)) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask.

    Returns:
        ``(image, mask)``: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` uint8 with 0 = background, 255 = lesion.
        The same ``seed`` always gives the same pair.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        radius = rng.uniform(0.08, 0.22) * min(h, w)
        angle = np.arctan2(yy - cy, xx - cx)
        outline = np.ones_like(angle)
        for k in (2, 3, 5):  # a few harmonics give a lobed, blob-like outline
            outline += rng.uniform(0.0, 0.18) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
        mask |= np.hypot(yy - cy, xx - cx) <= radius * outline

    base = np.array([205.0, 120.0, 100.0]) + rng.uniform(-20, 20, size=3)
    lesion = base * np.array([0.8, 0.55, 0.55]) + rng.uniform(-10, 10, size=3)
    shading = 1.0 + 0.25 * _smooth_noise(rng, (h, w), 32)
    texture = 12.0 * _smooth_noise(rng, (h, w), 4)
    image = np.where(mask[..., None], lesion, base) * shading[..., None] + texture[..., None]
    image += rng.normal(0, 6.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def _cannot_write(root: Path, error: OSError) -> str:
    return (f"{root}: cannot write the synthetic dataset here ({error.strerror or error}); pass --dataset_dir, "
            f"or a writable --bundle_root")


def synthetic_dataset(
    root: str | os.PathLike,
    num_cases: int = 60,
    size: tuple[int, int] = (160, 192),
    num_validation: int = 10,
    num_test: int = 10,
    seed: int = 20210302,
) -> str:
    """Ensures the synthetic dataset exists under ``root`` and returns ``root`` (as a string).

    The layout is ``root/images/case_XXX.png``, ``root/masks/case_XXX.png`` (0/255) and
    ``root/datalist.json`` with ``training`` / ``validation`` / ``test`` lists. An existing
    ``root/datalist.json`` means "already generated": nothing is rewritten. Generation writes to a
    temporary folder renamed into place, so concurrent processes (DDP ranks) do not see half a dataset.
    """
    root_path = Path(root).expanduser()
    if (root_path / DATALIST_NAME).is_file():
        return str(root_path)
    if num_cases < num_validation + num_test + 1:
        raise ValueError(f"num_cases={num_cases} leaves no training cases after {num_validation} + {num_test}")
    if root_path.is_dir() and any(root_path.iterdir()):
        raise DatasetError(f"{root_path}: exists without a {DATALIST_NAME}; remove it to regenerate the synthetic data")
    try:
        root_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root_path.parent))
    except OSError as e:  # a read-only or misspelt bundle_root: one line, before any work
        raise DatasetError(_cannot_write(root_path, e)) from None
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        names = []
        for index in range(num_cases):
            image, mask = make_synthetic_case(seed + index, size)
            name = f"case_{index:03d}.png"
            Image.fromarray(image).save(tmp / "images" / name)
            Image.fromarray(mask).save(tmp / "masks" / name)
            names.append({"image": f"images/{name}", "label": f"masks/{name}"})
        n_train = num_cases - num_validation - num_test
        datalist = {
            "description": f"synthetic blobs, {size[0]}x{size[1]} RGB, seed {seed}",
            "labels": {"0": "background", "1": "lesion"},
            "training": names[:n_train],
            "validation": names[n_train : n_train + num_validation],
            "test": names[n_train + num_validation :],
        }
        (tmp / DATALIST_NAME).write_text(json.dumps(datalist, indent=4))
        if root_path.exists():
            root_path.rmdir()  # an empty folder (checked above)
        os.rename(tmp, root_path)
    except OSError as e:
        if not (root_path / DATALIST_NAME).is_file():  # a real failure (a full disk), not another process winning the race
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(_cannot_write(root_path, e)) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(root_path)

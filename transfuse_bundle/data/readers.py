"""How the configs turn any 2D image file into what the network sees: PIL converters for ``LoadImaged``.

MONAI's ``PILReader`` opens a file lazily and hands it to a ``converter`` before decoding, so the
converter decides how the pixels are decoded:

* :func:`to_rgb` (images): grey, palette, RGBA and 16-bit files all become 8-bit RGB; a 16-bit image is
  scaled from 0-65535 to 0-255 (``Image.convert('RGB')`` would clip it to white); :func:`to_grey` does the
  same to 8-bit grey, for networks with ``in_channels`` 1 (:func:`picture_converter` picks one of them);
* :func:`to_mask` (masks): values are kept as stored (``MaskToClassIdsd`` maps them to class ids);
* both reduce an image above :data:`LARGE_IMAGE_PIXELS` by the same integer factor, so an image and
  its mask keep equal sizes. JPEGs are reduced while decoding (``Image.draft``), so memory stays about
  that of a :data:`LARGE_IMAGE_PIXELS` image; other formats are decoded once, then reduced. Files above
  PIL's decompression-bomb limit (:data:`MAX_PIXELS`) are refused by PIL and reported by validation.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigValueError

__all__ = ["LARGE_IMAGE_PIXELS", "MAX_PIXELS", "PICTURE_MODES", "reduced_size", "to_rgb", "to_grey", "to_mask",
           "picture_converter", "check_picture_channels"]

#: Images with more pixels are read at a reduced size (4096 x 4096: far above the 352 x 352 the network sees).
LARGE_IMAGE_PIXELS = 4096 * 4096
#: PIL refuses to open larger files (``DecompressionBombError``); validation reports them.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: ``in_channels`` of a 2D network -> the PIL mode its pictures are read in.
PICTURE_MODES = {1: "L", 3: "RGB"}


def reduced_size(size: tuple[int, int], max_pixels: int = LARGE_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` divided by the smallest integer factor that brings it to at most ``max_pixels``
    (rounded up, as ``Image.reduce`` does); unchanged when already small enough."""
    width, height = size
    if width * height <= max_pixels:
        return size
    factor = math.ceil(math.sqrt(width * height / max_pixels))
    while math.ceil(width / factor) * math.ceil(height / factor) > max_pixels:
        factor += 1
    return math.ceil(width / factor), math.ceil(height / factor)


def to_rgb(image: Image.Image, max_pixels: int = LARGE_IMAGE_PIXELS, mode: str = "RGB") -> Image.Image:
    """Any PIL image -> 8-bit RGB (or ``mode``, e.g. ``"L"``) of at most ``max_pixels`` (a ``PILReader`` converter).

    Shapes: ``(W, H)`` in any mode -> ``(W', H')`` RGB with ``(W', H') = reduced_size((W, H))``.
    """
    target = reduced_size(image.size, max_pixels)
    if target != image.size and image.format == "JPEG":
        image.draft(mode, target)  # decode at 1/2, 1/4 or 1/8 scale: memory bounded from the start
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    image = image.convert(mode)
    return image if image.size == target else image.resize(target, Image.Resampling.BOX)


def to_grey(image: Image.Image, max_pixels: int = LARGE_IMAGE_PIXELS) -> Image.Image:
    """Any PIL image -> 8-bit grey (``"L"``: ITU-R 601 luma of a colour image), as :func:`to_rgb` reads it.

    Shapes: ``(W, H)`` in any mode -> ``(W', H')`` grey with ``(W', H') = reduced_size((W, H))``.
    """
    return to_rgb(image, max_pixels, mode="L")


def check_picture_channels(in_channels: int) -> int:
    """Returns ``in_channels`` if 2D pictures can be read with that many channels (:data:`PICTURE_MODES`),
    else raises a one-line ``ConfigValueError`` (a ``ValueError``) before any work."""
    if int(in_channels) not in PICTURE_MODES:
        raise ConfigValueError(f"in_channels={in_channels}: 2D pictures are read as 1 (grey) or 3 (RGB) channels; "
                         f"use --in_channels 1 or 3 (other channel counts need volumes with that many channels)")
    return int(in_channels)


def picture_converter(in_channels: int = 3) -> Callable[[Image.Image], Image.Image]:
    """The ``PILReader`` converter for a 2D network with ``in_channels`` (1: :func:`to_grey`, 3: :func:`to_rgb`)."""
    return {1: to_grey, 3: to_rgb}[check_picture_channels(in_channels)]


def to_mask(image: Image.Image, max_pixels: int = LARGE_IMAGE_PIXELS) -> Image.Image:
    """A mask file with its stored values, reduced like :func:`to_rgb` reduces its image (nearest
    neighbour, so class ids stay class ids). Shapes: ``(W, H)`` -> ``reduced_size((W, H))``, same mode."""
    target = reduced_size(image.size, max_pixels)
    return image if image.size == target else image.resize(target, Image.Resampling.NEAREST)


def _hide_dicom_decoder_warnings() -> None:
    """MONAI's ``LoadImage`` builds every reader it knows, whichever reader it is given; building the DICOM one
    (``NvImgCodecPydicomReader``) logs a warning and warns that nvImageCodec, a GPU DICOM decoder, is missing,
    twice per ``LoadImaged`` of a config. The bundle reads pictures and NIfTI volumes, never DICOM, so those
    two messages say nothing to its users at every start; only they are hidden."""
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(
        lambda record: "nvImageCodec is not available" not in record.getMessage())
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")


_hide_dicom_decoder_warnings()

"""How the configs turn any 2D image file into what the network sees: PIL converters for ``LoadImaged``.

MONAI's ``PILReader`` opens a file lazily and hands it to a ``converter`` before decoding, so the
converter decides how the pixels are decoded:

* :func:`to_rgb` (images): grey, palette, RGBA and 16-bit files all become 8-bit RGB; a 16-bit image is
  scaled from its bit depth (:func:`full_scale`: the PNG ``sBIT`` chunk, else the smallest of 8, 10, 12, 14
  or 16 bits that holds its largest value, so a 12-bit X-ray uses the whole 0-255 range rather than 1/16 of
  it) to 0-255 (``Image.convert('RGB')`` would clip it to white); :func:`to_grey` does the same to 8-bit
  grey, for networks with ``in_channels`` 1 (:func:`picture_converter` picks one of them);
* :func:`to_mask` (masks): values are kept as stored (``MaskToClassIdsd`` maps them to class ids), but a
  mask drawn in the alpha channel (colour the same everywhere, alpha varying) is read from its alpha
  channel (:func:`mask_channels`);
* both reduce an image above :data:`LARGE_IMAGE_PIXELS` by the same integer factor, so an image and
  its mask keep equal sizes. JPEGs are reduced while decoding (``Image.draft``), so memory stays about
  that of a :data:`LARGE_IMAGE_PIXELS` image; other formats are decoded once, then reduced. Files above
  PIL's decompression-bomb limit (:data:`MAX_PIXELS`) are refused by PIL and reported by validation.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import warnings
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigValueError

__all__ = ["LARGE_IMAGE_PIXELS", "MAX_PIXELS", "PICTURE_MODES", "reduced_size", "to_rgb", "to_grey", "to_mask",
           "picture_converter", "check_picture_channels", "full_scale", "png_significant_bits", "mask_channels"]

#: Images with more pixels are read at a reduced size (4096 x 4096: far above the 352 x 352 the network sees).
LARGE_IMAGE_PIXELS = 4096 * 4096
#: PIL refuses to open larger files (``DecompressionBombError``); validation reports them.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: ``in_channels`` of a 2D network -> the PIL mode its pictures are read in.
PICTURE_MODES = {1: "L", 3: "RGB"}


#: Bit depths of grey images in 16-bit containers (X-ray and CT detectors store 10, 12, 14 or 16 bits).
_BIT_DEPTHS = (8, 10, 12, 14, 16)


def full_scale(max_value: float, significant_bits: int | None = None) -> int:
    """The stored value that means full intensity: ``2**bits - 1`` for the file's significant bits (the PNG
    ``sBIT`` chunk) when known and no value exceeds it (a PNG encoder that follows the standard scales the
    samples up to 16 bits and keeps ``sBIT`` as a note: then the values decide), else 1 for 0/1 data and, for larger values, the smallest of 8, 10, 12, 14 or
    16 bits that holds ``max_value`` (``4095`` for a 12-bit X-ray in a 16-bit PNG; ``255`` for 0/255 masks).
    Images are scaled by ``255 / full_scale``; binary masks are thresholded at half of it."""
    if significant_bits and max_value <= 2 ** int(significant_bits) - 1:  # raw N-bit values, as most tools store them
        return 2 ** int(significant_bits) - 1
    if max_value <= 1:
        return 1
    bits = next((b for b in _BIT_DEPTHS if max_value < 2 ** b), int(max_value).bit_length())
    return 2 ** bits - 1


def png_significant_bits(path: str | os.PathLike) -> int | None:
    """The largest colour entry of a PNG file's ``sBIT`` chunk (how many bits of each 16-bit sample hold data,
    e.g. 12 for a 12-bit X-ray), or None when the file is not a PNG or has no ``sBIT`` before its pixels.
    Pillow does not read this chunk; only the chunk headers before the first ``IDAT`` are read."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            colour_type = None
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    return None
                data = handle.read(length)
                handle.seek(4, os.SEEK_CUR)  # CRC
                if kind == b"IHDR" and len(data) >= 10:
                    colour_type = data[9]
                elif kind == b"sBIT" and data:
                    colour = data[:-1] if colour_type in (4, 6) and len(data) > 1 else data  # alpha comes last
                    return max(colour) or None
    except OSError:
        return None


def mask_channels(image: Image.Image) -> Image.Image:
    """A mask as its values are meant: an RGBA or LA mask whose colour is the same everywhere while its alpha
    varies (a mask painted as opacity, e.g. white with a transparent background) is its alpha channel (mode
    ``L``); any other mask is returned as it is (the colour channels hold the mask, see ``MaskToClassIdsd``)."""
    if image.mode not in ("RGBA", "LA"):
        return image
    *colour, alpha = image.split()
    flat = all(low == high for low, high in (band.getextrema() for band in colour))
    low, high = alpha.getextrema()
    return alpha if flat and low != high else image


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
        pixels = np.asarray(image, dtype=np.float32)
        bits = png_significant_bits(image.filename) if image.format == "PNG" and getattr(image, "filename", "") else None
        pixels *= 255.0 / full_scale(float(pixels.max(initial=0)), bits)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":  # 32-bit float (TIFF): 0-1 data is scaled like 0-255 data is kept (full_scale)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels * (255.0 / full_scale(float(np.nanmax(pixels, initial=0))))
        image = Image.fromarray(np.clip(np.rint(np.nan_to_num(pixels)), 0, 255).astype(np.uint8), mode="L")
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
    """A mask file with its stored values (its alpha channel for a mask painted as opacity, see
    :func:`mask_channels`), reduced like :func:`to_rgb` reduces its image (nearest neighbour, so class ids stay
    class ids). Shapes: ``(W, H)`` -> ``reduced_size((W, H))``, same mode (``L`` for an alpha mask)."""
    target = reduced_size(image.size, max_pixels)
    image = mask_channels(image)
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

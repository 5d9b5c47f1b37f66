"""Transforms the configs add to MONAI's: turning any mask file into class ids, ImageNet statistics."""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize
from PIL import Image

from ..errors import ConfigValueError
from .readers import check_picture_channels, full_scale

__all__ = ["MaskToClassIdsd", "ResizeToSourced", "IMAGENET_MEAN_255", "IMAGENET_STD_255", "imagenet_mean_255",
           "imagenet_std_255"]

#: ImageNet mean and std per RGB channel, on the 0-255 scale of 8-bit images.
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
#: PIL's grey conversion (ITU-R 601 luma), which :func:`~.readers.to_grey` applies to colour pictures.
_LUMA = (0.299, 0.587, 0.114)


def _per_channel(rgb: tuple[float, float, float], in_channels: int) -> tuple[float, ...]:
    if check_picture_channels(in_channels) == 3:
        return rgb
    # grey: the luma of the RGB statistic (exact for the mean; for the std, an upper bound that is
    # close because ImageNet's colour channels are strongly correlated)
    return (sum(w * v for w, v in zip(_LUMA, rgb)),)


def imagenet_mean_255(in_channels: int = 3) -> tuple[float, ...]:
    """ImageNet's mean on the 0-255 scale for pictures read with ``in_channels`` (3: RGB, 1: grey)."""
    return _per_channel(IMAGENET_MEAN_255, in_channels)


def imagenet_std_255(in_channels: int = 3) -> tuple[float, ...]:
    """ImageNet's std on the 0-255 scale for pictures read with ``in_channels`` (3: RGB, 1: grey)."""
    return _per_channel(IMAGENET_STD_255, in_channels)


class MaskToClassIdsd(MapTransform):
    """Masks as stored on disk -> one channel of class ids (float32), channel first.

    * several channels (an RGB or RGBA mask): the maximum over the colour channels is used
      (a white-on-black mask becomes one channel); an alpha channel is ignored (a mask painted as
      opacity was read from its alpha channel already, see :func:`~.readers.to_mask`);
    * ``num_classes == 2`` (binary): thresholded at half their full scale (:func:`~.readers.full_scale`: 128
      for 0/255 masks, 0.5 for 0/1, 2048 for a 12-bit 0/4095 mask), so JPEG noise and anti-aliased edges still
      give a 0/1 mask (validation refuses masks with grey areas, which no threshold reads as meant);
    * ``num_classes > 2``: values must already be class ids in ``[0, num_classes - 1]``.

    Args:
        keys: the mask keys, e.g. ``"label"``.
        num_classes: number of classes including background (2 for a single-channel binary network).

    Shapes: ``(C, *spatial)`` -> ``(1, *spatial)``. Raises ``ValueError`` naming the mask file when
    the values cannot be class ids.
    """

    def __init__(self, keys: KeysCollection, num_classes: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_classes) < 2:
            raise ConfigValueError(f"num_classes counts the background too and must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            if mask.shape[0] > 1:
                mask = mask[:3].amax(dim=0, keepdim=True)
            mask = mask.float()
            if self.num_classes == 2:
                mask = (mask >= full_scale(float(mask.max())) / 2).float()
            else:
                low, high = mask.min().item(), mask.max().item()
                if low < 0 or high > self.num_classes - 1 or not torch.equal(mask, mask.round()):
                    source = getattr(mask, "meta", {}).get("filename_or_obj", key)
                    raise ValueError(
                        f"mask {source} has values in [{low:g}, {high:g}]; {self.num_classes} classes need "
                        f"integer class ids 0..{self.num_classes - 1}"
                    )
            d[key] = mask
        return d


class ResizeToSourced(MapTransform):
    """Nearest-neighbour resize of 2D predictions to the pixel size of the image file they were computed from.

    Images above :data:`~transfuse_bundle.data.readers.LARGE_IMAGE_PIXELS` are read reduced
    (:func:`~transfuse_bundle.data.readers.to_rgb`), so ``Invertd`` returns their prediction at the reduced
    size; this brings it to the file's own size so that written masks line up with the original image.
    Only the file's header is read; predictions already at the file's size are returned unchanged.
    The source image's ``spatial_shape`` (the size it was read at) becomes the file's size too, in a new
    ``MetaTensor`` sharing its data: MONAI Label restores every prediction to that size after this step
    (``Restored``), and with the reduced size it shrank one side of the full-size mask (10000 x 3334 for a
    10000 x 10000 image).

    Args:
        keys: the prediction keys, e.g. ``"pred"`` (after ``Invertd``, before dropping the channel).
        source_key: the key whose ``meta["filename_or_obj"]`` names the image file.

    Shapes: ``(C, W', H')`` -> ``(C, W, H)`` in ``PILReader``'s layout (width first), ``(W, H)`` the file's size.
    """

    def __init__(self, keys: KeysCollection, source_key: str = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        with Image.open(d[self.source_key].meta["filename_or_obj"]) as source:
            size = source.size
        for key in self.key_iterator(d):
            if tuple(d[key].shape[1:]) != size:
                d[key] = Resize(spatial_size=size, mode="nearest")(d[key])
        source = d[self.source_key]
        if isinstance(source, MetaTensor) and tuple(source.meta.get("spatial_shape", size)) != size:
            d[self.source_key] = MetaTensor(source.as_tensor(), meta={**source.meta, "spatial_shape": np.asarray(size)},
                                            applied_operations=source.applied_operations)
        return d

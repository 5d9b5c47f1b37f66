"""The training loss of TransFuse: PraNet's "structure loss" (boundary-weighted BCE + weighted IoU).

The official code (``train_isic.py``) computes, per head and per image::

    weit  = 1 + 5 * |avg_pool2d(mask, 31, stride=1, padding=15) - mask|
    wbce  = sum(weit * bce_with_logits(pred, mask)) / sum(weit)
    wiou  = 1 - (sum(sigmoid(pred) * mask * weit) + 1) / (sum((sigmoid(pred) + mask) * weit) - inter + 1)
    loss  = mean_batch(wbce + wiou)

and combines the three heads with 0.5 / 0.3 / 0.2 (use MONAI's ``DeepSupervisionLoss`` for that,
see :func:`transfuse_deep_supervision_loss`). Differences from the official code, on purpose:

* the local mean is taken with *replicate* padding: zero padding makes every pixel near the image
  border look like a boundary and inflates its weight (official problem 9);
* everything runs in float32 (the official code casts to float64);
* more than one output channel means softmax over N classes (class 0 = background) with a one-hot
  target: the weighted cross-entropy uses, per pixel, the largest boundary weight over the classes,
  and the weighted IoU is averaged over the foreground classes.

:class:`OfficialStructureLoss` keeps the official computation (zero padding, float64), for the
official-recipe overlay ``configs/recipes/official.json`` and the benchmark's official baseline.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

__all__ = [
    "StructureLoss", "OfficialStructureLoss", "official_structure_loss", "boundary_weights",
    "transfuse_deep_supervision_loss", "DEEP_SUPERVISION_WEIGHTS",
]

#: Weights of (map_2, map_1, map_x), the order in which TransFuse returns its heads.
DEEP_SUPERVISION_WEIGHTS = (0.5, 0.3, 0.2)


def boundary_weights(mask: torch.Tensor, kernel_size: int = 31, boundary_weight: float = 5.0) -> torch.Tensor:
    """Per-pixel weights ``1 + boundary_weight * |local_mean(mask) - mask|``.

    Args:
        mask: ``(B, C, H, W)`` float masks in [0, 1] (one channel per class).
        kernel_size: odd side of the averaging window (31 in the official code, at 352x352).
        boundary_weight: extra weight of a pixel whose neighbourhood is half foreground (5 officially).

    Returns:
        ``(B, C, H, W)`` weights >= 1; 1 far from any boundary, up to ``1 + boundary_weight`` near one.
        Replicate padding keeps the weights at the image border equal to 1 when the mask is flat there.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    pad = kernel_size // 2
    padded = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
    # The box mean is separable: a k x 1 then a 1 x k mean equals the k x k mean, at 2k instead of
    # k^2 operations per pixel (62 vs 961 for the official 31).
    local_mean = F.avg_pool2d(F.avg_pool2d(padded, kernel_size=(kernel_size, 1), stride=1), kernel_size=(1, kernel_size), stride=1)
    return 1.0 + boundary_weight * torch.abs(local_mean - mask)


class StructureLoss(_Loss):
    """Boundary-weighted BCE (or cross-entropy) plus weighted IoU, on logits.

    Args:
        kernel_size: side of the window that defines "near a boundary" (see :func:`boundary_weights`).
        boundary_weight: extra weight near boundaries.
        smooth: added to the IoU numerator and denominator (1 in the official code).

    Shapes:
        ``logits``: ``(B, C, H, W)``; ``C == 1`` binary (sigmoid), ``C > 1`` softmax over C classes.
        ``target``: ``(B, 1, H, W)`` or ``(B, H, W)`` class ids (0/1 for binary; float or int dtype).
        Returns a scalar: the batch mean of the per-image losses.
    """

    def __init__(self, kernel_size: int = 31, boundary_weight: float = 5.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.boundary_weight = float(boundary_weight)
        self.smooth = float(smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4:
            raise ValueError(f"StructureLoss expects (B, C, H, W) logits, got shape {tuple(logits.shape)}")
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if target.shape[0] != logits.shape[0] or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"target must be (B, 1, H, W) class ids matching logits {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        logits = logits.float()
        target = torch.as_tensor(target, device=logits.device).float()
        num_channels = logits.shape[1]
        if num_channels == 1:
            return self._binary(logits, target)
        return self._multiclass(logits, target.round().long(), num_channels)

    def _binary(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(
                f"binary StructureLoss needs a 0/1 target, got values in [{mask.min().item()}, {mask.max().item()}]; "
                "map 0/255 masks to 0/1 first"
            )
        weit = boundary_weights(mask, self.kernel_size, self.boundary_weight)
        wbce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
        wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
        prob = torch.sigmoid(logits)
        wiou = self._weighted_iou(prob, mask, weit)
        return (wbce + wiou).mean()

    def _multiclass(self, logits: torch.Tensor, ids: torch.Tensor, num_classes: int) -> torch.Tensor:
        if ids.min() < 0 or ids.max() >= num_classes:
            raise ValueError(
                f"target class ids must be in [0, {num_classes - 1}] for {num_classes} output channels, "
                f"got values in [{ids.min().item()}, {ids.max().item()}]"
            )
        one_hot = F.one_hot(ids[:, 0], num_classes).permute(0, 3, 1, 2).float()  # (B, C, H, W)
        weit = boundary_weights(one_hot, self.kernel_size, self.boundary_weight)
        pixel_weight = weit.amax(dim=1)  # (B, H, W): near the boundary of any class
        ce = F.cross_entropy(logits, ids[:, 0], reduction="none")
        wce = (pixel_weight * ce).sum(dim=(1, 2)) / pixel_weight.sum(dim=(1, 2))  # (B,)
        prob = torch.softmax(logits, dim=1)
        wiou = self._weighted_iou(prob[:, 1:], one_hot[:, 1:], weit[:, 1:]).mean(dim=1)  # foreground classes
        return (wce + wiou).mean()

    def _weighted_iou(self, prob: torch.Tensor, mask: torch.Tensor, weit: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` weighted IoU losses from ``(B, C, H, W)`` probabilities, masks and weights."""
        inter = (prob * mask * weit).sum(dim=(2, 3))
        union = ((prob + mask) * weit).sum(dim=(2, 3))
        return 1.0 - (inter + self.smooth) / (union - inter + self.smooth)


def official_structure_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official training loss of one head (``train_isic.py``), computed exactly as it is there.

    Zero-padded 31x31 local mean (so the boundary weight inflates at the image border) and float64
    throughout. ``logits`` and ``mask``: ``(B, 1, H, W)``, ``mask`` in [0, 1] (the official masks are
    resized bilinearly and not re-binarised, so soft values are expected). Returns a float64 scalar.
    """
    logits, mask = logits.double(), mask.double()
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    wbce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weit).sum(dim=(2, 3))
    union = ((prob + mask) * weit).sum(dim=(2, 3))
    return (wbce + 1 - (inter + 1) / (union - inter + 1)).mean()


class OfficialStructureLoss(_Loss):
    """:func:`official_structure_loss` as a loss module, for the official-recipe overlay
    (``configs/recipes/official.json``) and the benchmark's official baseline. Binary only, as the
    official code.

    Shapes: ``logits`` ``(B, 1, H, W)``; ``target`` ``(B, 1, H, W)`` or ``(B, H, W)`` in [0, 1].
    Returns a float64 scalar.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 3:
            target = target.unsqueeze(1)
        if logits.ndim != 4 or logits.shape[1] != 1 or target.shape != logits.shape:
            raise ValueError(
                "OfficialStructureLoss is binary: it needs (B, 1, H, W) logits and a target of the same shape, "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        return official_structure_loss(logits, torch.as_tensor(target, device=logits.device))


def transfuse_deep_supervision_loss(
    weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS, **structure_loss_kwargs
) -> DeepSupervisionLoss:
    """MONAI ``DeepSupervisionLoss`` over :class:`StructureLoss` for TransFuse's ``(map_2, map_1, map_x)``.

    In training mode the network returns a tuple of three ``(B, C, H, W)`` logits; the loss is
    ``0.5 * L(map_2) + 0.3 * L(map_1) + 0.2 * L(map_x)``. A single tensor gets ``L(tensor)``.
    """
    return DeepSupervisionLoss(StructureLoss(**structure_loss_kwargs), weights=list(weights))

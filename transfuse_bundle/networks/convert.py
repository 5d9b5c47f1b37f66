"""Convert official TransFuse checkpoints (github.com/Rayicer/TransFuse) to this package's layout."""

from __future__ import annotations

import logging
import re
from typing import Mapping, Sequence

import torch

from .backbones import resize_token_grid
from .sizes import SIZE_MULTIPLE, check_image_size

__all__ = ["convert_official_state_dict"]

logger = logging.getLogger(__name__)

OFFICIAL_GRID = (12, 16)  # the official model only runs 192x256 inputs

# Official top-level module -> ours.
_MODULES = {
    "resnet": "cnn",
    "transformer": "vit",
    "up1": "vit_up1",
    "up2": "vit_up2",
    "up_c": "fusion16",
    "up_c_1_1": "fusion8",
    "up_c_2_1": "fusion4",
    "up_c_1_2": "fused_up8",
    "up_c_2_2": "fused_up4",
    "final_x": "head_coarse",
    "final_1": "head_vit",
    "final_2": "head_fused",
}
# Official nn.Sequential indices inside DoubleConv and the attention gate -> our named ConvBN parts.
_INNER = [
    (re.compile(r"\.conv\.double_conv\.0\."), ".conv.conv1.conv."),
    (re.compile(r"\.conv\.double_conv\.1\."), ".conv.conv1.bn."),
    (re.compile(r"\.conv\.double_conv\.3\."), ".conv.conv2.conv."),
    (re.compile(r"\.conv\.double_conv\.4\."), ".conv.conv2.bn."),
    (re.compile(r"\.conv\.identity\.0\."), ".conv.shortcut.conv."),
    (re.compile(r"\.conv\.identity\.1\."), ".conv.shortcut.bn."),
    (re.compile(r"\.attn_block\.(W_g|W_x|psi)\.0\."), r".attn_block.\1.conv."),
    (re.compile(r"\.attn_block\.(W_g|W_x|psi)\.1\."), r".attn_block.\1.bn."),
]
# Official tensors TransFuse never uses: the class token (problem 5 of the official code) and
# the removed classifier / layer4, should a checkpoint still carry them.
_UNUSED = re.compile(r"^(transformer\.cls_token|transformer\.head\.|resnet\.fc\.|resnet\.layer4\.)")


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], img_size: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Map an official ``TransFuse_S`` state dict to :class:`~transfuse_bundle.networks.TransFuse` keys.

    The result loads into ``TransFuse(variant="S", out_channels=<official num_classes>)`` with
    ``strict=True``. Values are not changed (cast them yourself, e.g. float16 -> float32), except the
    position embedding when ``img_size`` is given: the official one is for 192x256 (a 12x16 grid)
    and is then resized bilinearly (align_corners=True) to ``img_size // 16``.

    Args:
        state_dict: the official ``model.state_dict()`` (a ``module.`` prefix from DataParallel is removed).
        img_size: the ``(H, W)`` of the target model, if not 192x256.
    """
    converted: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if _UNUSED.match(key):
            dropped.append(key)
            continue
        top, _, rest = key.partition(".")
        if top not in _MODULES:
            raise KeyError(f"{key!r} is not a key of the official TransFuse_S state dict")
        new_key = f"{_MODULES[top]}.{rest}"
        for pattern, replacement in _INNER:
            new_key = pattern.sub(replacement, new_key)
        converted[new_key] = value
    if img_size is not None and "vit.pos_embed" in converted:
        h, w = check_image_size(img_size, "convert_official_state_dict")
        grid = (h // SIZE_MULTIPLE, w // SIZE_MULTIPLE)
        pos = converted["vit.pos_embed"]
        if pos.shape[1] != grid[0] * grid[1]:
            converted["vit.pos_embed"] = resize_token_grid(pos.float(), *OFFICIAL_GRID, *grid).to(pos.dtype)
    if dropped:
        logger.info("dropped official tensors that TransFuse never uses: %s", ", ".join(dropped))
    return converted

"""The two encoder branches of TransFuse, built from timm by name.

- :func:`create_cnn_encoder`: any timm CNN that has features at strides 4, 8 and 16
  (``features_only=True``; deeper stages are not built).
- :class:`ViTEncoder`: the patch embedding, blocks and final norm of any timm ViT, without a class
  token, whose absolute position embedding is resized to the token grid of the input.

Pretrained weights come through timm (its hub cache, or a local file via ``pretrained_cfg_overlay``)
and are adapted here exactly as the official code does, strictly, logging every dropped tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["create_cnn_encoder", "ViTEncoder", "resize_pos_embed", "resize_token_grid", "REQUIRED_STRIDES"]

logger = logging.getLogger(__name__)

REQUIRED_STRIDES = (4, 8, 16)


def _create_timm(name: str, pretrained: bool, weights_file: str | None, **kwargs) -> nn.Module:
    """``timm.create_model`` with ImageNet weights from the hub (``pretrained``) or from a local file.

    timm does the download (or reads its cache) and the strict loading; a failed fetch is turned into
    an error that says how to work offline.
    """
    if weights_file is not None:
        if not Path(weights_file).is_file():
            raise FileNotFoundError(f"pretrained weights file for {name!r} not found: {weights_file}")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights_file)}, **kwargs)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as err:  # huggingface_hub's offline / not-found errors are OSErrors
        raise RuntimeError(
            f"could not fetch the ImageNet weights of {name!r} ({err}). Offline, save the timm model's "
            f"state dict once and pass its path (cnn_weights= / vit_weights=), or use pretrained=False."
        ) from err


def create_cnn_encoder(name: str, in_channels: int, pretrained: bool = False, weights_file: str | None = None) -> nn.Module:
    """A timm CNN returning its feature maps at strides 4, 8 and 16, in that order.

    Args:
        name: timm model name, optionally with a pretrained tag (``"resnet34.tv_in1k"``).
        in_channels: input channels; timm adapts pretrained first-layer weights to them.
        pretrained: load the tag's ImageNet weights through timm (needs the hub or its cache).
        weights_file: load the weights from this local file instead (a state dict of the timm model).

    Returns:
        a ``features_only`` module: ``(B, in_channels, H, W) -> [(B, C4, H/4, W/4), (B, C8, H/8, W/8),
        (B, C16, H/16, W/16)]``, with ``module.feature_info.channels()`` giving ``[C4, C8, C16]``.
    """
    common = {"features_only": True, "in_chans": in_channels}
    try:
        probe = timm.create_model(name, pretrained=False, **common)
    except RuntimeError as err:  # timm raises RuntimeError for unknown names
        raise ValueError(f"unknown timm CNN {name!r}: {err}") from err
    reductions = probe.feature_info.reduction()
    missing = [s for s in REQUIRED_STRIDES if s not in reductions]
    if missing:
        raise ValueError(
            f"CNN {name!r} has features at strides {reductions}; TransFuse needs strides {list(REQUIRED_STRIDES)}"
        )
    out_indices = tuple(reductions.index(s) for s in REQUIRED_STRIDES)
    del probe
    # Built again with only the needed stages, so layers deeper than stride 16 do not exist at all.
    return _create_timm(name, pretrained, weights_file, out_indices=out_indices, **common)


def resize_pos_embed(pos_embed: torch.Tensor, grid: Sequence[int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """Resize an absolute position embedding to a token grid, as the official TransFuse does.

    Drops ``num_prefix_tokens`` leading slots (class/distillation tokens), then resizes the square
    (or ``grid``-shaped) patch grid bilinearly with ``align_corners=True``.
    ``(1, prefix + h*w, C) -> (1, grid[0]*grid[1], C)``; ``h == w`` is assumed when not a known grid.
    """
    pe = pos_embed[:, num_prefix_tokens:]
    n = pe.shape[1]
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"position embedding with {n} patch tokens is not a square grid; cannot resize it")
    return resize_token_grid(pe, side, side, int(grid[0]), int(grid[1]))


class ViTEncoder(nn.Module):
    """A timm ViT without class token: patch embedding + position embedding + blocks + LayerNorm.

    Args:
        name: timm ViT name, optionally with a pretrained tag (``"deit_small_patch16_224.fb_in1k"``).
        in_channels: input channels of the patch embedding.
        img_size: ``(H, W)`` the position embedding is stored for; other inputs (multiples of the patch
            size) get it resized on the fly, bilinearly with ``align_corners=True``.
        depth: number of transformer blocks (the first ``depth`` of a pretrained model are kept).
        pretrained / weights_file: as in :func:`create_cnn_encoder`.

    ``(B, in_channels, H, W) -> (B, embed_dim, H/p, W/p)`` with ``p`` the patch size.
    """

    def __init__(self, name: str, in_channels: int, img_size: Sequence[int], depth: int,
                 pretrained: bool = False, weights_file: str | None = None):
        super().__init__()
        kwargs = {"img_size": tuple(img_size), "in_chans": in_channels, "depth": depth, "class_token": False,
                  "global_pool": "", "num_classes": 0}
        try:
            vit = timm.create_model(name, pretrained=False, **kwargs)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"cannot build timm ViT {name!r} without class token: {err}") from err
        if getattr(vit, "pos_embed", None) is None or not hasattr(vit, "blocks"):
            raise ValueError(f"timm model {name!r} is not a ViT with an absolute position embedding")
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
        self.grid = (int(img_size[0]) // self.patch_size, int(img_size[1]) // self.patch_size)
        self.patch_embed = vit.patch_embed
        self.pos_embed = vit.pos_embed
        self.blocks = vit.blocks
        self.norm = vit.norm
        if pretrained or weights_file is not None:
            self.load_timm_weights(name, in_channels, pretrained, weights_file)

    def load_timm_weights(self, name: str, in_channels: int, pretrained: bool, weights_file: str | None) -> None:
        """Load ImageNet weights of the full timm model, adapted: class slot dropped, position embedding
        resized to the grid, blocks beyond ``depth`` dropped, classifier dropped. Everything else loads
        strictly; every dropped tensor is logged."""
        source = _create_timm(name, pretrained, weights_file, in_chans=in_channels)
        state = source.state_dict()
        prefix_tokens = int(getattr(source, "num_prefix_tokens", 1))
        own = set(self.state_dict())
        adapted, dropped = {}, []
        for key, value in state.items():
            if key == "pos_embed":
                adapted[key] = resize_pos_embed(value, self.grid, prefix_tokens)
            elif key in own:
                adapted[key] = value
            else:
                dropped.append(key)
        self.load_state_dict(adapted, strict=True)
        logger.info("loaded %s weights into the ViT branch (grid %s); position embedding resized from %s; "
                    "dropped %d tensors not used by TransFuse: %s", name, self.grid, tuple(state["pos_embed"].shape),
                    len(dropped), ", ".join(dropped))

    def embed_feature_map(self, channels: int) -> None:
        """Take a stride-16 feature map of ``channels`` instead of the image (sequential composition):
        the 16x16 patch projection becomes a 1x1 convolution, as in hybrid ViTs."""
        self.patch_embed.proj = nn.Conv2d(channels, self.embed_dim, kernel_size=1)
        logger.info("ViT patch embedding replaced by a 1x1 projection of %d-channel CNN features", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x)  # (B, C, h, w); timm's PatchEmbed forward would insist on img_size
        h, w = x.shape[2], x.shape[3]
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        pos = self.pos_embed
        if h != self.grid[0] or w != self.grid[1]:
            pos = resize_token_grid(pos, self.grid[0], self.grid[1], h, w)
        x = self.blocks(x + pos)
        x = self.norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def resize_token_grid(pos: torch.Tensor, gh: int, gw: int, h: int, w: int) -> torch.Tensor:
    """Resize a position embedding laid out on a ``gh x gw`` token grid to ``h x w``.

    ``(1, gh*gw, C) -> (1, h*w, C)``, bilinear with ``align_corners=True`` as the official code.
    """
    c = pos.shape[2]
    grid = pos.transpose(1, 2).reshape(1, c, gh, gw)
    return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)

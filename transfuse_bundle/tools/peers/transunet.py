"""TransUNet (Chen et al. 2021): a hybrid CNN-then-ViT encoder and a cascaded upsampler (CUP).

The encoder is timm's hybrid ViT (``vit_base_r50_s16_224``: ResNetV2-50 stages 1-3, then a 1x1
patch projection of the stride-16 features and 12 ViT-B blocks); the decoder is the paper's CUP
with skips from the CNN at strides 8, 4 and 2.
"""

from __future__ import annotations

from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ...networks.backbones import resize_token_grid
from ...networks.blocks import ConvBN, init_decoder_weights
from ...networks.sizes import SIZE_MULTIPLE, check_image_size, check_input_shape

__all__ = ["TransUNet"]


class _DecoderBlock(nn.Module):
    """Bilinear x2 (align_corners=True), concatenate the skip, two Conv3x3-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int):
        super().__init__()
        self.conv1 = ConvBN(in_channels + skip_channels, out_channels, 3, bn=True, relu=True, bias=False)
        self.conv2 = ConvBN(out_channels, out_channels, 3, bn=True, relu=True, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class TransUNet(nn.Module):
    """TransUNet R50-ViT-B/16 for 2D segmentation.

    Args:
        in_channels: image channels.
        out_channels: 1 (sigmoid) or N classes (softmax), as :class:`TransFuse`.
        img_size: ``(H, W)`` multiples of 16 the position embedding is stored for (resized on the fly
            for other inputs).
        vit_name: a timm hybrid ViT whose ``patch_embed`` has a ResNetV2 ``backbone``.
        vit_depth: transformer blocks (12 in the paper).
        decoder_channels: widths of the four CUP blocks.
        pretrained: timm ImageNet weights for the whole hybrid encoder.
        dropout: Dropout2d before the decoder (MONAI Label's epistemic scoring sets it).

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits, in training and eval mode.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, img_size: int | Sequence[int] = (224, 224),
                 vit_name: str = "vit_base_r50_s16_224", vit_depth: int = 12,
                 decoder_channels: Sequence[int] = (256, 128, 64, 16), pretrained: bool = False, dropout: float = 0.0):
        super().__init__()
        size = check_image_size(img_size, "TransUNet")
        vit = timm.create_model(vit_name, pretrained=pretrained, img_size=size, in_chans=in_channels, depth=vit_depth,
                                num_classes=0, global_pool="", class_token=False)
        backbone = getattr(vit.patch_embed, "backbone", None)
        if backbone is None or not hasattr(backbone, "stages"):
            raise ValueError(f"{vit_name!r} is not a hybrid ViT with a ResNetV2 backbone")
        self.stem = backbone.stem
        self.stages = backbone.stages
        self.proj = vit.patch_embed.proj
        self.pos_embed = vit.pos_embed
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.grid = (size[0] // SIZE_MULTIPLE, size[1] // SIZE_MULTIPLE)
        self.drop = nn.Dropout2d(dropout)

        skip_channels = [info["num_chs"] for info in backbone.feature_info][:3][::-1]  # strides 8, 4, 2
        embed_dim = int(vit.embed_dim)
        head = 512
        self.conv_more = ConvBN(embed_dim, head, 3, bn=True, relu=True, bias=False)
        in_chs = [head, *decoder_channels[:-1]]
        skips = [*skip_channels, 0]
        self.decoder = nn.ModuleList(_DecoderBlock(i, o, s) for i, o, s in zip(in_chs, decoder_channels, skips))
        self.head = nn.Conv2d(decoder_channels[-1], out_channels, 3, padding=1)
        for module in (self.conv_more, self.decoder, self.head):
            module.apply(init_decoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        check_input_shape(h, w, "TransUNet")
        root = self.stem.norm(self.stem.conv(x))  # stride 2
        skips = [root]
        y = self.stem.pool(root)
        for i, stage in enumerate(self.stages):
            y = stage(y)
            if i < len(self.stages) - 1:
                skips.append(y)  # strides 4, 8
        tokens = self.proj(y)
        gh, gw = tokens.shape[2], tokens.shape[3]
        tokens = tokens.flatten(2).transpose(1, 2)
        pos = self.pos_embed
        if gh != self.grid[0] or gw != self.grid[1]:
            pos = resize_token_grid(pos, self.grid[0], self.grid[1], gh, gw)
        tokens = self.norm(self.blocks(tokens + pos))
        y = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)
        y = self.drop(self.conv_more(y))
        for i, block in enumerate(self.decoder):
            y = block(y, skips[len(skips) - 1 - i] if i < len(skips) else None)
        return self.head(y)

"""TransFuse variants as data: which timm CNN and ViT each one combines (paper, Sec. 3).

The decoder widths are not listed: they follow from the CNN's feature widths at strides 4/8/16,
exactly as the official TransFuse-S derives 64/128/256 from ResNet-34.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TransFuseVariant", "VARIANTS"]


@dataclass(frozen=True)
class TransFuseVariant:
    """One row of the variant table.

    Attributes:
        cnn: timm CNN name with the pretrained tag its ImageNet weights come from.
        vit: timm ViT name with its pretrained tag.
        vit_depth: how many transformer blocks are kept.
    """

    cnn: str
    vit: str
    vit_depth: int


VARIANTS: dict[str, TransFuseVariant] = {
    # The official TransFuse_S: torchvision ResNet-34 weights and DeiT-S, first 8 blocks.
    "S": TransFuseVariant(cnn="resnet34.tv_in1k", vit="deit_small_patch16_224.fb_in1k", vit_depth=8),
    # Paper: Res2Net-50 + DeiT-B with 10 layers (never released by the official code).
    "L": TransFuseVariant(cnn="res2net50_26w_4s.in1k", vit="deit_base_patch16_224.fb_in1k", vit_depth=10),
    # Paper: ResNetV2-50 (BiT) + ViT-B/16, 12 layers, both ImageNet-21k as in TransUNet.
    "L*": TransFuseVariant(cnn="resnetv2_50x1_bit.goog_in21k", vit="vit_base_patch16_224.augreg_in21k", vit_depth=12),
    # Not in the paper: ResNet-18 + the first 4 blocks of ViT-Ti, about a third of S's parameters and 2/3 of its
    # training step on a CPU (64x64), for smoke tests, quick trials and small machines.
    "tiny": TransFuseVariant(cnn="resnet18.tv_in1k", vit="vit_tiny_patch16_224.augreg_in21k_ft_in1k", vit_depth=4),
}

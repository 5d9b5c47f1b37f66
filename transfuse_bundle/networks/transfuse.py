"""TransFuse (Zhang, Liu, Hu, MICCAI 2021): a CNN branch and a ViT branch in parallel, fused by BiFusion."""

from __future__ import annotations

import logging
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigValueError
from .backbones import ViTEncoder, create_cnn_encoder
from .blocks import BiFusion, SegmentationHead, Up, init_decoder_weights
from .sizes import SIZE_MULTIPLE, check_image_size, check_input_shape
from .variants import VARIANTS

__all__ = ["TransFuse"]

logger = logging.getLogger(__name__)

class TransFuse(nn.Module):
    """TransFuse segmentation network.

    A timm CNN (features at strides 4/8/16) and a timm ViT (no class token) encode the image in
    parallel; the ViT tokens are decoded to strides 8 and 4 by two :class:`Up` blocks; three
    :class:`BiFusion` modules fuse the branches at strides 16/8/4; two attention-gated :class:`Up`
    blocks merge the fused maps; three heads give logits upsampled to the input size.

    Args:
        variant: ``"S"``, ``"L"`` or ``"L*"`` (see :data:`VARIANTS`), the defaults for the backbones.
        in_channels: image channels (3 for RGB, 1 for grey MRI, N for multi-modal).
        out_channels: 1 for binary segmentation (apply a sigmoid), N > 1 for N-class softmax logits.
        img_size: ``(H, W)`` or an int; the size the position embedding is stored for. Each side
            must be a multiple of 16. Inputs of other sizes (multiples of 16) also work: the position
            embedding is resized to their token grid.
        drop_rate: Dropout2d on the branch features; the BiFusion outputs use ``drop_rate / 2``.
        dropout: alias of ``drop_rate`` (the name MONAI Label's epistemic scoring sets); wins if given.
        deep_supervision: in training mode return ``(map_2, map_1, map_x)``; otherwise only ``map_2``
            (and the two auxiliary heads are not built, so DDP needs no ``find_unused_parameters``).
        cnn_name, vit_name, vit_depth: override the variant's timm backbones (any timm CNN with a
            stride 4/8/16 pyramid, any timm ViT with patch size 16).
        pretrained: load the backbones' ImageNet weights through timm (hub or its local cache).
        cnn_weights, vit_weights: local files with the timm models' ImageNet state dicts, used
            instead of a download (each implies ``pretrained`` for its branch).
        fusion: the paper's ablations (Tables 5, 6): ``"bifusion"`` (all parts), ``"concat"``
            (concatenation + residual) or a list of the BiFusion parts to keep, from
            ``"spatial_attention"``, ``"channel_attention"``, ``"hadamard"``.
        composition: ``"parallel"`` (TransFuse) or ``"sequential"``: the ViT runs on the CNN's
            stride-16 features instead of the image (Table 5, E.3).
        zero_pos_embed: start the ViT position embedding at zeros instead of timm's truncated normal,
            as the official code does without pretrained weights (its problem 6); for reproducing
            the official recipe (``configs/recipes/official.json``). Ignored when ViT weights are loaded.

    Shapes:
        input ``(B, in_channels, H, W)`` with H, W multiples of 16. Eval mode: ``(B, out_channels, H, W)``
        logits of the final fused head (``map_2``). Training with deep supervision: the tuple
        ``(map_2, map_1, map_x)``: fused head, transformer head, coarse fusion head, each
        ``(B, out_channels, H, W)``.

    Example::

        >>> net = TransFuse("S", in_channels=3, out_channels=1, img_size=(192, 256)).eval()
        >>> net(torch.rand(1, 3, 192, 256)).shape
        torch.Size([1, 1, 192, 256])
    """

    def __init__(
        self,
        variant: str = "S",
        in_channels: int = 3,
        out_channels: int = 1,
        img_size: int | Sequence[int] = (192, 256),
        drop_rate: float = 0.2,
        deep_supervision: bool = True,
        cnn_name: str | None = None,
        vit_name: str | None = None,
        vit_depth: int | None = None,
        pretrained: bool = False,
        cnn_weights: str | None = None,
        vit_weights: str | None = None,
        dropout: float | None = None,
        fusion: str | Sequence[str] = "bifusion",
        composition: str = "parallel",
        zero_pos_embed: bool = False,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigValueError(f"unknown TransFuse variant {variant!r}; choose one of {sorted(VARIANTS)}")
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ConfigValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        if dropout is not None:
            drop_rate = dropout
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ConfigValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        spec = VARIANTS[variant]
        cnn_name = cnn_name or spec.cnn
        vit_name = vit_name or spec.vit
        vit_depth = int(vit_depth or spec.vit_depth)
        self.img_size = check_image_size(img_size, "TransFuse")
        self.out_channels = int(out_channels)
        self.deep_supervision = bool(deep_supervision)

        fusion_parts = _fusion_parts(fusion)
        if composition not in ("parallel", "sequential"):
            raise ValueError(f"composition must be 'parallel' or 'sequential', got {composition!r}")
        self.sequential = composition == "sequential"

        self.cnn = create_cnn_encoder(cnn_name, in_channels, pretrained, cnn_weights)
        self.vit = ViTEncoder(vit_name, in_channels, self.img_size, vit_depth, pretrained, vit_weights)
        if zero_pos_embed and not pretrained and vit_weights is None:
            nn.init.zeros_(self.vit.pos_embed)
        if self.vit.patch_size != SIZE_MULTIPLE:
            raise ValueError(f"ViT {vit_name!r} has patch size {self.vit.patch_size}; TransFuse needs {SIZE_MULTIPLE}")
        c4, c8, c16 = self.cnn.feature_info.channels()
        dim = self.vit.embed_dim
        if self.sequential:
            self.vit.embed_feature_map(c16)

        self.drop = nn.Dropout2d(drop_rate)
        # Transformer branch decoder: stride 16 -> 8 -> 4 (official up1, up2).
        self.vit_up1 = Up(dim, c8)
        self.vit_up2 = Up(c8, c4)
        # Fusion at each stride (official up_c, up_c_1_1, up_c_2_1) and the gated merges (up_c_1_2, up_c_2_2).
        self.fusion16 = BiFusion(c16, dim, 4, c16, c16, drop_rate / 2, **fusion_parts)
        self.fusion8 = BiFusion(c8, c8, 2, c8, c8, drop_rate / 2, **fusion_parts)
        self.fusion4 = BiFusion(c4, c4, 1, c4, c4, drop_rate / 2, **fusion_parts)
        self.fused_up8 = Up(c16, c8, c8, attention=True)
        self.fused_up4 = Up(c8, c4, c4, attention=True)
        # Heads (official final_2, final_1, final_x).
        self.head_fused = SegmentationHead([(c4, c4, 3)], out_channels)
        self.head_vit = SegmentationHead([(c4, c4, 3)], out_channels) if deep_supervision else None
        self.head_coarse = SegmentationHead([(c16, c4, 1), (c4, c4, 3)], out_channels) if deep_supervision else None
        for module in self.decoder_modules():
            module.apply(init_decoder_weights)

    def decoder_modules(self) -> list[nn.Module]:
        """Everything but the two pretrained backbones (what the official code initialises itself)."""
        return [m for name, m in self.named_children() if name not in ("cnn", "vit", "drop") and m is not None]

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        h, w = x.shape[-2], x.shape[-1]
        check_input_shape(h, w, "TransFuse")
        features = self.cnn(x)
        t16 = self.drop(self.vit(features[2] if self.sequential else x))
        t8 = self.drop(self.vit_up1(t16))
        t4 = self.drop(self.vit_up2(t8))
        g4, g8, g16 = self.drop(features[0]), self.drop(features[1]), self.drop(features[2])

        f16 = self.fusion16(g16, t16)
        f8 = self.fused_up8(f16, self.fusion8(g8, t8))
        f4 = self.fused_up4(f8, self.fusion4(g4, t4))
        map_2 = _upsample(self.head_fused(f4), h, w)

        if self.training and self.head_vit is not None and self.head_coarse is not None:
            return map_2, _upsample(self.head_vit(t4), h, w), _upsample(self.head_coarse(f16), h, w)
        return map_2


FUSION_PARTS = ("spatial_attention", "channel_attention", "hadamard")


def _fusion_parts(fusion: str | Sequence[str]) -> dict[str, bool]:
    """``"bifusion"`` / ``"concat"`` / a list of parts -> the BiFusion switches."""
    if fusion == "bifusion":
        keep = set(FUSION_PARTS)
    elif fusion == "concat":
        keep = set()
    elif not isinstance(fusion, str) and set(fusion) <= set(FUSION_PARTS):
        keep = set(fusion)
    else:
        raise ValueError(f"fusion must be 'bifusion', 'concat' or a list of {list(FUSION_PARTS)}, got {fusion!r}")
    return {part: part in keep for part in FUSION_PARTS}


def _upsample(logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear upsampling of head logits to the input size (align_corners=True, as the official code)."""
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)

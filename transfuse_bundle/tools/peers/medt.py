"""Medical Transformer, MedT (Valanarasu et al., MICCAI 2021): gated axial attention and
local-global (LoGo) training.

A shallow global branch runs gated axial-attention blocks (with relative position encodings and
learnable gates) on the whole image; a deeper local branch runs axial blocks without position
encodings on a 4x4 grid of patches (batched, instead of the official double loop); their
full-resolution features are added and projected to logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...networks.blocks import ConvBN
from ...networks.sizes import check_image_size

__all__ = ["MedT", "AxialAttention"]

MEDT_SIZE_MULTIPLE = 128  # the local branch down-samples each of its 4x4 patches 32x


class AxialAttention(nn.Module):
    """Multi-head self-attention along one axis of a feature map.

    With ``span`` set: relative position encodings for queries, keys and values, each scaled by a
    learnable gate (``gate_qr``, ``gate_kr``, ``gate_sve``; ``gate_sv`` for the content term), the
    gated axial attention of MedT. Without: plain axial attention.

    Args:
        channels: input and output channels (a multiple of ``2 * groups``).
        groups: attention heads.
        span: length of the attended axis (fixed, for the position encodings) or None.
        stride: average-pooling stride applied to the output (down-sampling blocks).
        along_width: attend along W (else along H).

    ``(B, channels, H, W) -> (B, channels, H / stride, W / stride)``.
    """

    # constants for TorchScript: the ungated branch has no position parameters to compile against
    __constants__ = ["gated", "along_width"]

    def __init__(self, channels: int, groups: int = 8, span: int | None = None, stride: int = 1, along_width: bool = False):
        super().__init__()
        if channels % (2 * groups):
            raise ValueError(f"axial attention channels ({channels}) must be a multiple of 2 * groups ({2 * groups})")
        self.groups = groups
        self.group_channels = channels // groups
        self.along_width = along_width
        self.qkv = nn.Conv1d(channels, channels * 2, kernel_size=1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(channels * 2)
        self.gated = span is not None
        self.bn_similarity = nn.BatchNorm2d(groups * (3 if self.gated else 1))
        self.bn_output = nn.BatchNorm1d(channels * (2 if self.gated else 1))
        self.span = int(span) if span is not None else 0
        if self.gated:
            self.relative = nn.Parameter(torch.randn(self.group_channels * 2, 2 * self.span - 1) / self.group_channels ** 0.5)
            index = torch.arange(self.span)
            self.register_buffer("relative_index", (index[:, None] - index[None, :] + self.span - 1).reshape(-1), persistent=False)
            self.gate_qr = nn.Parameter(torch.tensor(0.1))
            self.gate_kr = nn.Parameter(torch.tensor(0.1))
            self.gate_sve = nn.Parameter(torch.tensor(0.1))
            self.gate_sv = nn.Parameter(torch.tensor(1.0))
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        nn.init.normal_(self.qkv.weight, 0, (1.0 / channels) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 1, 3) if self.along_width else x.permute(0, 3, 1, 2)  # (B, other, C, L)
        b, other, c, length = x.shape
        if self.gated and length != self.span:
            raise ValueError(f"gated axial attention was built for length {self.span}, got {length}")
        qkv = self.bn_qkv(self.qkv(x.reshape(b * other, c, length)))
        qkv = qkv.reshape(b * other, self.groups, self.group_channels * 2, length)
        half = self.group_channels // 2
        q, k, v = torch.split(qkv, [half, half, self.group_channels], dim=2)
        qk = torch.einsum("bgci,bgcj->bgij", q, k)
        if self.gated:
            emb = torch.index_select(self.relative, 1, self.relative_index).reshape(self.group_channels * 2, length, length)
            q_emb, k_emb, v_emb = torch.split(emb, [half, half, self.group_channels], dim=0)
            qr = torch.einsum("bgci,cij->bgij", q, q_emb) * self.gate_qr
            kr = torch.einsum("bgci,cij->bgij", k, k_emb).transpose(2, 3) * self.gate_kr
            logits = self.bn_similarity(torch.cat([qk, qr, kr], dim=1))
            attn = F.softmax(logits.reshape(b * other, 3, self.groups, length, length).sum(dim=1), dim=3)
            sv = torch.einsum("bgij,bgcj->bgci", attn, v) * self.gate_sv
            sve = torch.einsum("bgij,cij->bgci", attn, v_emb) * self.gate_sve
            out = self.bn_output(torch.cat([sv, sve], dim=-1).reshape(b * other, c * 2, length))
            out = out.reshape(b, other, c, 2, length).sum(dim=-2)
        else:
            attn = F.softmax(self.bn_similarity(qk), dim=3)
            out = torch.einsum("bgij,bgcj->bgci", attn, v)
            out = self.bn_output(out.reshape(b * other, c, length)).reshape(b, other, c, length)
        out = out.permute(0, 2, 1, 3) if self.along_width else out.permute(0, 2, 3, 1)
        return self.pool(out)


class _AxialBlock(nn.Module):
    """Bottleneck with height- then width-axial attention (expansion 2), as MedT's AxialBlock."""

    def __init__(self, in_channels: int, planes: int, groups: int, span: tuple[int, int] | None, stride: int = 1):
        super().__init__()
        self.down = ConvBN(in_channels, planes, 1, bn=True, relu=True, bias=False)
        self.height = AxialAttention(planes, groups, span[0] if span else None)
        self.width = AxialAttention(planes, groups, span[1] if span else None, stride=stride, along_width=True)
        self.up = ConvBN(planes, planes * 2, 1, bn=True, relu=False, bias=False)
        needs_shortcut = stride != 1 or in_channels != planes * 2
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, planes * 2, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes * 2)) if needs_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(F.relu(self.width(self.height(self.down(x)))))
        return F.relu(out + self.shortcut(x))


def _layer(in_channels: int, planes: int, blocks: int, groups: int, span: tuple[int, int] | None, stride: int = 1) -> nn.Sequential:
    layers = [_AxialBlock(in_channels, planes, groups, span, stride)]
    if span is not None:
        span = (span[0] // stride, span[1] // stride)  # the first block pooled: the next see a smaller map
    layers += [_AxialBlock(planes * 2, planes, groups, span) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _Conv(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU: a layer of MedT's three-convolution stem."""

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MedT(nn.Module):
    """MedT with layers ``[1, 2, 4, 1]`` and width scale 1/8, as the paper's ``MedT``.

    Args:
        in_channels: image channels.
        out_channels: 1 (sigmoid) or N classes.
        img_size: ``(H, W)``, each a multiple of 128 (the local branch uses a 4x4 grid of patches
            that are down-sampled 32x); the gated attention spans are fixed to it.
        groups: attention heads.
        dropout: Dropout2d on the fused features (set by MONAI Label's epistemic scoring).

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits; inputs must be ``img_size``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, img_size: int | Sequence[int] = (128, 128),
                 groups: int = 8, layers: Sequence[int] = (1, 2, 4, 1), dropout: float = 0.0):
        super().__init__()
        h, w = check_image_size(img_size, "MedT", MEDT_SIZE_MULTIPLE, "4x4 patches down-sampled 32x")
        self.img_size = (h, w)
        s = 8  # width scale 1/8 of the ResNet widths 64..1024
        base = 64 // s
        # global branch: gated axial attention on the whole image
        self.stem = nn.Sequential(_Conv(in_channels, base, 7, 2), _Conv(base, 128, 3, 1), _Conv(128, base, 3, 1))
        self.layer1 = _layer(base, 128 // s, layers[0], groups, (h // 2, w // 2))
        self.layer2 = _layer(256 // s, 256 // s, layers[1], groups, (h // 2, w // 2), stride=2)
        self.decoder4 = nn.Conv2d(512 // s, 256 // s, 3, padding=1)
        self.decoder5 = nn.Conv2d(256 // s, 128 // s, 3, padding=1)
        # local branch: axial attention without position encodings on 4x4 patches
        self.stem_local = nn.Sequential(_Conv(in_channels, base, 7, 2), _Conv(base, 128, 3, 1), _Conv(128, base, 3, 1))
        self.local_layers = nn.ModuleList([
            _layer(base, 128 // s, layers[0], groups, None),
            _layer(256 // s, 256 // s, layers[1], groups, None, stride=2),
            _layer(512 // s, 512 // s, layers[2], groups, None, stride=2),
            _layer(1024 // s, 1024 // s, layers[3], groups, None, stride=2),
        ])
        self.local_decoder = nn.ModuleList([
            nn.Conv2d(2048 // s, 2048 // s, 3, stride=2, padding=1),
            nn.Conv2d(2048 // s, 1024 // s, 3, padding=1),
            nn.Conv2d(1024 // s, 512 // s, 3, padding=1),
            nn.Conv2d(512 // s, 256 // s, 3, padding=1),
            nn.Conv2d(256 // s, 128 // s, 3, padding=1),
        ])
        self.fuse = nn.Conv2d(128 // s, 128 // s, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(128 // s, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h != self.img_size[0] or w != self.img_size[1]:
            raise ValueError(f"MedT was built for {self.img_size[0]}x{self.img_size[1]} inputs, got {h}x{w}")
        # global branch
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        g = F.relu(F.interpolate(self.decoder4(x2), scale_factor=2.0, mode="bilinear")) + x1
        g = F.relu(F.interpolate(self.decoder5(g), scale_factor=2.0, mode="bilinear"))
        # local branch: the 4x4 grid of patches as one batch
        ph, pw = h // 4, w // 4
        patches = x.reshape(b, c, 4, ph, 4, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * 16, c, ph, pw)
        skips = [self.stem_local(patches)]
        for layer in self.local_layers:
            skips.append(layer(skips[-1]))
        y = skips[-1]
        for i, conv in enumerate(self.local_decoder):
            y = F.relu(F.interpolate(conv(y), scale_factor=2.0, mode="bilinear"))
            if i < 4:
                y = y + skips[4 - i]
        local = y.reshape(b, 4, 4, y.shape[1], ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, y.shape[1], h, w)
        fused = F.relu(self.fuse(g + local))
        return self.head(self.drop(F.relu(fused)))

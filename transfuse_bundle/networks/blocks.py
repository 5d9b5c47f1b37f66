"""Building blocks of TransFuse, structurally identical to the official code (Rayicer/TransFuse).

Every block keeps the official layer order and biases so that an official checkpoint converts
exactly (see :mod:`transfuse_bundle.networks.convert`). All tensors are NCHW.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBN", "DoubleConv", "AttentionGate", "Up", "Residual", "BiFusion", "SegmentationHead", "init_decoder_weights"]


class ConvBN(nn.Module):
    """Conv2d (with bias, "same" padding) -> optional BatchNorm -> optional ReLU.

    The official ``Conv``: the bias is kept even before BatchNorm so official weights load as they are.
    ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bn: bool = False,
                 relu: bool = True, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if bn else nn.Identity()
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DoubleConv(nn.Module):
    """relu([Conv3x3-BN-ReLU-Conv3x3-BN](x) + [Conv1x1-BN](x)). ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels, 3, bn=True, relu=True)
        self.conv2 = ConvBN(out_channels, out_channels, 3, bn=True, relu=False)
        self.shortcut = ConvBN(in_channels, out_channels, 1, bn=True, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate of Attention U-Net: ``x * sigmoid(psi(relu(W_g g + W_x x)))``.

    ``g``: gating signal ``(B, gate_channels, H, W)``; ``x``: skip feature ``(B, skip_channels, H, W)``;
    returns ``x`` re-weighted, same shape as ``x``.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int):
        super().__init__()
        self.W_g = ConvBN(gate_channels, inter_channels, 1, bn=True, relu=False)
        self.W_x = ConvBN(skip_channels, inter_channels, 1, bn=True, relu=False)
        self.psi = ConvBN(inter_channels, 1, 1, bn=True, relu=False)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.psi(F.relu(self.W_g(g) + self.W_x(x))))


class Up(nn.Module):
    """Bilinear x2 upsampling (align_corners=True), optional gated skip, then :class:`DoubleConv`.

    ``x1``: ``(B, in_channels, h, w)``; ``skip``: ``(B, skip_channels, 2h, 2w)`` or None.
    Returns ``(B, out_channels, 2h, 2w)``. With a skip, the skip is gated by the upsampled ``x1``
    and the concatenation order is ``[skip, x1]`` as in the official code.
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0, attention: bool = False):
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)
        self.attn_block = AttentionGate(in_channels, skip_channels, out_channels) if attention else None

    def forward(self, x1: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x1 = F.interpolate(x1, scale_factor=2.0, mode="bilinear", align_corners=True)
        if skip is not None:
            if self.attn_block is not None:
                skip = self.attn_block(x1, skip)
            x1 = torch.cat([skip, x1], dim=1)
        return self.conv(x1)


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-Conv1x1(out/2)-BN-ReLU-Conv3x3-BN-ReLU-Conv1x1(out) + skip.

    The skip is a 1x1 convolution (bias, no BN) when the widths differ, else the identity.
    ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = ConvBN(in_channels, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = ConvBN(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = ConvBN(mid, out_channels, 1, relu=False)
        self.skip_layer = ConvBN(in_channels, out_channels, 1, relu=False) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + self.skip_layer(x)


class BiFusion(nn.Module):
    """BiFusion module: fuses a CNN feature ``g`` and a transformer feature ``x`` of the same size.

    - Hadamard product: ``bp = W(W_g(g) * W_x(x))``;
    - CBAM spatial attention on the CNN branch: ``g * sigmoid(BN(conv7x7([max_c g, mean_c g])))``;
    - squeeze-excitation channel attention on the transformer branch;
    - ``Residual(cat[g', x', bp])`` then Dropout2d.

    (The official code's comments swap the two attention names; the computation here is the code's.)
    Each of the three parts can be switched off for the paper's ablation (Table 6); with all three
    off this is the "Concat+Res" fusion of Table 5.

    Args:
        cnn_channels: channels of ``g`` (``ch_1``).
        vit_channels: channels of ``x`` (``ch_2``).
        reduction: squeeze-excitation reduction ratio (``r_2``).
        inter_channels: width of the Hadamard branch (``ch_int``).
        out_channels: output channels (``ch_out``).
        drop_rate: Dropout2d probability on the output.
        spatial_attention, channel_attention, hadamard: which parts to build.

    ``g: (B, cnn_channels, H, W), x: (B, vit_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, cnn_channels: int, vit_channels: int, reduction: int, inter_channels: int,
                 out_channels: int, drop_rate: float = 0.0, spatial_attention: bool = True,
                 channel_attention: bool = True, hadamard: bool = True):
        super().__init__()
        self.fc1 = nn.Conv2d(vit_channels, vit_channels // reduction, kernel_size=1) if channel_attention else None
        self.fc2 = nn.Conv2d(vit_channels // reduction, vit_channels, kernel_size=1) if channel_attention else None
        self.spatial = ConvBN(2, 1, 7, bn=True, relu=False, bias=False) if spatial_attention else None
        self.W_g = ConvBN(cnn_channels, inter_channels, 1, bn=True, relu=False) if hadamard else None
        self.W_x = ConvBN(vit_channels, inter_channels, 1, bn=True, relu=False) if hadamard else None
        self.W = ConvBN(inter_channels, inter_channels, 3, bn=True, relu=True) if hadamard else None
        fused = cnn_channels + vit_channels + (inter_channels if hadamard else 0)
        self.residual = Residual(fused, out_channels)
        self.dropout = nn.Dropout2d(drop_rate)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.W is not None and self.W_g is not None and self.W_x is not None:
            parts.append(self.W(self.W_g(g) * self.W_x(x)))
        if self.spatial is not None:
            pooled = torch.cat([g.amax(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)], dim=1)
            g = g * torch.sigmoid(self.spatial(pooled))
        if self.fc1 is not None and self.fc2 is not None:
            x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return self.dropout(self.residual(torch.cat([g, x] + parts, dim=1)))


class SegmentationHead(nn.Sequential):
    """Convolutions to logits: ``[ConvBN(k)+ReLU]*`` then a 3x3 convolution to ``out_channels``.

    ``layers`` lists ``(in, out, kernel)`` of the hidden ConvBN-ReLU layers; the official heads are
    ``final_x`` = [(C16, C4, 1), (C4, C4, 3)] and ``final_1`` / ``final_2`` = [(C4, C4, 3)].
    ``(B, layers[0][0], h, w) -> (B, out_channels, h, w)`` (upsampling is done by the model).
    """

    def __init__(self, layers: list[tuple[int, int, int]], out_channels: int):
        hidden = [ConvBN(cin, cout, k, bn=True, relu=True) for cin, cout, k in layers]
        super().__init__(*hidden, ConvBN(layers[-1][1], out_channels, 3, bn=False, relu=False))


def init_decoder_weights(module: nn.Module) -> None:
    """The official initialisation of decoder and fusion layers (apply with ``module.apply``).

    Convolutions: Kaiming normal (fan_in, ReLU) weights, PyTorch's default uniform bias;
    BatchNorm: weight 1, bias 0.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 1)
        nn.init.constant_(module.bias, 0)

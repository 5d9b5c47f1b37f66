"""Inference speed-ups that keep the outputs of :class:`TransFuse` (eval mode) unchanged.

- :func:`fold_batchnorm`: every Conv2d directly followed by an eval-mode BatchNorm2d becomes one
  convolution (exact up to float rounding).
- :func:`optimize_for_inference`: the folding, channels-last memory layout, frozen parameters.
- :func:`fast_autocast_available` / :func:`inference_autocast`: bf16 autocast where the CPU has
  native bf16 (AVX512-BF16 or AMX) or on CUDA; plain fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch
from torch import nn

__all__ = ["fold_batchnorm", "optimize_for_inference", "fast_autocast_available", "inference_autocast"]


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval statistics) into ``conv`` in place: w' = w * g / s, b' = (b - mu) * g / s + beta."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.data = conv.weight.data * scale.reshape(-1, 1, 1, 1)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm2d into the Conv2d whose output it normalises; the BatchNorm
    becomes ``nn.Identity``. Pairs recognised: consecutive ``(Conv2d, BatchNorm2d)`` in an
    ``nn.Sequential``, and sibling attributes ``conv``/``bn`` (:class:`~.blocks.ConvBN`) or
    ``convN``/``bnN`` (timm ResNet stems and blocks, which apply ``bnN`` right after ``convN``).
    Pre-activation layouts (BN before the convolution) are left alone.

    Only valid for inference: call it on a model in eval mode. Returns the same model.
    """
    if model.training:
        raise ValueError("fold_batchnorm changes the model for inference only; call model.eval() first")
    with torch.no_grad():
        for parent in list(model.modules()):
            for conv_name, bn_name in _conv_bn_pairs(parent):
                conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
                if type(bn) is nn.BatchNorm2d and bn.track_running_stats and conv.out_channels == bn.num_features:
                    _fold(conv, bn)
                    setattr(parent, bn_name, nn.Identity())
    return model


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    children = dict(parent.named_children())
    if isinstance(parent, nn.Sequential):
        names = list(children)
        return [(a, b) for a, b in zip(names, names[1:]) if isinstance(children[a], nn.Conv2d)]
    pairs = []
    for name, child in children.items():
        if isinstance(child, nn.Conv2d) and name.startswith("conv"):
            bn_name = "bn" + name[len("conv"):]
            if bn_name in children:
                pairs.append((name, bn_name))
    return pairs


def optimize_for_inference(model: nn.Module, channels_last: bool = True, inplace: bool = False) -> nn.Module:
    """An eval-mode copy (or ``model`` itself with ``inplace``) with BatchNorm folded, parameters
    frozen and, by default, channels-last weights (feed it channels-last inputs for full speed)."""
    model = model if inplace else copy.deepcopy(model)
    model = fold_batchnorm(model.eval())
    model.requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def fast_autocast_available(device: torch.device | str) -> bool:
    """True where bf16 autocast is a speed-up: CUDA, or a CPU with AVX512-BF16 / AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_has_native_bf16()


def inference_autocast(device: torch.device | str, enabled: bool = True):
    """Context manager: bf16 autocast on ``device`` when :func:`fast_autocast_available`, else nothing."""
    device = torch.device(device)
    if enabled and fast_autocast_available(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

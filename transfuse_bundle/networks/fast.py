"""Inference speed-ups that keep the outputs of :class:`TransFuse` (eval mode) unchanged.

- :func:`fold_batchnorm`: every Conv2d directly followed by an eval-mode BatchNorm2d becomes one
  convolution (exact up to float rounding).
- :func:`use_onednn_linear`: every ``nn.Linear`` (the ViT branch: ~40 % of the fp32 CPU time) runs
  on oneDNN instead of the BLAS ``addmm``, with the MLP's GELU fused in (about 2x faster linears on
  AMD CPUs, where MKL's sgemm takes a slow path; same results to ~1e-7).
- :func:`optimize_for_inference`: all of the above, channels-last memory layout, frozen parameters.
- :func:`fast_autocast_available` / :func:`inference_autocast`: bf16 autocast where the CPU has
  native bf16 (AVX512-BF16 or AMX) or on CUDA; plain fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fold_batchnorm", "OneDNNLinear", "use_onednn_linear", "optimize_for_inference", "fast_autocast_available",
           "inference_autocast"]


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


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) computed by oneDNN for fp32 CPU inference,
    optionally followed by a fused activation (``"gelu"`` exact / ``"gelu_tanh"``).

    PyTorch's CPU ``F.linear`` calls MKL's sgemm, which on AMD CPUs runs at about half of oneDNN's
    speed for the ViT's shapes (``(B, N, 384) x (384, 1152)`` etc.). Anything else (another device
    or dtype, autocast, a tensor that needs gradients, a PyTorch without oneDNN) takes ``F.linear``.
    ``(..., in_features) -> (..., out_features)``.
    """

    activation: str = "none"

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str = "none") -> "OneDNNLinear":
        """A OneDNNLinear sharing ``linear``'s parameters (no copy)."""
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.in_features, fast.out_features = linear.in_features, linear.out_features
        fast.weight, fast.bias = linear.weight, linear.bias
        fast.activation = activation
        fast.train(linear.training)
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn_applies(x, self.weight):
            attr, algorithm = _ACTIVATIONS[self.activation]
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, attr, [], algorithm)
        out = F.linear(x, self.weight, self.bias)
        if self.activation == "none":
            return out
        return F.gelu(out, approximate="tanh" if self.activation == "gelu_tanh" else "none")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


# activation name -> (oneDNN post-op, its algorithm)
_ACTIVATIONS = {"none": ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def use_onednn_linear(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`OneDNNLinear` sharing its parameters;
    in timm's ``Mlp`` (``fc1 -> act -> drop1 -> norm -> fc2``) the GELU is fused into ``fc1`` and the
    ``act`` module becomes ``nn.Identity``. For inference; returns the same model."""
    from timm.layers import Mlp  # the ViT MLP of every timm ViT the variants use

    for parent in list(model.modules()):
        fuse_gelu = isinstance(parent, Mlp) and type(parent.act) is nn.GELU
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            activation = "none"
            if fuse_gelu and name == "fc1":
                activation = "gelu_tanh" if parent.act.approximate == "tanh" else "gelu"
            setattr(parent, name, OneDNNLinear.from_linear(child, activation))
        if fuse_gelu:
            parent.act = nn.Identity()
    return model


def optimize_for_inference(model: nn.Module, channels_last: bool = True, inplace: bool = False,
                           onednn_linear: bool = True) -> nn.Module:
    """An eval-mode copy (or ``model`` itself with ``inplace``) with BatchNorm folded, parameters
    frozen, by default the linears on oneDNN (:func:`use_onednn_linear`) and channels-last weights
    (feed it channels-last inputs for full speed)."""
    model = model if inplace else copy.deepcopy(model)
    model = fold_batchnorm(model.eval())
    model.requires_grad_(False)
    if onednn_linear:
        model = use_onednn_linear(model)
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

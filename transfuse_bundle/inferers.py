"""Inferers the bundle configs use."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn

from .networks.fast import optimize_for_inference

__all__ = ["AutocastInferer", "FastInferer"]


def _map_tensors(outputs: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``function`` applied to the tensors of a network's output: one tensor, or a tuple / list of them
    (the deep-supervision heads); anything else is returned as it is."""
    if isinstance(outputs, torch.Tensor):
        return function(outputs)
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_map_tensors(o, function) for o in outputs)
    return outputs


class AutocastInferer(Inferer):
    """The network called as it is, under autocast in ``dtype`` on the input's device: the precision of every
    forward of the bundle (``amp_dtype`` in train.json, resolved by
    :func:`~transfuse_bundle.devices.resolve_amp_dtype`: training, validation, evaluation and serving).

    Outputs come back as float32, so the loss, its backward seed and the metrics are computed in float32.
    With ``dtype=torch.float32`` and no ``inferer`` it is MONAI's ``SimpleInferer``.

    Args:
        dtype: ``torch.bfloat16``, ``torch.float16`` or ``torch.float32`` (no autocast).
        inferer: a MONAI inferer that cuts the input into network inputs (``SliceInferer`` for volumes,
            ``SlidingWindowInferer`` for patches), run with the network under the same autocast; ``None``:
            the whole input in one forward.

    ``inputs``: ``(B, C, H, W)`` (or ``(B, C, H, W, D)`` with a ``SliceInferer``); returns the network's
    output (a tensor or a tuple of heads), float32.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, inferer: Inferer | None = None) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
        self.dtype, self.inferer = dtype, inferer

    def _autocast(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``network`` (or ``inferer`` with it) on ``inputs`` under this inferer's autocast."""
        run = (lambda: self.inferer(inputs, network, *args, **kwargs)) if self.inferer is not None else \
            (lambda: network(inputs, *args, **kwargs))
        if self.dtype == torch.float32:
            return run()
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            return _map_tensors(run(), torch.Tensor.float)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self._autocast(inputs, network, *args, **kwargs)


class FastInferer(AutocastInferer):
    """:class:`AutocastInferer` through an inference-optimised copy of the network (what serving and
    evaluation run).

    The copy has BatchNorm folded into the convolutions, its linears on oneDNN (fp32 CPU) and
    channels-last weights (:func:`~transfuse_bundle.networks.fast.optimize_for_inference`; fp32
    outputs equal the network's to ~1e-6).
    The network itself is never modified, so MONAI Label can keep reloading weights into it: the
    copy is rebuilt whenever the network's parameters or buffers change. A network in training
    mode, or with any layer in training mode (MC dropout: only the dropout layers sampling), or a
    TorchScript module (``models/model.ts``) runs as it is. A MetaTensor input runs as a plain tensor
    (MONAI's per-operation metadata tracking cost 20-30 ms of a ~120 ms TransFuse-S forward at 192x256
    on 2 CPU cores, for the same values) and its metadata is given to the outputs, as MONAI's
    ``sliding_window_inference`` does.

    Args:
        dtype, inferer: as for :class:`AutocastInferer`.
        channels_last: use the channels-last memory layout.

    ``inputs``: ``(B, C, H, W)`` (or ``(B, C, H, W, D)`` with a ``SliceInferer``); returns the network's
    output, float32.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, inferer: Inferer | None = None,
                 channels_last: bool = True) -> None:
        super().__init__(dtype, inferer)
        self.channels_last = channels_last
        self._source: tuple[int, int] | None = None
        self._fast: nn.Module | None = None

    def _fingerprint(self, network: nn.Module) -> tuple[int, int]:
        # every in-place update (load_state_dict, an optimizer step) bumps a tensor's version counter
        return id(network), sum(t._version for t in (*network.parameters(), *network.buffers()))

    def optimized(self, network: nn.Module) -> nn.Module:
        """The optimised copy of ``network`` (rebuilt when the network's weights changed)."""
        fingerprint = self._fingerprint(network)
        if self._fast is None or fingerprint != self._source:
            self._fast = optimize_for_inference(copy.deepcopy(network).eval(), channels_last=self.channels_last,
                                                inplace=True)
            self._source = fingerprint
        return self._fast

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        # a module in training mode anywhere (MC dropout: only the dropout layers sample) must stay as it is,
        # since the optimised copy is put in eval mode; nothing to optimise in TorchScript
        if not isinstance(network, torch.jit.ScriptModule) and not any(m.training for m in network.modules()):
            network = self.optimized(network)
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        if meta is not None:
            inputs = inputs.as_tensor()
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        outputs = _map_tensors(self._autocast(inputs, network, *args, **kwargs), lambda t: t.float().contiguous())
        return outputs if meta is None else _map_tensors(outputs, lambda t: convert_to_dst_type(t, meta)[0])

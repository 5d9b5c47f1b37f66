"""Training iterations that MONAI's ``SupervisedTrainer`` does not ship.

:class:`MultiScaleIteration` is the multi-scale training of PraNet and the TransFuse polyp protocol:
every batch is seen at several sizes (0.75, 1 and 1.25 times the training size, rounded to a multiple
of 32), with a forward pass, a backward pass and an optimizer step per size. It plugs into a MONAI
trainer as ``SupervisedTrainer(iteration_update=MultiScaleIteration(...))``; in a config::

    "iteration_update": {"_target_": "transfuse_bundle.engines.MultiScaleIteration", "rates": [0.75, 1.0, 1.25]}

:func:`plain_batch` is the trainer's ``prepare_batch``: the batch without its metadata, which training does
not use.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys

__all__ = ["MultiScaleIteration", "plain_batch", "scaled_size"]

def scaled_size(size: Sequence[int], rate: float, multiple: int = 32) -> tuple[int, ...]:
    """``size * rate`` rounded to the nearest ``multiple`` per side, as the official polyp code
    (``int(round(trainsize * rate / 32) * 32)``); never below one ``multiple``.

    >>> scaled_size((352, 352), 0.75), scaled_size((352, 352), 1.25)
    ((256, 256), (448, 448))
    """
    return tuple(max(multiple, int(round(side * rate / multiple) * multiple)) for side in size)


def plain_batch(batchdata: Any, device: torch.device | str | None = None, non_blocking: bool = False,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MONAI's ``default_prepare_batch`` returning plain ``torch.Tensor``s instead of ``MetaTensor``s.

    The values are the same; only the metadata (affine, file names, applied transforms) is dropped. Fed a
    ``MetaTensor``, every operation of the forward pass and of the loss goes through
    ``MetaTensor.__torch_function__``, which wraps each output and copies the metadata onto it: Python work per
    operation that training, which never reads the metadata, pays for in every iteration. Validation and
    evaluation keep MONAI's default (``Invertd`` and the distance metrics read the metadata).

    Shapes: ``image`` ``(B, C, H, W)``, ``label`` ``(B, 1, H, W)`` (or ``None``), as the batch holds them.
    """
    prepared = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return tuple(x.as_tensor() if isinstance(x, MetaTensor) else x for x in prepared)  # type: ignore[return-value]


class MultiScaleIteration:
    """One training iteration of a ``SupervisedTrainer`` over several input sizes.

    For each rate the batch is resized (images bilinear with ``align_corners=True`` as the official
    code, label maps nearest so class ids stay class ids), then forward, loss, backward,
    ``IterationEvents.BACKWARD_COMPLETED`` (gradient clipping hooks there) and an optimizer step: the
    official code steps once per size. Rate 1 (or any rate giving the batch's own size) uses the batch
    as it is. ``engine.state.output`` (what the progress bar, ``StatsHandler`` and the training metric
    see) is the pass at the rate closest to 1, with ``"loss"`` its loss, as the official code records it.

    Args:
        rates: size factors, in the order they run; the official ``(0.75, 1, 1.25)``.
        size_multiple: each side is rounded to a multiple of this (32 officially; TransFuse needs 16).

    Shapes:
        batch ``image``: ``(B, C, H, W)``, ``label``: ``(B, 1, H, W)`` class ids. The pass at rate r
        feeds ``(B, C, h, w)`` with ``(h, w) = scaled_size((H, W), r, size_multiple)``.
    """

    def __init__(self, rates: Sequence[float] = (0.75, 1.0, 1.25), size_multiple: int = 32) -> None:
        self.rates = [float(r) for r in rates]
        if not self.rates or min(self.rates) <= 0:
            raise ValueError(f"rates must be positive size factors, e.g. [0.75, 1.0, 1.25], got {list(rates)!r}")
        if int(size_multiple) < 1:
            raise ValueError(f"size_multiple must be a positive integer, got {size_multiple!r}")
        self.size_multiple = int(size_multiple)
        self.reported = min(range(len(self.rates)), key=lambda i: abs(self.rates[i] - 1.0))

    def __call__(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError("MultiScaleIteration steps the optimizer once per size; it does not combine "
                             "with gradient accumulation (accumulation_steps > 1)")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        engine.network.train()
        reported: dict = {}
        for index, rate in enumerate(self.rates):
            size = scaled_size(inputs.shape[2:], rate, self.size_multiple)
            if tuple(size) == tuple(inputs.shape[2:]):
                images, labels = inputs, targets
            else:
                images = F.interpolate(inputs, size=size, mode="bilinear", align_corners=True)
                labels = F.interpolate(targets.float(), size=size, mode="nearest").to(targets.dtype)
            engine.state.output = {Keys.IMAGE: images, Keys.LABEL: labels}
            self._step(engine, images, labels, args, kwargs)
            if index == self.reported:
                reported = engine.state.output
        engine.state.output = reported
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    @staticmethod
    def _step(engine: Any, images: torch.Tensor, labels: torch.Tensor, args: tuple, kwargs: dict) -> None:
        """Forward, loss, backward and step at one size, firing the events ``SupervisedTrainer`` fires."""
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_scaler = bool(engine.amp and engine.scaler is not None)
        with torch.autocast("cuda", **engine.amp_kwargs) if use_scaler else nullcontext():
            engine.state.output[Keys.PRED] = engine.inferer(images, engine.network, *args, **kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output[Keys.LOSS] = engine.loss_function(engine.state.output[Keys.PRED], labels).mean()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss = engine.state.output[Keys.LOSS]
        if use_scaler:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()


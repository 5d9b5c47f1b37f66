"""Training handlers that MONAI and ignite do not ship."""

from __future__ import annotations

from typing import Callable

import torch
from ignite.handlers import ProgressBar as _IgniteProgressBar
from monai.engines.utils import IterationEvents

__all__ = ["GradientClipping", "ProgressBar"]


class ProgressBar(_IgniteProgressBar):
    """ignite's tqdm progress bar with its ``output_transform`` given at construction.

    MONAI engines call ``handler.attach(engine)`` with no arguments, so ignite's own class cannot show
    the loss from a config; this one passes ``output_transform`` (e.g. ``lambda out: {"loss": ...}``)
    on to ``attach``. Other keyword arguments go to ignite's ``ProgressBar`` (``persist``, ``ncols``...).
    """

    def __init__(self, output_transform: Callable | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._output_transform = output_transform

    def attach(self, engine, *args, **kwargs) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._output_transform)
        super().attach(engine, *args, **kwargs)


class GradientClipping:
    """Clips the gradient norm of the trainer's network after each backward pass, before the step.

    The official TransFuse code clips at norm 2.0. MONAI's ``SupervisedTrainer`` fires
    ``IterationEvents.BACKWARD_COMPLETED`` between ``backward()`` and ``optimizer.step()``; with AMP the
    gradients are unscaled first (``GradScaler.unscale_`` then ``step`` is the documented pattern).

    Args:
        max_norm: largest allowed total norm of the gradients.
        norm_type: the p of the p-norm.

    After each iteration ``engine.state.grad_norm`` holds the norm before clipping (a float).
    """

    def __init__(self, max_norm: float = 2.0, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine) -> None:
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm, self.norm_type)
        engine.state.grad_norm = float(norm)

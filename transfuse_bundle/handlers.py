"""Training handlers that MONAI and ignite do not ship."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from ignite.handlers import ProgressBar as _IgniteProgressBar
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, LrScheduleHandler, ValidationHandler

from transfuse_bundle.errors import DiskFullError, find_user_error
from transfuse_bundle.files import save_atomically
from transfuse_bundle.checks import flag
from transfuse_bundle.weights import load_checkpoint, raise_misfit

__all__ = [
    "AtomicDiskSaver",
    "GradientClipping",
    "ModelSaver",
    "ProgressBar",
    "TrainingCheckpoint",
    "every_rank_handlers",
]


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


def _save_training_file(obj: Any, path: Path, engine: Engine) -> None:
    """:func:`save_atomically` for training; no room on the disk stops training in one line that says what is kept
    and how to go on (the last complete files are intact: atomic writes)."""
    try:
        save_atomically(obj, path)
    except DiskFullError as e:
        raise DiskFullError(f"training stopped at the end of epoch {engine.state.epoch}: {e}; free some space, then "
                            f"continue from the last saved checkpoint with --resume true") from e.__cause__


def _raise_refusals_unlogged(engine: Engine, error: BaseException) -> None:
    """``Events.EXCEPTION_RAISED``, attached before MONAI's ``StatsHandler``: ignite calls only the first handler that
    raises, and MONAI's logs the exception with its traceback before raising it. A refusal (a
    :class:`~transfuse_bundle.errors.UserInputError`, e.g. a full disk) is raised unlogged, so the user reads the one
    ``error:`` line of :func:`transfuse_bundle.errors.install_excepthook`; any other error goes on to the next handler
    (MONAI's logs it), or is raised here when there is none."""
    if find_user_error(error) is not None or len(engine._event_handlers[Events.EXCEPTION_RAISED]) <= 1:
        raise error


def _attach_refusals_unlogged(engine: Engine) -> None:
    if not engine.has_event_handler(_raise_refusals_unlogged, Events.EXCEPTION_RAISED):
        engine.add_event_handler(Events.EXCEPTION_RAISED, _raise_refusals_unlogged)


def _unwrap(module: Any) -> Any:
    """The network inside ``DistributedDataParallel`` / ``DataParallel``, so saved keys have no ``module.`` prefix."""
    return module.module if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else module


class AtomicDiskSaver(DiskSaver):
    """ignite save handler that writes one fixed file with :func:`save_atomically`, on one rank.

    With a fixed file name, ignite's ``Checkpoint`` deletes the previous file *before* writing the next one,
    so there is a moment with no file at all; MONAI's ``CheckpointSaver`` (``atomic=False``) then writes in
    place. Here removing is a no-op, since the next save replaces the file in one step.
    """

    def __init__(self, path: str | os.PathLike, save_on_rank: int = 0, engine: Engine | None = None) -> None:
        super().__init__(dirname=Path(path).parent, require_empty=False, save_on_rank=save_on_rank)
        self.filename = Path(path).name
        self.engine = engine  # the trainer, named in a full disk's message

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        if self.engine is None:
            save_atomically(checkpoint, self.dirname / self.filename)
        else:
            _save_training_file(checkpoint, self.dirname / self.filename, self.engine)

    def remove(self, filename: str) -> None:
        pass


class ModelSaver:
    """Writes the network's plain state dict to ``path`` (atomically): the best or the last epoch's weights.

    ``keep="best"``: whenever the validator's key metric is a new best. "New best" is MONAI's own bookkeeping:
    the evaluator sets ``state.best_metric`` / ``best_metric_epoch`` at the end of each validation (strictly
    greater, the first one always). Because that state is the only record, restoring it on resume
    (:class:`TrainingCheckpoint`) is enough for a resumed run never to replace a better ``model.pt`` with a
    worse one. ``keep="last"``: after every epoch, so the file ends as the final weights (the official
    TransFuse recipe: train on every image, keep the last epoch). Attach to the trainer after its
    ``ValidationHandler`` (same event, so this epoch's validation has run); only rank 0 writes.

    Args:
        path: the weights file, e.g. ``models/model.pt``: ``{parameter name: tensor}``, no ``module.`` prefix.
        network: the trained network (DDP-wrapped or not).
        keep: ``"best"`` (needs ``validator``) or ``"last"``.
        validator: the evaluator whose key metric picks the best epoch.
    """

    def __init__(self, path: str | os.PathLike, network: torch.nn.Module, keep: str = "best",
                 validator: Engine | None = None) -> None:
        if keep not in ("best", "last"):
            raise ValueError(f"keep_model must be 'best' or 'last', got {keep!r}")
        if keep == "best" and validator is None:
            raise ValueError("keep_model 'best' needs the validation evaluator")
        self.path, self.network, self.keep, self.validator = Path(path), network, keep, validator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        _attach_refusals_unlogged(engine)

    def __call__(self, engine: Engine) -> None:
        best = self.keep == "best"
        if idist.get_rank() != 0 or (best and self.validator.state.best_metric_epoch != engine.state.epoch):
            return
        _save_training_file(_unwrap(self.network).state_dict(), self.path, engine)
        if best:
            engine.logger.info(f"Saved the best model so far (epoch {engine.state.epoch}, "
                               f"{self.validator.state.best_metric:.4f}): {self.path}")


class _BestMetric:
    """The evaluator's best key metric and its epoch, as a ``state_dict`` / ``load_state_dict`` object."""

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, float | int]:
        return {"best_metric": float(self.evaluator.state.best_metric), "best_metric_epoch": int(self.evaluator.state.best_metric_epoch)}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.evaluator.state.best_metric = float(state["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])


class TrainingCheckpoint:
    """Everything needed to continue a training run, saved atomically every ``save_interval`` epochs and
    restored at the start of the run when ``resume`` is true. Attach to the trainer.

    The file is ``{name: state dict}`` for each entry of ``save_dict`` (e.g. ``network``, ``optimizer``,
    ``lr_scheduler``), plus ``trainer`` (ignite's engine state: ``epoch_length``, ``max_epochs``, ``iteration``)
    and, with a ``validator``, ``best_metric`` (``{"best_metric": float, "best_metric_epoch": int}``). Only
    tensors, numbers, strings and containers: ``torch.load(path, weights_only=True)`` reads it.

    Resuming uses MONAI's ``CheckpointLoader`` on ``Events.STARTED``: the trainer continues with the epoch after
    the saved one and stops at the configured ``max_epochs`` (which may be raised to train longer). Handlers
    that run at the end of an epoch before this one (validation, the LR scheduler) are in the saved state.

    Args:
        path: the checkpoint file, e.g. ``models/checkpoint.pt``.
        save_dict: objects with ``state_dict`` / ``load_state_dict`` (DDP-wrapped networks are unwrapped).
        validator: the evaluator whose best key metric is kept across the interruption.
        resume: restore ``path`` before the first epoch; it must be a readable checkpoint whose ``network`` fits
            ``save_dict["network"]`` (checked here, before any training).
        save_interval: save every N epochs.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        save_dict: Mapping[str, Any],
        validator: Engine | None = None,
        resume: bool = False,
        save_interval: int = 1,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        if "trainer" in save_dict or "best_metric" in save_dict:
            raise ValueError("save_dict keys 'trainer' and 'best_metric' are reserved (they are added at attach)")
        resume = flag(resume, "resume")
        if resume:  # a missing, corrupt or misfitting file is named here, before the trainer starts
            what = "training checkpoint to resume from (resume=true)"
            state = load_checkpoint(path, what)["network"]
            if isinstance(save_dict.get("network"), torch.nn.Module):
                raise_misfit(save_dict["network"], state, f"{what}: {str(path)!r}")
        self.path = Path(path)
        self.save_dict = dict(save_dict)
        self.validator = validator
        self.resume = resume
        self.save_interval = int(save_interval)

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, "trainer": engine}
        if self.validator is not None:
            objects["best_metric"] = _BestMetric(self.validator)
        if self.resume:
            # map to CPU: load_state_dict copies onto each object's own device (every DDP rank loads the rank-0 file)
            CheckpointLoader(str(self.path), objects, map_location="cpu").attach(engine)
            scheduler = self.save_dict.get("lr_scheduler")
            if scheduler is not None and hasattr(scheduler, "state_dict"):
                configured = _schedule_settings(scheduler)  # this run's (T_max: its max_epochs), before the restore
                engine.add_event_handler(Events.STARTED, self._follow_configured_schedule, scheduler, configured)
            engine.add_event_handler(Events.STARTED, self._say_if_finished)
        saver = Checkpoint(objects, AtomicDiskSaver(self.path, engine=engine), filename_pattern=self.path.name, n_saved=1)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), saver)
        _attach_refusals_unlogged(engine)


    def _follow_configured_schedule(self, engine: Engine, scheduler: Any, configured: dict[str, Any]) -> None:
        """After the restore: the LR schedule's settings are this run's, not the saved ones, and the learning rate is
        the schedule's value at the epoch reached. The saved ``T_max`` of a cosine schedule is the first run's
        ``max_epochs``: resuming a finished run with a larger ``max_epochs`` kept it, and past its end the cosine
        climbs back up to the initial learning rate. Now the schedule is the one of the new length, as if the run had
        been started with it (at epoch 25 of 50, half the initial rate)."""
        saved = _schedule_settings(scheduler)
        if saved == configured:
            return
        closed_form = getattr(scheduler, "_get_closed_form_lr", None)
        if closed_form is None:
            engine.logger.warning(f"{self.path}: the LR schedule {type(scheduler).__name__} was saved with {saved}, this "
                                  f"run configures {configured}; it has no closed form, so the saved settings are kept")
            return
        scheduler.__dict__.update(configured)
        rates = closed_form()
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        engine.logger.info(f"LR schedule: {configured} (saved: {saved}); learning rate at epoch {scheduler.last_epoch}: "
                           f"{', '.join(f'{r:.3g}' for r in rates)}")

    def _say_if_finished(self, engine: Engine) -> None:
        """After the restore: a checkpoint already at ``max_epochs`` leaves nothing to train, which would
        otherwise pass in silence (ignite just ends the run)."""
        if engine.state.epoch >= engine.state.max_epochs:
            engine.logger.warning(f"{self.path} is at epoch {engine.state.epoch} of max_epochs {engine.state.max_epochs}: "
                                  f"nothing left to train (raise --max_epochs to train on)")


#: the state of a torch LR scheduler that is progress, not settings
_SCHEDULE_PROGRESS = frozenset({"last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr",
                                "base_lrs"})


def _schedule_settings(scheduler: Any) -> dict[str, Any]:
    """The settings of an LR scheduler (``T_max``, ``eta_min``...): its state dict less its progress."""
    return {k: v for k, v in scheduler.state_dict().items() if k not in _SCHEDULE_PROGRESS}


def every_rank_handlers(handlers: list) -> list:
    """The train handlers each DDP rank must run, in their order; the rest (console and TensorBoard stats, progress
    bar, experiment tracking) run on rank 0 only (``multi_gpu_train.json``).

    Each rank holds its own copy of the network and optimizer, which must stay identical: loading weights
    (``CheckpointLoader``, which MONAI Label inserts), resuming (:class:`TrainingCheckpoint`), clipping gradients
    and stepping the LR schedule happen on every rank. Validation too: its metrics are gathered from all ranks.
    Chosen by type, not position, so a handler inserted into the list cannot push one of these out.
    """
    return [h for h in handlers if isinstance(h, (CheckpointLoader, TrainingCheckpoint, GradientClipping, LrScheduleHandler, ValidationHandler))]

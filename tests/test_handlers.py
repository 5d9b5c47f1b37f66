"""Gradient clipping inside MONAI's SupervisedTrainer, the model saver, the progress bar wrapper, and overlay drawing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from transfuse_bundle.handlers import GradientClipping, ModelSaver, ProgressBar
from transfuse_bundle.metrics import overlay_contours


def _trainer(handlers, lr: float = 1.0, max_epochs: int = 1) -> tuple[SupervisedTrainer, torch.nn.Module]:
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    data = [{"image": torch.full((2, 1, 8, 8), 100.0), "label": torch.zeros(2, 1, 8, 8)}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=data, network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=lr), loss_function=torch.nn.MSELoss(),
        train_handlers=handlers, decollate=False,
    )
    return trainer, network


def test_gradient_clipping_limits_the_step():
    reference, reference_net = _trainer([], lr=1.0)
    before = [p.detach().clone() for p in reference_net.parameters()]
    reference.run()
    unclipped_step = torch.cat([(p.detach() - b).flatten() for p, b in zip(reference_net.parameters(), before)]).norm()

    clipped, clipped_net = _trainer([GradientClipping(max_norm=2.0)], lr=1.0)
    before = [p.detach().clone() for p in clipped_net.parameters()]
    clipped.run()
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(clipped_net.parameters(), before)]).norm()
    assert clipped.state.grad_norm > 2.0  # the raw gradient was large ...
    assert step == pytest.approx(2.0, rel=1e-4)  # ... and SGD(lr=1) moved by exactly the clipped norm
    assert unclipped_step > 10 * step
    with pytest.raises(ValueError, match="max_norm"):
        GradientClipping(max_norm=0)


def test_progress_bar_takes_its_output_transform_from_the_config(capsys):
    trainer, _ = _trainer([ProgressBar(output_transform=lambda out: {"loss": float(out["loss"])}, persist=True)])
    trainer.run()
    assert "loss=" in capsys.readouterr().err


def test_overlay_draws_ground_truth_green_and_prediction_red():
    image = np.full((40, 50, 3), 128, np.uint8)
    gt = np.zeros((40, 50), np.int64)
    gt[10:30, 10:30] = 1
    pred = np.zeros_like(gt)
    pred[5:15, 30:45] = 1
    out = overlay_contours(image, gt, pred)
    assert tuple(out[10, 20]) == (0, 255, 0)  # top edge of the ground truth
    assert tuple(out[5, 38]) == (255, 0, 0)  # top edge of the prediction
    assert tuple(out[20, 20]) == (128, 128, 128)  # inside: untouched
    with pytest.raises(ValueError, match="matching sizes"):
        overlay_contours(image, gt.T, pred)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_model_saver_keeps_the_best_or_the_last_epoch(tmp_path, keep):
    """Three epochs whose validation is best at epoch 1 (as MONAI's evaluator records it): "best" keeps epoch 1's
    weights, "last" the final ones."""
    validator = Engine(lambda engine, batch: None)
    validator.state.best_metric, validator.state.best_metric_epoch = -1.0, -1

    class ValidationBestAtEpochOne:  # stands in for the ValidationHandler's run: the evaluator's best-metric record
        def attach(self, engine):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.record)

        @staticmethod
        def record(engine):
            validator.state.best_metric_epoch, validator.state.best_metric = 1, 0.5

    weights = []
    saver = ModelSaver(tmp_path / "model.pt", torch.nn.Identity(), keep=keep, validator=validator)
    trainer, network = _trainer([ValidationBestAtEpochOne()], lr=0.01, max_epochs=3)
    saver.network = network
    saver.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: weights.append(network.weight.detach().clone()))
    trainer.run()
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["weight"]
    assert not torch.equal(weights[0], weights[-1])
    assert torch.equal(saved, weights[0] if keep == "best" else weights[-1])
    with pytest.raises(ValueError, match="keep_model"):
        ModelSaver(tmp_path / "x.pt", network, keep="first", validator=validator)

"""Mixed precision of training and validation: train.json's ``amp_dtype`` (engines.resolve_amp_dtype) and the
AutocastInferer that applies it; MONAI's GradScaler only for float16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines.utils import IterationEvents
from monai.utils import set_determinism

from transfuse_bundle.data import synthetic_dataset
from transfuse_bundle.engines import resolve_amp_dtype
from transfuse_bundle.networks.fast import fast_autocast_available
from transfuse_bundle.tools.tasks import config_files


def test_amp_dtype_names_auto_and_errors():
    assert resolve_amp_dtype("float32", "cpu") == torch.float32
    assert resolve_amp_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_amp_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    # auto on a CPU: bf16 only where it is native (a speed-up), else float32
    assert resolve_amp_dtype("auto", "cpu") == (torch.bfloat16 if fast_autocast_available("cpu") else torch.float32)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_amp_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="amp_dtype must be one of 'auto', 'float32', 'bfloat16', 'float16'; got 'fp8'"):
        resolve_amp_dtype("fp8", "cpu")


@pytest.mark.parametrize("task", [None, "polyp"])
def test_bfloat16_training_step_on_cpu(tmp_path: Path, task):
    """One epoch of train.json (and the polyp task's multi-scale iteration) with ``amp_dtype`` bfloat16 on the
    CPU: the network's layers compute in bf16 in training and validation, the loss and weights stay float32,
    no GradScaler is created, and the weights move."""
    data = synthetic_dataset(tmp_path / "data", num_cases=6, num_validation=1, num_test=1, size=(40, 48))
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files("train.json", task)])
    parser.update({"dataset_dir": data, "bundle_root": str(tmp_path), "image_size": [32, 32], "batch_size": 2,
                   "max_epochs": 1, "num_workers": 0, "device": "$torch.device('cpu')", "amp_dtype": "bfloat16",
                   "multi_scale_multiple": 16})
    set_determinism(seed=123)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.amp is False and trainer.scaler is None
    dtypes = {True: set(), False: set()}  # training mode -> output dtypes of the ViT's first linear
    first_linear = next(m for m in trainer.network.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda m, args, out: dtypes[m.training].add(out.dtype))
    losses = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: losses.append(e.state.output["loss"].detach()))
    before = [p.detach().clone() for p in trainer.network.parameters()]
    trainer.run()
    set_determinism(None)
    assert dtypes == {True: {torch.bfloat16}, False: {torch.bfloat16}}
    assert losses and all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in losses)
    after = list(trainer.network.parameters())
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    assert trainer.state.epoch == 1 and (tmp_path / "models" / "model.pt").is_file()

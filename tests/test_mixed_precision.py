"""Mixed precision of training, validation, evaluation and inference: train.json's ``amp_dtype``
(engines.resolve_amp_dtype) and the AutocastInferer / FastInferer that apply it; MONAI's GradScaler only for
float16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.engines.utils import IterationEvents
from monai.utils import set_determinism

from transfuse_bundle.data import synthetic_dataset
from transfuse_bundle.devices import resolve_amp_dtype
from transfuse_bundle.networks.fast import fast_autocast_available
from transfuse_bundle.inferers import AutocastInferer, FastInferer
from transfuse_bundle.tools.tasks import config_parser


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
    parser = config_parser("train.json", task, dataset_dir=data, bundle_root=str(tmp_path), image_size=[32, 32],
                           batch_size=2, max_epochs=1, num_workers=0, device="$torch.device('cpu')",
                           amp_dtype="bfloat16", multi_scale_multiple=16)
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


@pytest.mark.parametrize("task", [None, "prostate"])
@pytest.mark.parametrize("amp_dtype", ["float32", "bfloat16", "auto"])
def test_one_amp_dtype_sets_every_forward(tmp_path: Path, task, amp_dtype):
    """``amp_dtype`` is the one precision switch: training's and validation's AutocastInferer, the evaluation's and
    the served FastInferer all run in its dtype, each around the task's window inferer (the prostate volumes'
    SliceInferer) when it has one; no other precision setting is left in the configs."""
    expected = resolve_amp_dtype(amp_dtype, "cpu")
    common = {"bundle_root": str(tmp_path), "device": "$torch.device('cpu')", "amp_dtype": amp_dtype}
    parsers = {config: config_parser(config, task, **common) for config in ("train.json", "evaluate.json", "inference.json")}
    inferers = {
        "train": (parsers["train.json"], "train#inferer", AutocastInferer),
        "validate": (parsers["train.json"], "validate#inferer", AutocastInferer),
        "evaluate": (parsers["evaluate.json"], "validate#inferer", FastInferer),
        "serve": (parsers["inference.json"], "inferer", FastInferer),
    }
    for name, (parser, id_, kind) in inferers.items():
        parser.get_parsed_content("imports")
        inferer = parser.get_parsed_content(id_)
        assert type(inferer) is kind, (name, type(inferer))
        assert inferer.dtype == expected == parser.get_parsed_content("autocast_dtype"), name
        window = type(inferer.inferer).__name__ if inferer.inferer is not None else None
        if name == "train":
            assert window is None, name  # training forwards whole image_size patches or slices
        else:
            assert window == ("SliceInferer" if task == "prostate" else None), name
    assert parsers["train.json"].get_parsed_content("amp") is False  # no GradScaler without float16
    for parser in parsers.values():
        config = parser.get()
        assert "fast_bf16" not in config and "slice_inferer" not in config

"""The tasks of the registry (configs/tasks/<task>/) and the sliding-window option, on real data.

Kvasir-SEG and PH2 are read in place from ``../shared/data`` (datalists go to tmp_path). No hip X-rays
are available, so the hip task runs on a small synthetic grey three-bone dataset written to tmp_path.
Sizes are tiny (48-80 px) and the network is the tiny variant (``conftest.SMALL``) so that everything runs on a
2-core CPU; the learning of TransFuse-S itself is checked by tests/test_kvasir.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils import set_determinism
from PIL import Image

from transfuse_bundle.data import write_datalist
from transfuse_bundle.tools.prepare import prepare
from transfuse_bundle.engines import MultiScaleIteration, scaled_size
from transfuse_bundle.metrics.distances import case_spacing, engine_cases
from conftest import KVASIR, PH2, SMALL, check_binary_report, run_workflow, write_hip_dataset
from transfuse_bundle.tools.tasks import config_parser

SLIDING_WINDOW = "configs/options/sliding_window.json"  # the option overlay, for training, evaluation and inference


def test_official_multi_scale_sizes():
    # PraNet / TransFuse polyp code: int(round(352 * rate / 32) * 32) for rates 0.75, 1, 1.25
    assert [scaled_size((352, 352), r) for r in (0.75, 1.0, 1.25)] == [(256, 256), (352, 352), (448, 448)]
    assert scaled_size((64, 64), 0.75, multiple=16) == (48, 48)
    with pytest.raises(ValueError, match="rates"):
        MultiScaleIteration(rates=[])


@pytest.mark.parametrize("task, size, classes, lr, drop_rate", [
    ("polyp", [352, 352], 1, 1e-4, 0.2), ("isic2017", [192, 256], 1, 7e-5, 0.0), ("hip", [352, 352], 4, 1e-4, 0.0)])
def test_tasks_compose_with_evaluate_and_inference(task, size, classes, lr, drop_rate):
    """The registry's merge order ``[train, task, evaluate]`` keeps the task's network and sizes, and the
    task's shared settings (task.json) also apply on top of inference.json."""
    for config in ("train.json", "evaluate.json"):
        parser = config_parser(config, task)
        assert parser.get_parsed_content("network_def#img_size") == size
        assert parser.get_parsed_content("network_def#out_channels") == classes
        assert parser.get_parsed_content("resize_image#spatial_size") == size
        assert len(parser.get_parsed_content("class_names")) == max(classes, 2)
        assert parser.get_parsed_content("optimizer#lr") == pytest.approx(lr)
    # the paper's polyp regime keeps the official dropout; the from-scratch default trains without it
    assert config_parser("train.json", task).get_parsed_content("network_def#drop_rate") == drop_rate
    parser = config_parser("inference.json", task)
    assert list(parser.get_parsed_content("resize")[0].resizer.spatial_size) == size
    assert parser.get_parsed_content("network_def#out_channels") == classes
    evaluate = config_parser("evaluate.json", task)
    assert evaluate.get_parsed_content("label_at_original_size") is True


@pytest.mark.slow
def test_polyp_task_trains_at_three_sizes_on_kvasir(tmp_path):
    """The polyp task's multi-scale iteration on a real TransFuse (the tiny variant): three sizes per batch, one
    clipped backward and one optimizer step per size, the loss reported at the base size, and the
    training loss going down; then the task evaluates at the original resolution."""
    datalist = tmp_path / "datalist.json"
    write_datalist(KVASIR, datalist, num_training=8, num_validation=2, num_test=3, seed=3)
    common = {"dataset_dir": str(datalist), "bundle_root": str(tmp_path), "image_size": [64, 64], "variant": SMALL["variant"],
              "num_workers": 0, "num_overlays": 3, "output_dir": str(tmp_path / "eval")}
    parser = config_parser("train.json", "polyp", **common, multi_scale_multiple=16, batch_size=4,
                           max_epochs=4, val_interval=4, checkpoint_interval=4)
    set_determinism(seed=123)
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(parser.get_parsed_content("iteration_update"), MultiScaleIteration)

    sizes, steps, clipped, losses = [], [], [], []
    trainer.network.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[2:])) if m.training else None)
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(trainer.state.iteration))

    def after_backward(engine):  # runs after the config's GradientClipping handler
        grads = [p.grad.norm() for p in engine.network.parameters() if p.grad is not None]
        clipped.append((engine.state.grad_norm, float(torch.stack(grads).norm())))

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, after_backward)
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED,
                              lambda e: losses.append((tuple(e.state.output[0]["image"].shape[1:]), float(e.state.output[0]["loss"]))))
    trainer.run()

    iterations = 4 * 2  # 4 epochs of 8 images in batches of 4
    assert sizes == [(48, 48), (64, 64), (80, 80)] * iterations
    assert len(steps) == len(clipped) == 3 * iterations
    assert all(after <= 2.0 * 1.001 for _, after in clipped)
    assert any(before > 2.0 for before, _ in clipped)  # clipping did something
    assert all(size == (64, 64) for size, _ in losses) and len(losses) == iterations
    first, last = losses[0][1], np.mean([loss for _, loss in losses[-2:]])
    print(f"multi-scale training loss {first:.3f} -> {last:.3f}")
    assert last < first - 0.05
    assert (tmp_path / "models" / "model.pt").is_file()

    run_workflow("evaluate.json", "polyp", **common)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_cases"] == 3 and 0.0 <= metrics["mean_dice"] <= 1.0
    # overlays are only drawn when the prediction has the original image's size
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 3


def test_training_feeds_the_network_plain_tensors_and_validation_metatensors(tmp_path):
    """Training reads no metadata: the trainer's prepare_batch (engines.plain_batch) hands the network plain
    tensors, so no operation of the forward pass and loss goes through MetaTensor.__torch_function__;
    validation keeps MONAI's MetaTensors (Invertd and the distance metrics read their metadata)."""
    datalist = tmp_path / "datalist.json"
    write_datalist(KVASIR, datalist, num_training=2, num_validation=1, seed=3)
    parser = config_parser("train.json", dataset_dir=str(datalist), bundle_root=str(tmp_path), image_size=[32, 32],
                           batch_size=2, num_workers=0, max_epochs=1)
    trainer = parser.get_parsed_content("train#trainer")
    inputs: dict[bool, set] = {True: set(), False: set()}
    trainer.network.register_forward_pre_hook(lambda module, args: inputs[module.training].add(type(args[0])))
    trainer.run()
    assert inputs == {True: {torch.Tensor}, False: {MetaTensor}}


@pytest.mark.slow
def test_isic2017_task_on_ph2_prepare_train_evaluate(tmp_path):
    """PH2 dermoscopy through the whole path: prepare (folder layout), one epoch with the isic2017
    task at 48x64, evaluation at the original resolution (about 765x570), with the ISIC 2017 challenge
    metrics (sensitivity, specificity, thresholded Jaccard) and the toolbox metrics in the report."""
    datalist = tmp_path / "ph2" / "datalist.json"
    lists = prepare(PH2, datalist, layout="folder", val_fraction=0.05, test_fraction=0.05)
    assert len(lists["test"]) == 5 and len(lists["training"]) + len(lists["validation"]) == 95
    common = {"dataset_dir": str(datalist), "bundle_root": str(tmp_path), "image_size": [48, 64], "num_workers": 0,
              "variant": SMALL["variant"]}
    run_workflow("train.json", "isic2017", **common, max_epochs=1, cache_rate=0.0)
    assert (tmp_path / "models" / "model.pt").is_file()
    out = tmp_path / "eval"
    run_workflow("evaluate.json", "isic2017", **common, output_dir=str(out), num_overlays=5)
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"PH2, isic2017 task, 1 epoch at 48x64: {metrics}")
    assert metrics["num_cases"] == 5
    for key in ("mean_dice", "mean_iou", "accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["hd95"] > 0  # every case counted, empty predictions at the image diagonal
    check_binary_report(metrics, out, num_cases=5)  # ISIC 2017 metrics, NSD, empty counts, toolbox metrics
    sizes = {Image.open(case["image"]).size for case in lists["test"]}
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 5 and {Image.open(p).size for p in overlays} <= sizes


@pytest.mark.slow
def test_hip_task_with_sliding_window_on_synthetic_grey_xrays(tmp_path):
    """The hip task (3 bones + background, grey PNGs, a pixel spacing) trained on patches and
    evaluated with a sliding window at the original resolution; the spacing reaches every case."""
    root = write_hip_dataset(tmp_path / "hip", 12)
    datalist = tmp_path / "datalist.json"
    lists = prepare(root, datalist, layout="hip", spacing=[0.4, 0.5])
    common = {"dataset_dir": str(datalist), "bundle_root": str(tmp_path), "image_size": [48, 64], "num_workers": 0,
              "variant": SMALL["variant"], "output_dir": str(tmp_path / "eval")}
    run_workflow("train.json", "hip", [SLIDING_WINDOW], **common, max_epochs=2, batch_size=4)

    parser = config_parser("evaluate.json", "hip", [SLIDING_WINDOW], **common)
    evaluator = parser.get_parsed_content("validate#evaluator")
    windows, spacings = [], []
    evaluator.network.register_forward_pre_hook(lambda m, args: windows.append(tuple(args[0].shape[2:])))
    # the datalist's spacing travels in the batch (MONAI's output holds image, label and pred only)
    evaluator.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: spacings.append(
        (tuple(e.state.output[0]["pred"].shape), case_spacing(engine_cases(e)[0]))))
    set_determinism(seed=123)
    evaluator.run()

    assert len(spacings) == len(lists["test"]) == 2
    for shape, spacing in spacings:
        assert shape == (4, 96, 128)  # one-hot over the 4 classes, at the original 96x128
        assert spacing == ([0.4, 0.5], "mm")
    assert set(windows) == {(48, 64)} and len(windows) > len(spacings)  # several windows per image
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    print(f"hip synthetic, sliding window: {metrics}")
    assert set(metrics["per_class"]) == {"pelvis", "left femur", "right femur"}
    assert metrics["units"] == {"hd95": "mm", "asd": "mm", "nsd_tolerance": "mm"}
    assert all(0.0 <= c["mean_dice"] <= 1.0 for c in metrics["per_class"].values())

    # the same option, the same windows for inference: one label PNG per test image, at its size, with class ids
    out = tmp_path / "predictions"
    served = run_workflow("inference.json", "hip", [SLIDING_WINDOW], dataset_dir=str(datalist), bundle_root=str(tmp_path),
                          image_size=[48, 64], num_workers=0, variant=SMALL["variant"], output_dir=str(out))
    assert served.parser.get_parsed_content("resize") == []  # original resolution, cut into windows
    assert type(served.parser.get_parsed_content("inferer").inferer).__name__ == "SlidingWindowInferer"
    masks = [np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))]
    assert len(masks) == 2 and all(m.shape == (96, 128) and m.max() <= 3 for m in masks)

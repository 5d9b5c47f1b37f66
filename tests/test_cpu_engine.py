"""The CPU inference engine (configs/inference_cpu.json, OpenVINO), INT8 (transfuse-quantize, inference_int8.json)
and the TensorRT overlay's refusal without CUDA, on tiny inputs (64x64 network, real Kvasir-SEG and Prostate158
files) through the bundle's real commands and workflows. The bundle root of the commands and of transfuse-quantize
holds TransFuse-S (the repository's configs as they are); the engine's own tests convert the tiny variant."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import KVASIR, ONE_THREAD, PROSTATE_T2, REPO, SMALL, bundle_cli, run_command, run_workflow, untrained_weights
from transfuse_bundle.errors import find_user_error

CHAIN = ["configs/train.json", "configs/inference.json"]
SIZE = ["--image_size", "[64,64]", "--num_workers", "0"]


def _config(*files: str) -> str:
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle root with untrained 64x64 weights, 6 Kvasir-SEG pairs (a datalist: 4 training, 2 test) and the
    images alone for inference."""
    root = tmp_path_factory.mktemp("cpu_engine")
    untrained_weights(root / "bundle")
    names = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[:6]
    pairs = [{"image": str(KVASIR / "images" / f"{n}.jpg"), "label": str(KVASIR / "masks" / f"{n}.png")} for n in names]
    (root / "datalist.json").write_text(json.dumps({"training": pairs[:4], "validation": [], "test": pairs[4:]}))
    (root / "images").mkdir()
    for n in names[4:]:
        shutil.copyfile(KVASIR / "images" / f"{n}.jpg", root / "images" / f"{n}.jpg")
    return root


def _run(bundle: Path, config: str, out: str, *overlays: str, **overrides):
    """The bundle's ``config`` (inference.json: the images; evaluate.json: the datalist) with ``overlays``, in this
    process: the user's command without its interpreter start (~13 s of a 2-core machine per run)."""
    data = bundle / ("datalist.json" if config == "evaluate.json" else "images")
    return run_workflow(config, overlays=overlays, bundle_root=str(bundle / "bundle"), dataset_dir=str(data),
                        output_dir=str(bundle / out), **{"image_size": [64, 64], "num_workers": 0, **overrides})


def _refusal(bundle: Path, out: str, *overlays: str, **overrides) -> str:
    """The one-line refusal (``error: ...`` on the console) of inference with ``overlays``."""
    with pytest.raises(Exception) as caught:
        _run(bundle, "inference.json", out, *overlays, **overrides)
    refusal = find_user_error(caught.value)
    assert refusal is not None, f"not a refusal: {caught.value!r}"
    assert not (bundle / out).exists()
    return str(refusal)


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*_seg.png"))}


def test_cpu_overlay_infers_like_pytorch_and_caches_the_engine_beside_the_weights(bundle, capsys):
    """Inference through configs/inference_cpu.json writes the masks PyTorch writes (fp32: >= 99.9 % of pixels)
    and leaves the converted model beside models/model.pt; a second run reads it instead of converting again."""
    _run(bundle, "inference.json", "pytorch", amp_dtype="float32")
    capsys.readouterr()
    _run(bundle, "inference.json", "engine", "configs/inference_cpu.json", amp_dtype="float32")
    cached = sorted((bundle / "bundle" / "models").glob("model.openvino-*.xml"))
    assert len(cached) == 1 and cached[0].with_suffix(".bin").is_file(), cached
    assert "converting the network to OpenVINO" in capsys.readouterr().out  # the bundle's logging.conf: stdout
    stamp = cached[0].stat().st_mtime_ns
    _run(bundle, "inference.json", "engine", "configs/inference_cpu.json", amp_dtype="float32")
    assert "converting the network to OpenVINO" not in capsys.readouterr().out
    assert cached[0].stat().st_mtime_ns == stamp
    ours, theirs = _masks(bundle / "engine"), _masks(bundle / "pytorch")
    assert sorted(ours) == sorted(theirs) and len(ours) == 2
    for name in ours:
        assert ours[name].shape == theirs[name].shape
        agreement = float((ours[name] == theirs[name]).mean())
        assert agreement >= 0.999, f"{name}: masks agree on {agreement:.4%} of pixels"


def test_engine_follows_new_weights_and_replaces_its_cache(bundle, tmp_path):
    """Weights loaded into the network (MONAI Label after /train) make a new engine model: the outputs follow them,
    and the cache of the old weights is replaced by the new one."""
    from transfuse_bundle.cpu_engine import CPUEngineInferer
    from transfuse_bundle.networks import TransFuse

    weights = tmp_path / "model.pt"
    torch.manual_seed(1)
    network = TransFuse(SMALL["variant"], img_size=(64, 64)).eval()
    torch.save(network.state_dict(), weights)
    inferer = CPUEngineInferer(weights, dtype=torch.float32)
    x = torch.rand(3, 3, 64, 64)  # batch 3: the batch dimension is dynamic
    for seed in (1, 2):
        if seed == 2:
            torch.manual_seed(seed)
            network.load_state_dict(TransFuse(SMALL["variant"], img_size=(64, 64)).state_dict())
        with torch.no_grad():
            expected = network(x)
            got = inferer(x, network)
        assert got.shape == expected.shape == (3, 1, 64, 64)
        assert float((torch.sigmoid(got) - torch.sigmoid(expected)).abs().max()) < 1e-4
        if seed == 1:
            old = sorted(tmp_path.glob("model.openvino-*.xml"))
    new = sorted(tmp_path.glob("model.openvino-*.xml"))
    assert len(old) == len(new) == 1 and old != new, (old, new)
    assert not old[0].with_suffix(".bin").exists()


def test_engine_converts_inside_the_bf16_autocast_of_serving(tmp_path):
    """With amp_dtype bfloat16 (``auto`` where bf16 is native, as MONAI Label serves) the first call converts the
    network inside the inferer's autocast, with gradients enabled as MONAI Label calls it: the conversion must see
    the weights, not autocast's bf16 copies of them."""
    from transfuse_bundle.cpu_engine import CPUEngineInferer
    from transfuse_bundle.networks import TransFuse

    torch.manual_seed(0)
    network = TransFuse(SMALL["variant"], img_size=(64, 64)).eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    x = torch.rand(2, 3, 64, 64)
    got = torch.sigmoid(CPUEngineInferer(tmp_path / "model.pt", dtype=torch.bfloat16)(x, network))
    with torch.no_grad():
        expected = torch.sigmoid(network(x))
    assert got.shape == expected.shape and float((got - expected).abs().max()) < 0.1
    assert float(((got > 0.5) == (expected > 0.5)).float().mean()) > 0.99


def test_cpu_overlay_evaluates_like_pytorch(bundle):
    """evaluate.json with the CPU overlay: the full report, its Dice equal to the PyTorch evaluation's."""
    reports = {}
    for name, overlays in (("eval_pytorch", []), ("eval_engine", ["configs/inference_cpu.json"])):
        _run(bundle, "evaluate.json", name, *overlays, amp_dtype="float32")
        reports[name] = json.loads((bundle / name / "metrics.json").read_text())
    assert reports["eval_engine"]["num_cases"] == 2
    for key in ("mean_dice", "mean_iou", "sensitivity", "specificity"):
        assert reports["eval_engine"][key] == pytest.approx(reports["eval_pytorch"][key], abs=2e-3), key
    assert reports["eval_engine"]["polyp_toolbox"]["mae"] == pytest.approx(
        reports["eval_pytorch"]["polyp_toolbox"]["mae"], abs=1e-3)


def test_prostate_volume_runs_slice_by_slice_through_the_engine(tmp_path):
    """The prostate task's SliceInferer batches axial slices (sw_batch_size 4) into the engine: a real T2 volume
    gives PyTorch's probabilities."""
    from transfuse_bundle.tools.tasks import config_parser

    weights = tmp_path / "models" / "model.pt"
    weights.parent.mkdir()
    parsers = {name: config_parser("inference.json", "prostate", overlays, image_size=[64, 64], amp_dtype="float32",
                                   variant=SMALL["variant"], bundle_root=str(tmp_path))
               for name, overlays in (("pytorch", []), ("engine", ["configs/inference_cpu.json"]))}
    parsers["pytorch"].get_parsed_content("imports")
    torch.manual_seed(0)
    network = parsers["pytorch"].get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), weights)
    volume = parsers["pytorch"].get_parsed_content("preprocessing")({"image": str(PROSTATE_T2)})["image"]
    volume = torch.as_tensor(volume)[None, ..., 8:14]  # (1, 1, 64, 64, 6): six slices, batched 4 + 2
    with torch.no_grad():
        probabilities = {name: torch.softmax(parser.get_parsed_content("inferer")(volume, network), 1)
                         for name, parser in parsers.items()}
    assert probabilities["engine"].shape == probabilities["pytorch"].shape == (1, 3, 64, 64, 6)
    assert float((probabilities["engine"] - probabilities["pytorch"]).abs().max()) < 1e-3
    assert sorted(p.suffix for p in weights.parent.glob("model.openvino-*")) == [".bin", ".xml"]


def test_without_openvino_the_overlay_names_the_extra_before_any_work(bundle, tmp_path):
    """A Python where ``import openvino`` fails: one line naming the extra, exit 1, no output folder (the user's
    command for the CPU overlay; the INT8 overlay's refusal in this process, where openvino is blocked alike)."""
    blocker = tmp_path / "site" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named openvino')\n")
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}"}
    result = bundle_cli(
        "run", "--config_file", _config(*CHAIN, "configs/inference_cpu.json"), "--bundle_root", bundle / "bundle",
        "--dataset_dir", bundle / "images", "--output_dir", tmp_path / "out", *SIZE, env=env, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the CPU engine") and 'pip install -e ".[cpu]"' in last, last
    assert not (tmp_path / "out").exists()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "openvino", None)  # what Python does for a package that is not installed
        message = _refusal(bundle, "out_int8", "configs/inference_int8.json")
    assert message.startswith("the CPU engine") and 'pip install -e ".[cpu]"' in message, message


def test_trt_overlay_refuses_without_cuda_in_one_line(bundle, tmp_path):
    """configs/inference_trt.json on a machine without CUDA: one line instead of MONAI's silent eager fallback."""
    message = _refusal(bundle, "out_trt", "configs/inference_trt.json")
    assert message.startswith("configs/inference_trt.json compiles the network with TensorRT, which needs a CUDA GPU")


def test_quantize_gate_refuses_then_writes_and_int8_serves_its_weights_only(bundle, caplog, capsys):
    """transfuse-quantize: a gate that cannot be met writes nothing into models/ and says by how much it missed;
    a met gate writes the INT8 model, which inference_int8.json serves; a network retrained in place (MONAI Label) is
    served by the fp32 engine with a warning, and new weights in the file make the overlay refuse in one line."""
    from transfuse_bundle.tools.cli.quantize import main as transfuse_quantize

    quantize = ["--bundle_root", str(bundle / "bundle"), "--dataset_dir", str(bundle / "datalist.json"),
                "--image_size", "64", "64", "--calibration-size", "4", "--output_dir", str(bundle / "int8_report")]
    assert transfuse_quantize([*quantize, "--max-dice-drop", "-1"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: INT8 held-out mean Dice") and "missed by" in last and "not written" in last, last
    assert not list((bundle / "bundle" / "models").glob("model.int8.*"))
    report = json.loads((bundle / "int8_report" / "quantization.json").read_text())
    assert report["gate"]["passed"] is False and report["num_held_out"] == 2
    assert {"mean_dice", "hd95", "polyp_toolbox/mae"} <= {row["metric"] for row in report["metrics"]}

    assert transfuse_quantize([*quantize, "--max-dice-drop", "1"]) == 0
    models = bundle / "bundle" / "models"
    assert sorted(p.name for p in models.glob("model.int8.*")) == ["model.int8.bin", "model.int8.json", "model.int8.xml"]
    assert json.loads((models / "model.int8.json").read_text())["gate"]["passed"] is True
    _run(bundle, "inference.json", "int8", "configs/inference_int8.json")
    assert len(_masks(bundle / "int8")) == 2

    message = _refusal(bundle, "int8_resized", "configs/inference_int8.json", image_size=[96, 96])
    assert "was quantized for network inputs [3, 64, 64]" in message and "[3, 96, 96]" in message, message

    # MONAI Label after /train: the network holds other weights than the INT8 model's; the fp32 engine serves them
    from transfuse_bundle.cpu_engine import CPUEngineInferer
    from transfuse_bundle.networks import TransFuse

    weights = models / "model.pt"
    state = torch.load(weights, weights_only=True)
    retrained = TransFuse("S", img_size=(64, 64)).eval()
    retrained.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()})
    x = torch.rand(1, 3, 64, 64)
    # the workflows above ran the bundle's logging.conf, which replaced the root logger's handlers (caplog's too)
    engine_logger = logging.getLogger("transfuse_bundle.cpu_engine")
    engine_logger.addHandler(caplog.handler)
    with caplog.at_level("WARNING", logger="transfuse_bundle.cpu_engine"), torch.no_grad():
        got = CPUEngineInferer(weights, dtype=torch.float32, quantized=True)(x, retrained)
        expected = retrained(x)
    engine_logger.removeHandler(caplog.handler)
    assert "quantized from other weights" in caplog.text
    assert float((torch.sigmoid(got) - torch.sigmoid(expected)).abs().max()) < 1e-4

    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
    try:
        message = _refusal(bundle, "int8_stale", "configs/inference_int8.json")
    finally:
        torch.save(state, weights)
    assert "quantized from other weights" in message and "transfuse-quantize" in message, message


def test_monailabel_install_refuses_int8_without_its_model_before_touching_the_app(bundle, tmp_path):
    """``transfuse-monailabel-app --engine int8`` for weights with no INT8 model beside them: one line, no app."""
    app = tmp_path / "apps" / "monaibundle"
    weights = tmp_path / "elsewhere" / "model.pt"
    weights.parent.mkdir()
    shutil.copyfile(bundle / "bundle" / "models" / "model.pt", weights)
    result = run_command([sys.executable, str(REPO / "scripts" / "make_monailabel_app.py"), "--app", app, "--task",
                          "polyp", "--weights", weights, "--set", "image_size=[64,64]", "--engine", "int8"],
                         env={**os.environ, **ONE_THREAD}, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "model.int8.xml: no INT8 model beside" in last, last
    assert not app.exists()

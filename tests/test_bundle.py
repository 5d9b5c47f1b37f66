"""The MONAI bundle end to end, as the model zoo tests it: synthetic data; train, train+evaluate and
inference through ``ConfigWorkflow`` (``config_workflow``; ``initialize(); check_properties() == []; run();
finalize()``);
the user's CLI commands as subprocesses; the bundle checks; and a 2-process DDP run on CPU.

Everything is written under pytest's tmp_path (``--bundle_root`` / ``--output_dir``); each CLI test
checks that nothing new appeared in the repository tree.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLI_SMALL, REPO, SMALL, bundle_cli, console_noise, run_command, run_workflow
from transfuse_bundle.errors import find_user_error
from transfuse_bundle.data import make_synthetic_case, synthetic_dataset
from transfuse_bundle.networks import TransFuse
from transfuse_bundle.tools.tasks import config_parser, config_workflow

CONFIGS = REPO / "configs"
#: the user's inference command: the served config is an overlay on the training chain
INFERENCE_CLI = "['configs/train.json','configs/inference.json']"
IMAGE_SIZE, VARIANT = SMALL["image_size"], SMALL["variant"]
SYNTHETIC_HW = (48, 80)  # not square: a transposed prediction would not match its mask
WATCHED = ("models", "eval", "data", "runs", "configs", "mlruns")  # where a stray bundle write would land


def _repo_snapshot() -> dict[str, int]:
    """Files (and their mtimes) in the repository places a bundle run could write to, plus top-level files."""
    files = {str(p): p.stat().st_mtime_ns for p in REPO.iterdir() if p.is_file()}
    for name in WATCHED:
        if (REPO / name).exists():
            files.update({str(p): p.stat().st_mtime_ns for p in (REPO / name).rglob("*") if p.is_file()})
    return files


def _cli(*args: str, torchrun: bool = False, timeout: int = 300, fresh: bool = False) -> subprocess.CompletedProcess:
    """Runs ``python -m monai.bundle ARGS`` (or through torchrun) from the repository root; fails with its output.
    ``fresh``: in a new interpreter, not the suite's warmed-up one (see :func:`conftest.run_command`)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if torchrun else os.environ.get("OMP_NUM_THREADS", "2")}
    before = _repo_snapshot()
    result = run_command([*launcher, "-m", "monai.bundle", *args], env=env, timeout=timeout, fresh=fresh)
    assert _repo_snapshot() == before, "the bundle command wrote into the repository tree"
    return result


def _save_mask_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


@pytest.fixture(scope="module", autouse=True)
def repository_untouched():
    """No test of this module, in-process or CLI, may write into the repository tree."""
    before = _repo_snapshot()
    yield
    assert _repo_snapshot() == before, "a bundle test wrote into the repository tree"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """10 synthetic cases: 5 training, 2 validation, 3 test."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    return Path(synthetic_dataset(root, num_cases=10, num_validation=2, num_test=3, size=SYNTHETIC_HW))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic) -> dict:
    """A bundle root with weights from a 2-epoch ConfigWorkflow training, and the workflow."""
    root = tmp_path_factory.mktemp("bundle")
    workflow = run_workflow(
        "train.json", bundle_root=str(root), dataset_dir=str(synthetic), **SMALL, **{"train#trainer#max_epochs": 2}
    )
    return {"root": root, "workflow": workflow}


def test_train_workflow_saves_plain_state_dict_and_logs(trained):
    root, workflow = trained["root"], trained["workflow"]
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    assert 0.0 <= trainer.state.metrics["train_mean_dice"] <= 1.0
    assert np.isfinite(trainer.state.grad_norm) and trainer.state.grad_norm > 0  # the clipping handler ran
    optimizer = workflow.parser.get_parsed_content("optimizer")
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(1e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine-annealed to 0 over the 2 epochs
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    validator = workflow.parser.get_parsed_content("validate#evaluator")
    assert set(validator.state.metrics) == {"val_mean_dice", "val_mean_iou", "val_hd95", "val_asd"}

    state_dict = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state_dict.values()), "model.pt must be a plain state dict"
    network = TransFuse(VARIANT, in_channels=3, out_channels=1, img_size=IMAGE_SIZE)
    network.load_state_dict(state_dict, strict=True)
    assert list((root / "eval" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def evaluation(trained, synthetic, tmp_path_factory) -> Path:
    """The output folder of train.json + evaluate.json run on the synthetic test list."""
    out = tmp_path_factory.mktemp("evaluation")
    run_workflow("evaluate.json", bundle_root=str(trained["root"]), dataset_dir=str(synthetic), output_dir=str(out), **SMALL)
    return out


def test_evaluate_workflow_writes_report_at_original_size(evaluation):
    out = evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 3  # the test list of the synthetic datalist
    for key in ("mean_dice", "mean_iou", "accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    for key in ("hd95", "asd"):
        assert metrics[key] is None or metrics[key] >= 0
    assert set(metrics["per_class"]) == {"polyp"}
    assert set(metrics["per_class"]["polyp"]) == {"mean_dice", "mean_iou", "accuracy", "sensitivity", "specificity",
                                                  "thresholded_jaccard", "hd95", "asd", "nsd", "empty_cases"}
    assert sum(metrics["empty_cases"].values()) <= 3 and 0.0 <= metrics["nsd"] <= 1.0
    toolbox = metrics["polyp_toolbox"]  # binary 2D: the probability maps reach the report
    assert toolbox["num_cases"] == 3 and all(0.0 <= toolbox[k] <= 1.0 for k in ("mdice", "miou", "sm", "mae", "max_em"))
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [Path(r["filename"]).name for r in rows] == ["case_007.png", "case_008.png", "case_009.png"]
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(metrics["mean_dice"], abs=1e-5)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == ["case_007.png", "case_008.png", "case_009.png"]
    assert Image.open(overlays[0]).size == (SYNTHETIC_HW[1], SYNTHETIC_HW[0])  # original size, (W, H)
    assert (out / "val_mean_dice_raw.csv").is_file()  # MONAI's MetricsSaver too


def test_inference_workflow_writes_masks_at_original_size(trained, synthetic, evaluation, tmp_path):
    out = tmp_path / "pred"
    run_workflow("inference.json", bundle_root=str(trained["root"]), dataset_dir=str(synthetic), output_dir=str(out), **SMALL)
    masks = sorted(out.glob("*.png"))
    assert [p.name for p in masks] == ["case_007_seg.png", "case_008_seg.png", "case_009_seg.png"]
    evaluated_dice = {Path(r["filename"]).stem: float(r["dice"]) for r in csv.DictReader(open(evaluation / "per_case.csv"))}
    for path in masks:
        mask = Image.open(path)
        assert mask.mode == "L" and mask.size == (SYNTHETIC_HW[1], SYNTHETIC_HW[0])
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        # the saved mask, compared with the ground truth file, gives the Dice the evaluation reported
        stem = path.stem.removesuffix("_seg")
        pred, truth = np.asarray(mask) > 127, np.asarray(Image.open(synthetic / "masks" / f"{stem}.png")) > 127
        dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
        assert dice == pytest.approx(evaluated_dice[stem], abs=1e-4)


def test_network_def_is_identical_in_train_and_inference():
    """The served network, precision, preprocessing and inferer are the trained ones by construction: the
    inference overlay redefines none of them, and the merged chains hold the same configs."""
    overlay = json.loads((CONFIGS / "inference.json").read_text())
    train, inference = config_parser("train.json"), config_parser("inference.json")
    for key in ("network_def", "network", "variant", "in_channels", "out_channels", "image_size", "pretrained",
                "amp_dtype", "autocast_dtype", "load_image", "resize", "intensity", "normalize", "to_tensor",
                "preprocessing", "window_inferer", "inferer"):
        assert key not in overlay, f"inference.json redefines {key}"
        assert train[key] == inference[key], key
    for config in (train, inference, config_parser("multi_gpu_train.json")):
        assert "run" in config
    assert "training" in train and "network" in train and "network" in inference


@pytest.mark.slow
def test_cli_user_command_trains_on_generated_synthetic_data(tmp_path):
    """The README's command, exactly, plus small overrides (default workers); the default dataset is generated under
    bundle_root; nothing is printed that does not concern the user (no DataLoader, nvImageCodec or other warning)."""
    result = _cli(
        "run", "training", "--config_file", "configs/train.json",
        "--bundle_root", str(tmp_path), "--train#trainer#max_epochs", "1", "--image_size", "[64,64]", "--batch_size", "8",
        "--variant", VARIANT, fresh=True,
    )
    assert console_noise(result) == []
    datalist = json.loads((tmp_path / "data" / "synthetic" / "datalist.json").read_text())
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [40, 10, 10]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "val_mean_dice" in result.stdout + result.stderr
    assert "[5/5] 100%" in result.stderr  # the progress bar: 40 cases, batches of 8


def test_cli_evaluate_folder_dataset_evaluates_every_image(trained, tmp_path):
    folder = tmp_path / "folder"
    for index, ext in enumerate([".jpg", ".jpeg", ".png", ".bmp"]):
        image, mask = make_synthetic_case(1000 + index, (56, 40))
        (folder / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / "images" / f"img{index}{ext}", quality=95)
        _save_mask_png(folder / "masks" / f"img{index}.png", mask)
    out = tmp_path / "out"
    result = _cli(
        "run", "--config_file", "['configs/train.json','configs/evaluate.json']",
        "--dataset_dir", str(folder), "--output_dir", str(out), "--bundle_root", str(trained["root"]), *CLI_SMALL,
        fresh=True,  # the console from the interpreter's start: warnings at import included
    )
    assert console_noise(result) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 4
    assert {"mean_dice", "mean_iou", "accuracy", "hd95", "asd", "per_class"} <= set(metrics)
    assert len(list(csv.DictReader(open(out / "per_case.csv")))) == 4
    assert len(list((out / "overlays").glob("*.png"))) == 4


def test_cli_inference_writes_one_png_per_image(trained, synthetic, tmp_path):
    out = tmp_path / "pred"
    result = _cli(
        "run", "--config_file", INFERENCE_CLI, "--dataset_dir", str(synthetic / "images"),
        "--output_dir", str(out), "--bundle_root", str(trained["root"]), *CLI_SMALL,
        fresh=True,  # the console from the interpreter's start: warnings at import included
    )
    assert console_noise(result) == []
    assert len(list(out.glob("*_seg.png"))) == 10  # a folder of images: every one of them


def test_cli_errors_name_the_path_before_any_work(trained, tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = bundle_cli("run", "training", "--config_file", "configs/train.json", "--bundle_root", str(tmp_path),
                        "--dataset_dir", str(missing), *CLI_SMALL, timeout=120, check=False)
    assert result.returncode != 0
    assert f"dataset_dir '{missing}' does not exist" in result.stderr
    assert not (tmp_path / "models").exists()
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "a.png")
    with pytest.raises(Exception) as refused:  # the same check of inference, in this process
        run_workflow("inference.json", bundle_root=str(tmp_path), dataset_dir=str(images), **SMALL)
    assert f"{tmp_path}/models/model.pt' does not exist" in str(find_user_error(refused.value))


def test_cli_verify_metadata_offline(tmp_path):
    schema = tmp_path / "schema.json"
    shutil.copy(REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json", schema)
    result = _cli("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema))
    assert "metadata is verified with no error" in result.stdout + result.stderr


@pytest.mark.slow
def test_cli_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    result = _cli("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", INFERENCE_CLI)
    assert "data shape of network is verified with no error" in result.stdout + result.stderr
    model_ts = tmp_path / "model.ts"
    _cli(
        "ckpt_export", "network_def", "--filepath", str(model_ts), "--ckpt_file", str(trained["root"] / "models" / "model.pt"),
        "--meta_file", "configs/metadata.json", "--config_file", INFERENCE_CLI, *CLI_SMALL,
    )
    scripted = torch.jit.load(str(model_ts))
    network = TransFuse(VARIANT, img_size=IMAGE_SIZE)
    network.load_state_dict(torch.load(trained["root"] / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), network.eval()(x), atol=1e-5)


def test_multi_gpu_config_properties_in_a_one_process_group(synthetic, tmp_path, monkeypatch):
    """train.json + multi_gpu_train.json: initialize (gloo, world size 1), check_properties() == [], finalize."""
    # init_process_group wraps sys.excepthook with a "[rank0]" prefix for the rest of the process
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    workflow = config_workflow("multi_gpu_train.json", bundle_root=str(tmp_path), dataset_dir=str(synthetic), **SMALL)
    workflow.initialize()
    assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
    assert workflow.check_properties() == []
    assert isinstance(workflow.parser.get_parsed_content("network"), torch.nn.parallel.DistributedDataParallel)
    workflow.finalize()
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_ddp_training_with_torchrun_two_processes(synthetic, tmp_path):
    result = _cli(
        "run", "training", "--config_file", "['configs/train.json','configs/multi_gpu_train.json']",
        "--dataset_dir", str(synthetic), "--bundle_root", str(tmp_path), "--train#trainer#max_epochs", "1",
        *CLI_SMALL, "--batch_size", "2", torchrun=True,
    )
    state_dict = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state_dict), "DDP weights must be saved unwrapped"
    TransFuse(VARIANT, img_size=IMAGE_SIZE).load_state_dict(state_dict, strict=True)
    assert result.stdout.count("Key metric: val_mean_dice best value") == 1  # console stats from rank 0 only


@pytest.mark.slow  # two processes that refuse at start: ~20 s
def test_torchrun_with_fewer_validation_cases_than_processes_refuses_before_work(synthetic, tmp_path):
    """Before: 2 ranks and 1 validation case trained the first epoch, then the rank without a validation case
    crashed. Now every rank refuses before the process group is made, naming the list and what to change."""
    from transfuse_bundle.data import load_datalist

    lists = load_datalist(synthetic)  # absolute paths
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": lists["training"], "validation": lists["validation"][:1]}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = run_command([*launcher, "-m", "monai.bundle", "run", "training", "--config_file",
                          "['configs/train.json','configs/multi_gpu_train.json']", "--dataset_dir", str(datalist),
                          "--bundle_root", str(tmp_path / "bundle"), *CLI_SMALL], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300, check=False)
    assert result.returncode != 0
    refusal = ("error: the validation list has 1 case(s), fewer than the 2 processes of this run: each process "
               "validates its own share and one would have none")
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]  # both ranks, one line each
    assert not (tmp_path / "bundle" / "models").exists() or not list((tmp_path / "bundle" / "models").iterdir())
    assert "Epoch" not in result.stdout + result.stderr


def test_multiclass_training_and_evaluation(tmp_path):
    """Three classes (ids 0/1/2 in the masks): softmax + argmax paths, per-class report."""
    data = tmp_path / "multi"
    for index in range(6):
        image, mask = make_synthetic_case(index, (48, 64))
        ids = (mask > 0).astype(np.uint8)
        ids[:24][ids[:24] > 0] = 2  # lesion pixels in the top half are class 2
        (data / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / "images" / f"c{index}.png")
        _save_mask_png(data / "masks" / f"c{index}.png", ids)
    overrides = {
        "bundle_root": str(tmp_path / "bundle"), "dataset_dir": str(data), "out_channels": 3,
        "class_names": ["background", "lesion_a", "lesion_b"], **SMALL,
    }
    run_workflow("train.json", **overrides, **{"train#trainer#max_epochs": 1})
    out = tmp_path / "eval"
    run_workflow("evaluate.json", **overrides, output_dir=str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 6
    assert set(metrics["per_class"]) == {"lesion_a", "lesion_b"}
    header = next(csv.reader(open(out / "per_case.csv")))
    assert "dice_lesion_a" in header and "hd95_lesion_b" in header


def test_cli_tracking_mlflow_records_metrics(synthetic, tmp_path):
    import mlflow

    _cli(
        "run", "training", "--config_file", "configs/train.json", "--dataset_dir", str(synthetic),
        "--bundle_root", str(tmp_path), "--train#trainer#max_epochs", "1", *CLI_SMALL, "--tracking", "mlflow",
    )
    database = tmp_path / "eval" / "mlruns.db"
    assert database.is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"train_loss", "val_mean_dice", "val_mean_iou", "val_hd95", "val_asd"} <= set(runs[0].data.metrics)


def test_synthetic_default_trains_fewer_epochs_than_real_data(tmp_path):
    """The main command on the synthetic default trains synthetic_max_epochs (minutes on a 2-core CPU); any other
    dataset keeps the real-data default, and an explicit --max_epochs wins over both. The LR schedule follows."""
    def epochs(**overrides):
        parser = config_parser("train.json", **{"bundle_root": str(tmp_path), **overrides})
        return parser.get_parsed_content("train#trainer#max_epochs"), parser.get_parsed_content("lr_scheduler#T_max")

    kvasir = str(REPO.parent / "shared" / "data" / "kvasir_seg")
    assert epochs() == (5, 5)
    assert epochs(dataset_dir=str(tmp_path / "data" / "synthetic")) == (5, 5)  # the same folder, named explicitly
    assert epochs(dataset_dir=kvasir) == (25, 25)
    assert epochs(max_epochs=3) == (3, 3) and epochs(dataset_dir=kvasir, max_epochs=3) == (3, 3)

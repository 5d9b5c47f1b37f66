"""Weights and checkpoints that do not fit: the message says which config value
differs when the shapes tell it, and names the file, before any work; so do a truncated checkpoint on resume,
``--set`` values that are not JSON and an ``--app`` that is a file.

Real Kvasir-SEG images (a tiny datalist) are read in place from ../shared/data; real TransFuse-S state dicts
are written under pytest's tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import KVASIR, TINY
from transfuse_bundle.data import write_datalist
from transfuse_bundle.networks import TransFuse
from transfuse_bundle.tools.tasks import config_workflow
from transfuse_bundle.weights import WeightsFileError

TINY_ON_CPU = {**TINY, "batch_size": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def kvasir(tmp_path_factory) -> Path:
    """A datalist.json of 4 training, 1 validation and 1 test Kvasir cases (absolute paths)."""
    datalist = tmp_path_factory.mktemp("kvasir") / "datalist.json"
    write_datalist(KVASIR, datalist, num_training=4, num_validation=1, num_test=1)
    return datalist


@pytest.fixture(scope="module")
def three_class_network() -> TransFuse:
    """The tiny variant for 3 classes at 64x64: weights of another task and size than a 1-class 32x32 config."""
    torch.manual_seed(0)
    return TransFuse(TINY["variant"], in_channels=3, out_channels=3, img_size=(64, 64))


def _cause(error: BaseException, kind: type) -> BaseException:
    """The exception of ``kind`` that MONAI's config parser wrapped."""
    while not isinstance(error, kind) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, kind), repr(error)
    return error


@pytest.mark.parametrize("config", ["inference", "evaluate"])
def test_checkpoint_of_another_task_and_size_is_refused_naming_the_config_values(tmp_path, kvasir, config,
                                                                                 three_class_network):
    weights = tmp_path / "model.pt"
    torch.save(three_class_network.state_dict(), weights)
    out = tmp_path / "out"
    workflow = config_workflow(f"{config}.json", bundle_root=str(tmp_path), ckpt_path=str(weights),
                               dataset_dir=str(kvasir), output_dir=str(out), **TINY_ON_CPU)
    workflow.initialize()
    with pytest.raises(Exception) as err:
        workflow.run()
    message = str(_cause(err.value, WeightsFileError))
    assert message.startswith("trained weights (") and f"{str(weights)!r} does not fit the network" in message
    assert "weights have out_channels 3, the config 1" in message, message
    assert "weights were trained at image size 64x64, the config 32x32" in message and "--image_size [64,64]" in message
    assert "\n" not in message and not out.exists()


def _checkpoint(path: Path, network: torch.nn.Module) -> Path:
    """A training checkpoint as TrainingCheckpoint writes it: each object's state dict, plus the trainer's state."""
    optimizer = torch.optim.Adam(network.parameters())
    torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                "trainer": {"epoch_length": 2, "max_epochs": 2, "iteration": 2}}, path)
    return path


def _resume(bundle: Path, kvasir: Path) -> ConfigWorkflow:
    return config_workflow("train.json", bundle_root=str(bundle), dataset_dir=str(kvasir), resume=True, max_epochs=2,
                           **TINY_ON_CPU)


def test_truncated_checkpoint_on_resume_is_named_before_data_is_loaded(tmp_path, kvasir, three_class_network):
    checkpoint = _checkpoint(tmp_path / "full.pt", three_class_network)
    (tmp_path / "models").mkdir()
    cut = tmp_path / "models" / "checkpoint.pt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    before = cut.read_bytes()
    workflow = _resume(tmp_path, kvasir)
    workflow.initialize()
    with pytest.raises(Exception) as err:  # run's first step: the data is not even listed yet
        workflow.run()
    message = str(_cause(err.value, WeightsFileError))
    assert message.startswith(f"training checkpoint to resume from (resume=true): {str(cut)!r} is truncated"), message
    assert cut.read_bytes() == before and sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoint.pt", "full.pt", "models"]


def test_checkpoint_of_another_network_is_refused_before_training(tmp_path, kvasir, three_class_network):
    (tmp_path / "models").mkdir()
    checkpoint = _checkpoint(tmp_path / "models" / "checkpoint.pt", three_class_network)
    before = checkpoint.read_bytes()
    workflow = _resume(tmp_path, kvasir)
    workflow.initialize()  # a readable checkpoint: the network it must fit is built with the trainer
    with pytest.raises(Exception) as err:
        workflow.run()
    message = str(_cause(err.value, WeightsFileError))
    assert f"{str(checkpoint)!r} does not fit the network: weights have out_channels 3, the config 1" in message, message
    assert "image size 64x64, the config 32x32" in message
    assert checkpoint.read_bytes() == before and sorted(p.name for p in (tmp_path / "models").iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("command", ["package_bundle", "make_monailabel_app"])
@pytest.mark.parametrize("value, words", [
    ("image_size=[256,256", "'image_size=[256,256': the value is not valid JSON (Expecting ',' delimiter); check its brackets"),
    ("pretrained=True", "JSON spells it true"),
    ("variant=L", """quote a string: variant='"L"'"""),
])
def test_set_value_that_is_not_json_is_an_error(tmp_path, capsys, command, value, words):
    """Before, ``--set`` kept such a value as a string: a typo reached the configs and failed later, or not at all."""
    import importlib

    main = importlib.import_module(f"transfuse_bundle.tools.cli.{command}").main
    where = ["--out", str(tmp_path / "dist")] if command == "package_bundle" else ["--app", str(tmp_path / "app")]
    with pytest.raises(SystemExit) as exit_:
        main([*where, "--set", value])
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_monailabel_app_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    from transfuse_bundle.tools.cli.make_monailabel_app import main

    app = tmp_path / "app.txt"
    app.write_text("notes")
    assert main(["--app", str(app), "--task", "polyp"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {app} is a file, not a MONAI Label app folder: pass a folder (made if missing)\n"
    assert app.read_text() == "notes" and [p.name for p in tmp_path.iterdir()] == ["app.txt"]


def test_package_with_an_image_size_the_network_cannot_take_is_a_one_line_error(tmp_path, capsys):
    """Before: MONAI's 'Failed to instantiate component' traceback out of the command."""
    from transfuse_bundle.tools.cli.package_bundle import main

    assert main(["--out", str(tmp_path / "dist"), "--init-weights", "--set", "image_size=[100,100]"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "network_def cannot be built: TransFuse: img_size must be (H, W) with sides " \
        "that are multiples of 16" in err and "pad or resize to (112, 112)" in err and "\n" not in err, err
    assert not list((tmp_path / "dist").glob("*.zip"))

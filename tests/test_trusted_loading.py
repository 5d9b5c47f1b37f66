"""Trusted loading: weights are read with ``weights_only=True`` and data files are never run.

The "malicious" checkpoints here are real pickles whose ``__reduce__`` calls ``builtins.open(MARKER, "w")``:
unpickled with ``weights_only=False`` they create the marker file (checked once, so the fixture is known to
be dangerous), and every path of the bundle that reads weights must refuse them without the marker appearing:
:func:`transfuse_bundle.weights.load_weights`, ``monai.bundle run`` of ``configs/inference.json`` (its ``run``
list checks ``@ckpt_path`` before the evaluator exists), the backbones' local ImageNet files (timm),
packaging and the MONAI Label installer. The MONAI Label server's own loading is tested against a real
server in ``tests/test_monailabel.py``; sha256 checks of downloaded weights in ``tests/test_zoo.py``
(``test_download_large_files_refuses_tampered_weights``); ``models/model.pt`` being a plain state dict
after training in ``tests/test_bundle.py`` (``test_train_workflow_saves_plain_state_dict_and_logs``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import KVASIR, CreatesFile, run_command
from transfuse_bundle.weights import WeightsFileError, load_weights, require_weights

UNSAFE_MESSAGE = "contains pickled Python objects"


def _malicious_checkpoint(path: Path, marker: Path, raw_pickle: bool = False) -> Path:
    """A state dict with real tensors plus one entry that creates ``marker`` when unpickled."""
    content = {"weight": torch.randn(4, 4), "bias": torch.zeros(4), "payload": CreatesFile(marker)}
    if raw_pickle:  # a plain pickle file (not torch's zip format), as an attacker could also ship
        with open(path, "wb") as f:
            pickle.dump(content, f, protocol=2)
    else:
        torch.save(content, path)
    return path


def _state_dict_file(path: Path) -> Path:
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    return path


@pytest.mark.parametrize("raw_pickle", [False, True], ids=["torch_zip", "raw_pickle"])
def test_load_weights_refuses_pickled_code_without_running_it(tmp_path, raw_pickle):
    # the fixture is really dangerous: an unrestricted load runs its payload
    control_marker = tmp_path / "control_marker"
    control = _malicious_checkpoint(tmp_path / "control.pt", control_marker, raw_pickle)
    if raw_pickle:
        pickle.loads(control.read_bytes())
    else:
        torch.load(control, weights_only=False)
    assert control_marker.exists(), "the malicious test checkpoint did not run its payload when loaded unsafely"

    marker = tmp_path / "marker"
    bad = _malicious_checkpoint(tmp_path / "model.pt", marker, raw_pickle)
    with pytest.raises(WeightsFileError) as err:
        load_weights(bad, "trained weights")
    message = str(err.value)
    assert str(bad) in message and UNSAFE_MESSAGE in message and "torch.save(model.state_dict()" in message, message
    with pytest.raises(WeightsFileError, match=UNSAFE_MESSAGE):
        require_weights(bad)
    assert not marker.exists(), "loading the malicious checkpoint ran its payload"


def test_load_weights_reads_state_dicts_and_refuses_other_content(tmp_path):
    good = _state_dict_file(tmp_path / "good.pt")
    expected = torch.load(good, weights_only=True)
    loaded = load_weights(good)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert require_weights(good) == str(good)
    # ignite / CheckpointLoader layout: {"model": state_dict, ...}
    torch.save({"model": expected, "epoch": torch.tensor(3)}, tmp_path / "checkpoint.pt")
    assert load_weights(tmp_path / "checkpoint.pt").keys() == expected.keys()

    data = good.read_bytes()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "truncated, corrupt"),
        "text.pt": (b"not a checkpoint\n", "corrupt"),
    }
    for name, (content, expected_message) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"weight": torch.zeros(3), "lr": 0.1}, tmp_path / "mixed.pt")
    torch.save({}, tmp_path / "empty.pt")
    expectations = {name: message for name, (_, message) in cases.items()}
    expectations.update({"tensor.pt": "holds Tensor, not a state dict", "mixed.pt": "entry 'lr' is a float",
                         "empty.pt": "holds an empty dict"})
    for name, expected_message in expectations.items():
        with pytest.raises(WeightsFileError) as err:
            load_weights(tmp_path / name, "trained weights")
        assert str(tmp_path / name) in str(err.value) and expected_message in str(err.value), str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        require_weights(tmp_path / "missing.pt", "trained weights")
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path}' is a folder, not a file"):  # --ckpt_path DIR
        require_weights(tmp_path, "trained weights")


@pytest.mark.slow
def test_inference_cli_refuses_malicious_ckpt_before_any_work(tmp_path):
    """``monai.bundle run`` with a malicious ``--ckpt_path`` on a real Kvasir image: non-zero exit, the
    message names the file, the payload never ran and no prediction was written."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    source = sorted((KVASIR / "images").glob("*.jpg"))[0]
    shutil.copyfile(source, images / source.name)
    marker = tmp_path / "marker"
    bad = _malicious_checkpoint(tmp_path / "model.pt", marker)
    out = tmp_path / "predictions"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json','configs/inference.json']",
           "--meta_file", "configs/metadata.json", "--bundle_root", str(tmp_path), "--ckpt_path", str(bad),
           "--dataset_dir", str(tmp_path / "data"), "--output_dir", str(out), "--image_size", "[64,64]",
           "--num_workers", "0"]
    proc = run_command(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the run accepted a malicious checkpoint:\n{output[-3000:]}"
    assert UNSAFE_MESSAGE in output and str(bad) in output, output[-3000:]
    assert not marker.exists(), "monai.bundle run executed the checkpoint's payload"
    assert not out.exists() or not any(out.iterdir()), "predictions were written with refused weights"


def test_datalist_entries_are_paths_never_expressions(tmp_path):
    """Strings in a datalist.json that look like config expressions / references / macros are file names:
    the configs' own datalist ids (real ConfigParser, real configs) reject them as missing files."""
    from transfuse_bundle.data import DatasetError
    from transfuse_bundle.tools.tasks import config_parser

    marker = tmp_path / "marker"
    payload = f"$__import__('pathlib').Path({str(marker)!r}).touch()"
    image = tmp_path / "image.jpg"
    shutil.copyfile(sorted((KVASIR / "images").glob("*.jpg"))[0], image)
    entries = [{"image": payload, "label": payload}, {"image": "@network_def", "label": "%configs/train.json#lr"}]
    for entry in entries:
        datalist = tmp_path / "datalist.json"
        datalist.write_text(json.dumps({"training": [entry], "validation": [entry], "test": [entry]}))
        for config, item in (("train.json", "datalist"), ("inference.json", "datalist")):
            parser = config_parser(config, dataset_dir=str(datalist))
            with pytest.raises(RuntimeError) as err:  # ConfigParser wraps what an expression raises
                parser.get_parsed_content(item)
            cause = err.value.__cause__
            assert isinstance(cause, DatasetError), repr(cause)
            assert str(datalist) in str(cause) and "does not exist" in str(cause), str(cause)
            assert entry["image"] in str(cause) or entry["label"] in str(cause), str(cause)
    assert not marker.exists(), "a datalist entry was evaluated as code"


@pytest.mark.parametrize("branch", ["cnn_weights", "vit_weights"])
def test_backbone_weight_files_are_loaded_weights_only(tmp_path, branch):
    """``cnn_weights=`` / ``vit_weights=`` files go through timm's loader, which must refuse pickled code."""
    from transfuse_bundle.networks import TransFuse

    marker = tmp_path / "marker"
    bad = _malicious_checkpoint(tmp_path / f"{branch}.pth", marker)
    with pytest.raises(Exception) as err:
        TransFuse("S", img_size=(64, 64), **{branch: str(bad)})
    assert "weights_only" in str(err.value) or "Weights only" in str(err.value), str(err.value)
    assert not marker.exists(), f"{branch}: the ImageNet weights file's payload ran"


def test_packaging_and_monailabel_install_refuse_malicious_weights(tmp_path):
    from transfuse_bundle.tools.bundle_folder import BundleFolderError
    from transfuse_bundle.monailabel.app import install_bundle
    from transfuse_bundle.tools.packaging import PackagingError, package_bundle

    marker = tmp_path / "marker"
    bad = _malicious_checkpoint(tmp_path / "model.pt", marker)
    with pytest.raises(PackagingError, match=UNSAFE_MESSAGE):
        package_bundle("polyp", out=tmp_path / "dist", weights=bad)
    assert not (tmp_path / "dist").exists(), "packaging started before refusing the weights"
    app = tmp_path / "apps" / "monaibundle"
    with pytest.raises(BundleFolderError, match=UNSAFE_MESSAGE):
        install_bundle(app, "transfuse_polyp", weights=bad)
    assert not app.exists(), "the MONAI Label app was made before refusing the weights"
    assert not marker.exists()


def test_server_command_binds_loopback_unless_remote_is_explicit(tmp_path):
    from transfuse_bundle.monailabel.app import server_command, server_env

    cmd = server_command(tmp_path / "app", tmp_path / "studies", ["transfuse_polyp"], port=8123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    with pytest.raises(ValueError, match="beyond this machine"):
        server_command(tmp_path / "app", tmp_path / "studies", ["transfuse_polyp"], host="0.0.0.0")
    remote = server_command(tmp_path / "app", tmp_path / "studies", ["m"], host="0.0.0.0", allow_remote=True)
    assert remote[remote.index("--host") + 1] == "0.0.0.0"
    env = server_env({"PATH": "/usr/bin", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert env == {"PATH": "/usr/bin", "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}

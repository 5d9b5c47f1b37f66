"""Bundle folders (transfuse_bundle.bundle_folder) and the MONAI Label app helpers, without a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transfuse_bundle.bundle_folder import BundleFolderError, copy_bundle, write_initial_weights
from transfuse_bundle.monailabel_app import install_bundle, server_command

REPO = Path(__file__).resolve().parent.parent


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_polyp_folder_is_self_contained(tmp_path):
    dest = copy_bundle(tmp_path / "transfuse_polyp", task="polyp", include_models=False)
    for name in ("metadata.json", "inference.json", "train.json", "evaluate.json", "logging.conf"):
        assert (dest / "configs" / name).is_file(), name
    assert _json(dest / "configs" / "inference.json") == _json(REPO / "configs" / "inference.json")
    assert (dest / "LICENSE").is_file() and (dest / "transfuse_bundle" / "networks" / "__init__.py").is_file()
    assert not list(dest.rglob("__pycache__"))
    assert not (dest / "configs" / "tasks").exists()
    # importable from the folder alone, without the installed package
    code = "import transfuse_bundle, sys; assert transfuse_bundle.__file__.startswith(sys.argv[1]), transfuse_bundle.__file__"
    subprocess.run([sys.executable, "-S", "-c", code, str(dest)], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(dest)})


def test_overrides_reach_configs_and_metadata(tmp_path):
    dest = copy_bundle(tmp_path / "b", overrides={"image_size": [96, 128], "num_workers": 0}, include_models=False)
    for name in ("inference.json", "train.json"):
        cfg = _json(dest / "configs" / name)
        assert cfg["image_size"] == [96, 128] and cfg["num_workers"] == 0
    fmt = _json(dest / "configs" / "metadata.json")["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [96, 128] == fmt["outputs"]["pred"]["spatial_shape"]
    with pytest.raises(BundleFolderError, match="no_such_id"):
        copy_bundle(tmp_path / "c", overrides={"no_such_id": 1}, include_models=False)


@pytest.mark.slow  # builds a TransFuse-S to write its weights
def test_prostate_task_merges_overlays(tmp_path):
    dest = copy_bundle(tmp_path / "p", task="prostate", include_models=False)
    inference = _json(dest / "configs" / "inference.json")
    assert inference["in_channels"] == 1 and inference["out_channels"] == 3
    assert inference["inferer"]["_target_"] == "SliceInferer"
    assert inference["network_def"] == _json(REPO / "configs" / "inference.json")["network_def"]  # from the base
    meta = _json(dest / "configs" / "metadata.json")
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] == "peripheral zone"
    assert meta["version"] == _json(REPO / "configs" / "metadata.json")["version"]
    model = write_initial_weights(dest)
    import torch

    state = torch.load(model, weights_only=True)
    assert state["cnn.conv1.weight"].shape[1] == 1  # one input channel
    with pytest.raises(BundleFolderError, match="refusing"):
        write_initial_weights(dest)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(BundleFolderError, match="unknown task 'liver'"):
        copy_bundle(tmp_path / "x", task="liver")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(BundleFolderError, match="not empty"):
        copy_bundle(tmp_path / "full")
    with pytest.raises(BundleFolderError, match="is the source"):
        copy_bundle(REPO, overwrite=True)
    with pytest.raises(BundleFolderError, match="deepedit"):
        install_bundle(tmp_path / "app", "transfuse_deepedit")


def test_server_command_is_offline():
    cmd = server_command("apps/monaibundle", "studies", ["a", "b"], port=1234)
    assert cmd[:3] == [sys.executable, "-m", "monailabel.main"]
    joined = " ".join(cmd)
    assert "--conf models a,b" in joined and "--conf zoo_source github" in joined and "--conf sam2 false" in joined
    assert "--host 127.0.0.1 --port 1234" in joined

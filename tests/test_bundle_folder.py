"""Bundle folders (transfuse_bundle.tools.bundle_folder) and the MONAI Label app helpers, without a server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from transfuse_bundle.tools.bundle_folder import BundleFolderError, copy_bundle, write_initial_weights
from transfuse_bundle.monailabel.app import install_bundle, server_command
from transfuse_bundle.tools.tasks import config_files, config_parser



def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_polyp_folder_is_self_contained(tmp_path):
    dest = copy_bundle(tmp_path / "transfuse_polyp", task="polyp", include_models=False)
    for name in ("metadata.json", "inference.json", "train.json", "evaluate.json", "logging.conf"):
        assert (dest / "configs" / name).is_file(), name
    # inference.json is the repository's polyp inference chain merged (training chain + serving overlay), pruned
    # to what serving reaches: every id it holds is the chain's, and it holds what serving reads
    served = _json(dest / "configs" / "inference.json")
    chain = config_parser("inference.json", "polyp")
    assert served == {key: chain[key] for key in served}
    assert {"network_def", "amp_dtype", "autocast_dtype", "load_image", "resize", "intensity", "normalize",
            "to_tensor", "preprocessing", "window_inferer", "inferer", "postprocessing", "handlers", "evaluator",
            "run"} <= set(served)
    assert not {"optimizer", "loss", "train", "load_label", "label_to_tensor"} & set(served)  # training only
    # the folder's own chains (no overlay needed for inference), parsed from the folder alone
    assert config_files("inference.json", source=dest) == [dest / "configs" / "inference.json"]
    assert config_files("evaluate.json", source=dest) == [dest / "configs" / "train.json", dest / "configs" / "evaluate.json"]
    parser = config_parser("inference.json", source=dest, bundle_root=str(tmp_path / "root"))
    for each in (parser, chain):
        each.get_parsed_content("imports")
    assert type(parser.get_parsed_content("inferer")).__name__ == "FastInferer"
    assert [type(t).__name__ for t in parser.get_parsed_content("preprocessing").transforms] == [
        type(t).__name__ for t in chain.get_parsed_content("preprocessing").transforms]
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
    # the served inferer is the shared one (precision from amp_dtype) cutting volumes with the task's SliceInferer
    assert inference["inferer"] == _json(REPO / "configs" / "train.json")["inferer"]
    assert inference["inferer"]["_target_"] == "transfuse_bundle.inferers.FastInferer"
    assert inference["inferer"]["inferer"] == "@window_inferer" and inference["inferer"]["dtype"] == "@autocast_dtype"
    assert inference["window_inferer"]["_target_"] == "SliceInferer"
    assert inference["network_def"] == _json(REPO / "configs" / "train.json")["network_def"]  # from the base
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


def test_registry_lists_task_folders_and_their_merge_order(tmp_path):
    from transfuse_bundle.tools.tasks import TaskError, config_files, task_names

    assert task_names() == ["hip", "isic2017", "polyp", "prostate"]
    rel = [p.relative_to(REPO / "configs").as_posix() for p in config_files("evaluate.json", "prostate")]
    assert rel == ["train.json", "tasks/prostate/task.json", "tasks/prostate/train.json", "evaluate.json",
                   "tasks/prostate/evaluate.json"]
    assert [p.relative_to(REPO / "configs").as_posix() for p in config_files("inference.json", "prostate")] == [
        "train.json", "tasks/prostate/task.json", "tasks/prostate/train.json", "inference.json",
        "tasks/prostate/inference.json"]
    assert [p.name for p in config_files("inference.json", None)] == ["train.json", "inference.json"]
    # a copy of the repository's configs with a fifth task, a folder without task.json and a stray file
    source = tmp_path / "repo"
    shutil.copytree(REPO / "configs", source / "configs")
    (source / "configs" / "tasks" / "liver").mkdir()
    (source / "configs" / "tasks" / "liver" / "task.json").write_text('{"out_channels": 2}')
    (source / "configs" / "tasks" / "notes").mkdir()
    assert task_names(source) == ["hip", "isic2017", "liver", "polyp", "prostate"]
    assert [p.name for p in config_files("train.json", "liver", source)] == ["train.json", "task.json"]
    (source / "configs" / "tasks" / "liver" / "inferance.json").write_text("{}")
    with pytest.raises(TaskError, match=r"liver.*unexpected \['inferance.json'\]"):
        config_files("inference.json", "liver", source)
    with pytest.raises(TaskError, match="unknown task 'notes'"):
        config_files("train.json", "notes", source)


@pytest.mark.slow  # builds three TransFuse-S networks
def test_weights_of_another_task_or_size_are_refused_before_shipping(tmp_path, capsys):
    """Weights are checked against the task's network (keys, shapes) by packaging and the MONAI Label
    installer; the message names the file and the config value that differs, nothing is written."""
    from transfuse_bundle.tools.bundle_folder import check_weights_fit
    from transfuse_bundle.tools.packaging import PackagingError, package_bundle

    polyp = copy_bundle(tmp_path / "polyp", task="polyp", overrides={"image_size": [64, 64]}, include_models=False)
    weights = write_initial_weights(polyp)
    check_weights_fit(polyp, weights)  # its own weights fit
    hip = copy_bundle(tmp_path / "hip", task="hip", overrides={"image_size": [64, 64]}, include_models=False)
    with pytest.raises(BundleFolderError, match=r"model.pt does not fit .*: weights have out_channels 1, the config 4$"):
        check_weights_fit(hip, weights)
    with pytest.raises(PackagingError, match=r"does not fit .*: weights were trained at image size 64x64, the config "
                                             r"352x352: .*--set image_size=\[64,64\] when packaging"):
        package_bundle("polyp", out=tmp_path / "dist", weights=weights)
    assert not list((tmp_path / "dist").glob("*.zip")) and not list((tmp_path / "dist").iterdir())
    # the MONAI Label installer refuses them too, before it changes anything in the app: an existing stock app
    # (before, its main.py was made the active-learning one first) and the folder it was asked to replace stay as
    # they were, and the one-line error names the user's file (before: a temporary copy of it)
    from transfuse_bundle.monailabel.app import ensure_app
    from transfuse_bundle.tools.cli.make_monailabel_app import main

    app = ensure_app(tmp_path / "apps" / "monaibundle", active_learning=False)
    served = app / "model" / "transfuse_hip"
    served.mkdir()
    (served / "marker").write_text("the user's bundle")
    files = {p: p.read_bytes() for p in app.rglob("*") if p.is_file()}
    assert main(["--app", str(app), "--task", "hip", "--set", "image_size=[64,64]", "--weights", str(weights),
                 "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights} does not fit the network of transfuse_hip/configs/inference.json"), err
    assert err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in app.rglob("*") if p.is_file()} == files  # main.py, model/ as they were
    assert [p.name for p in (app / "model").iterdir()] == ["transfuse_hip"]  # no staging folder left


def test_mc_dropout_samples_differ_through_the_bundle_inferer():
    """Scoring's MC dropout (active learning): with only the dropout layers in training mode, TransFuse returns its one
    eval head and two passes of the bundle's FastInferer over the same image differ (the inferer's optimised copy
    is an eval-mode copy, so it must not be used then); in eval mode they are equal. The scores follow."""
    import torch
    from conftest import require_monailabel

    from transfuse_bundle.inferers import FastInferer
    from transfuse_bundle.networks import TransFuse

    require_monailabel()
    from transfuse_bundle.monailabel.active_learning import enable_mc_dropout, uncertainty

    torch.manual_seed(0)
    net = TransFuse("S", img_size=(32, 32), drop_rate=0.2)
    x, inferer = torch.rand(1, 3, 32, 32), FastInferer(dtype=torch.float32)
    with torch.no_grad():
        assert enable_mc_dropout(net) > 0 and not net.training
        a, b = inferer(x, net), inferer(x, net)
        assert isinstance(a, torch.Tensor) and a.shape == (1, 1, 32, 32), type(a)
        assert (a - b).abs().max() > 1e-4, "MC-dropout samples are identical: dropout is not active"
        scores = uncertainty([a[0], b[0]])
        net.eval()
        c, d = inferer(x, net), inferer(x, net)
    torch.testing.assert_close(c, d)
    assert scores["epistemic_sample_std"] > 1e-4 and scores["epistemic_mutual_information"] > 0, scores
    same = uncertainty([c[0], c[0]])
    assert same["epistemic_sample_std"] == 0 and same["epistemic_mutual_information"] < 1e-6, same
    assert 0 < same["epistemic_entropy"] <= float(torch.log(torch.tensor(2.0))) + 1e-6, same


def test_monailabel_trains_its_served_bundle_in_place_and_other_bundles_keep_their_model(tmp_path):
    """Training refuses to replace a trained model.pt unasked; MONAI Label's /train retrains the served bundle over
    its model.pt by design, so the installer's train.json says so (overwrite_weights) and no other bundle does."""
    from transfuse_bundle.errors import UserInputError
    from transfuse_bundle.monailabel.app import ensure_app

    app = ensure_app(tmp_path / "apps" / "monaibundle")
    served = install_bundle(app, "transfuse_polyp", task="polyp", overrides={"image_size": [64, 64]}, init_weights=True)
    packaged = copy_bundle(tmp_path / "transfuse_polyp", task="polyp", overrides={"image_size": [64, 64]},
                           include_models=False)
    write_initial_weights(packaged)
    for bundle in (served, packaged):
        assert (bundle / "models" / "model.pt").is_file()
    assert _json(served / "configs" / "train.json")["overwrite_weights"] is True
    # the run's own check, as MONAI Label's `monai.bundle run` of the served train.json makes it
    config_parser("train.json", source=served, bundle_root=str(served)).get_parsed_content("check_writable")
    with pytest.raises(Exception) as err:
        config_parser("train.json", source=packaged, bundle_root=str(packaged)).get_parsed_content("check_writable")
    assert isinstance(err.value.__cause__, UserInputError) and "--overwrite true" in str(err.value.__cause__)


def test_export_of_weights_that_do_not_fit_is_refused_and_changes_nothing(tmp_path, capsys):
    """Before, transfuse-export removed the previous model.ts, then failed deep in MONAI's export with two screens of
    output. Now the weights are checked against the bundle's network first: one line naming the user's file and the
    value to set; the bundle folder is unchanged."""
    from transfuse_bundle.tools.cli.export import main

    bundle = copy_bundle(tmp_path / "transfuse_polyp", task="polyp", include_models=False)  # 352x352
    small = copy_bundle(tmp_path / "small", task="polyp", overrides={"image_size": [64, 64]}, include_models=False)
    weights = write_initial_weights(small)
    (bundle / "models").mkdir(exist_ok=True)
    shutil.copyfile(weights, bundle / "models" / "model.pt")
    (bundle / "models" / "model.ts").write_bytes(b"the previous export")
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert main(["--bundle_root", str(bundle), "--formats", "ts"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {bundle / 'models' / 'model.pt'} does not fit the network of transfuse_polyp/configs/inference.json: "
        "weights were trained at image size 64x64, the config 352x352: set image_size to theirs (--image_size [64,64]; "
        "--set image_size=[64,64] when packaging)"]
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before

"""Every task of the registry is a complete bundle: packaged, downloaded over loopback and run from the download.

For each task of ``configs/tasks/`` (the list comes from the registry, not from this file): packaging writes
the zip with untrained weights of the task's own network (``init_weights``, a 64x64 network), an HTTP server
on 127.0.0.1 serves it, MONAI's ``download`` fetches it into another folder, and the downloaded bundle's
``inference.json`` runs as MONAI's ``ConfigWorkflow`` and writes one mask per real input at the input's own
size: Kvasir-SEG (polyp), PH2 (isic2017), Prostate158 (prostate), synthetic grey X-rays (hip: none are
available). These run in-process (the same functions the CLIs call) to keep the suite short; the user's
subprocess commands are exercised by the package script test below and, download and run included, by
test_zoo.py (polyp, with exports and zoo checks). Serving every task from MONAI Label is tested in
test_monailabel.py.
"""

from __future__ import annotations

import json
import sys
import zipfile

import pytest

from conftest import REPO, SMALL, check_task_masks, run_command, run_workflow, serve_folder, task_inputs
from transfuse_bundle.tools.bundle_folder import merged_config
from transfuse_bundle.tools.packaging import package_bundle
from transfuse_bundle.tools.tasks import config_files, config_parser, task_names

SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"  # verify_metadata, offline
N_IMAGES = 2
pytestmark = pytest.mark.slow
# the tiny network and size only: the packaged values of the task (batch size, learning rate, ...) are compared with its own
SMALL_SIZE = {key: SMALL[key] for key in ("variant", "image_size", "num_workers")}


@pytest.fixture(scope="module")
def dist_server(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a tmp ``dist/`` folder."""
    dist = tmp_path_factory.mktemp("dist")
    with serve_folder(dist) as url:
        yield dist, url


@pytest.mark.parametrize("task", task_names())
def test_task_packages_downloads_and_infers_at_the_input_size(task, dist_server, tmp_path):
    from monai.bundle import download

    dist, url = dist_server
    package = package_bundle(task, out=dist, init_weights=True, overrides=SMALL_SIZE, schema=SCHEMA)
    name, zip_path = package.name, package.zip_path
    assert name == f"transfuse_{task}"
    with zipfile.ZipFile(zip_path) as zf:
        packaged = {n: json.loads(zf.read(f"{name}/configs/{n}")) for n in ("train.json", "inference.json", "metadata.json")}
    task_train = merged_config(config_files("train.json", task))
    for key in ("batch_size", "learning_rate", "max_epochs", "class_names", "out_channels", "iteration_update"):
        assert packaged["train.json"].get(key) == task_train.get(key), f"packaged {key} differs from the task's"
    assert packaged["inference.json"]["image_size"] == [64, 64]
    # the served network, precision, preprocessing and inferer are the task's trained ones (its inference chain)
    served = config_parser("inference.json", task, **SMALL_SIZE)
    for key in ("network_def", "amp_dtype", "preprocessing", "window_inferer", "inferer", "postprocessing"):
        assert packaged["inference.json"][key] == served[key], f"packaged {key} differs from the task's chain"
    assert packaged["inference.json"]["network_def"] == packaged["train.json"]["network_def"]
    pred = packaged["metadata.json"]["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == task_train["out_channels"] and pred["spatial_shape"] == [64, 64]

    work = tmp_path / "user"
    download(name=name, version=package.version, url=f"{url}/{zip_path.name}", bundle_dir=str(work / "bundles"))
    bundle = work / "bundles" / name
    assert not (bundle / "configs" / "tasks").exists()  # the task is merged in: the folder runs as it is
    inputs = task_inputs(task, work / "inputs", N_IMAGES)
    out = work / "masks"
    run_workflow("inference.json", source=bundle, bundle_root=str(bundle), dataset_dir=str(inputs[0].parent),
                 output_dir=str(out))

    check_task_masks(task, inputs, out, task_train["out_channels"])


def test_polyp_package_trains_multi_scale_at_batch_16(tmp_path):
    """The packaged polyp bundle trains as the polyp task does (the former preset shipped single-scale, batch 8)."""
    run_command([sys.executable, REPO / "scripts" / "package_bundle.py", "--task", "polyp", "--init-weights", "--out", tmp_path,
          "--set", "image_size=[32,32]"], cwd=tmp_path)
    with zipfile.ZipFile(next(tmp_path.glob("transfuse_polyp_v*.zip"))) as zf:
        train = json.loads(zf.read("transfuse_polyp/configs/train.json"))
    assert train["batch_size"] == 16
    assert train["iteration_update"]["_target_"] == "transfuse_bundle.engines.MultiScaleIteration"
    assert train["multi_scale_rates"] == [0.75, 1.0, 1.25]

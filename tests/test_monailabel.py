"""MONAI Label against a real server: the bundle served and trained by the stock ``monaibundle`` app.

One MONAI Label server (subprocess, 127.0.0.1, a free port) is started for the whole module with two
bundle folders made by :func:`transfuse_bundle.monailabel.app.install_bundle`, all of the tiny variant
(``conftest.SMALL``: the serving and training are tested here, not the network):

* ``transfuse_polyp`` (task polyp at 64x64 for speed), trained briefly before the server starts by the
  bundle's own CLI (``monai.bundle run training``) on 8 Kvasir-SEG images from ``../shared/data``, without
  augmentation and validated on the 2 others, so that a few CPU-seconds give a model whose masks
  overlap the ground truth of those images; the studies folder holds these and 2 more images, with
  their masks in ``labels/final``;
* ``transfuse_prostate`` (task prostate, untrained seeded weights: only geometry is checked) and a
  Prostate158 T2 volume in the same studies folder;
* ``transfuse_isic2017`` and ``transfuse_hip`` (untrained, 64x64), with a PH2 image and a synthetic grey
  hip X-ray in the studies folder, so that every task of the registry is served by the same server;
* ``transfuse_untrusted``: a polyp bundle whose ``models/model.pt`` was replaced on disk by a pickle that
  creates a marker file when unpickled (trusted loading): the server must refuse it unrun;
* ``transfuse_loop`` (task polyp at 64x64, untrained): the labelling loop. The app is the
  active-learning app :func:`~transfuse_bundle.monailabel.app.ensure_app` makes; the server scores with this
  model (``--conf epistemic_model transfuse_loop``, background rescoring off); 5 more Kvasir-SEG images
  (downscaled to 128 px) are unlabelled in the studies folder, their masks stand for the annotator, and 4
  more are held back outside the datastore.

The checks: ``/info``; inference by id and by upload (PNG of the input's size, values in
{0, 1}, Dice with the ground truth); ``/train`` for one epoch rewrites ``models/model.pt`` and the app
reloads it; the prostate bundle returns a NIfTI label with the volume's shape and affine; the server log
never has "Checkpoint keys don't match". Safety: the server listens on 127.0.0.1 only; a bounded load
test (``transfuse_bundle.tools.load_test``, the ``transfuse-load-test`` command: 40 uploads of real
Kvasir-SEG images, 4 at a time) has zero errors and only valid masks, and its latency and the server's
memory are reported. Active learning (last, since it saves final labels): batch inference labels every
unlabelled image at its size (2D) or on its grid (3D) and reports what a model cannot read; the loop
scores every unlabelled image by MC dropout (the samples differ), takes the most uncertain image from
``/activelearning/epistemic``, infers it, saves the annotator's mask (``PUT /datastore/label``), three times,
trains, scores again, infers the next image, and the trained model beats the untrained one on the held-back
images. Hostile clients (before the active-learning tests): ids and tags that leave the studies folder,
origins other than ``--conf cors_origins``, missing ids and models, non-images, a broken study before ``/train``, an
upload above ``LARGE_IMAGE_PIXELS`` and a default batch-inference request: one-line 400/403/404/409 or a correct
answer. The time of each step and the
load figures are printed at the end of the module (and written to ``timings.json`` and
``load_test.json`` in the module's tmp folder).

Needs MONAI Label: ``pip install --no-deps -r requirements-monailabel.txt``. Without it the tests fail
(they are never skipped).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (KVASIR, ONE_THREAD, PH2, PROSTATE_T2, SMALL, CreatesFile, MonaiLabelServer, require_monailabel,
                      write_hip_dataset)
from transfuse_bundle.tools.packaging import bundle_name
from transfuse_bundle.tools.tasks import task_names

PH2_IMAGE = PH2 / "images" / "IMD002.jpg"

POLYP = "transfuse_polyp"
CPU_ENGINE = "transfuse_polyp_cpu"  # the trained polyp weights served by the CPU engine (--engine cpu)
INT8 = "transfuse_polyp_int8"  # ... and by their INT8 model (transfuse-quantize, --engine int8)
MIN_AGREEMENT = 0.99  # CPU engine / INT8 mask against PyTorch's, share of pixels (both at amp_dtype auto)
PROSTATE_MODEL = "transfuse_prostate"
UNTRUSTED = "transfuse_untrusted"  # a polyp bundle whose model.pt is a malicious pickle
N_PRETRAIN = 8  # Kvasir images of the short training before the server starts
N_STUDIES = 10  # labelled images in the studies folder (the 8 above + 2; /train splits them 8/2)
MAX_SIDE = 256  # studies images are downscaled (aspect kept) so that loading is cheap
PRETRAIN_EPOCHS = 20  # x 2 iterations of 4 images (about 30 s on 2 cores)
MIN_DICE = 0.5  # served mask vs ground truth, for images of the short training

POLYP_OVERRIDES = {
    "variant": SMALL["variant"],  # what is served and trained, not the network, is tested here
    "image_size": [64, 64],
    "num_workers": 0,  # no DataLoader workers (2-core CI machine; MONAI Label trains in its own process)
    "batch_size": 4,
    "learning_rate": 0.001,
    "iteration_update": None,  # single-scale: the polyp task's multi-scale steps cost 3x, tested in test_tasks.py
    "checkpoint_interval": 100,  # no resume checkpoint (320 MB, ~3 s per epoch of 2 iterations): resuming is tested in test_resume.py
}
NO_AUGMENTATION = ["--train#augment", "[]", "--train#color_augment", "[]"]  # for the short training only
# one window per 270x270 slice: fewer network calls
PROSTATE_OVERRIDES = {"variant": SMALL["variant"], "image_size": [272, 272]}
LOAD_REQUESTS, LOAD_CONCURRENCY = 40, 4  # the bounded load test
LOAD_IMAGES = 10  # distinct original-size Kvasir images (not in the studies folder), cycled over the requests

# the labelling loop: an untrained polyp bundle that the loop labels for, trains and scores
LOOP = "transfuse_loop"
LOOP_OVERRIDES = POLYP_OVERRIDES
LOOP_POOL = 5  # unlabelled Kvasir images in the studies folder (their masks stand for the annotator)
LOOP_HELD_BACK = 4  # labelled Kvasir images kept out of the datastore, to compare the untrained and trained model
LOOP_SIDE = 128  # the loop's images are downscaled to this longest side
LOOP_LABELS = 3  # images labelled through active learning before training
LOOP_EPOCHS = 12  # /train epochs of the loop (13 labelled images, batches of 4, 64x64)
MC_SAMPLES = 4  # MC-dropout samples per image when scoring
ANNOTATOR_ORIGIN = "http://annotator.example:3000"  # the one cross-origin web client the server is configured for
LARGE_SIZE = (4400, 4000)  # (W, H) of an upload above LARGE_IMAGE_PIXELS (read reduced by 2, served at full size)

pytestmark = pytest.mark.slow

TIMINGS: dict[str, float] = {}


def _listening_addresses(port: int) -> list[str]:
    """The local addresses of the sockets in LISTEN state on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.is_file():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(str(ipaddress.ip_address(raw)))
    return found


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred > 0, truth > 0
    denom = pred.sum() + truth.sum()
    return float(2.0 * (pred & truth).sum() / denom) if denom else 1.0


def _downscaled(image_src: Path, mask_src: Path | None, image_dst: Path, mask_dst: Path | None,
                max_side: int = MAX_SIDE) -> None:
    """Writes the image (and mask) with the longest side ``max_side``, keeping the aspect ratio."""
    from PIL import Image

    image = Image.open(image_src).convert("RGB")
    scale = max_side / max(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    image.resize(size, Image.BILINEAR).save(image_dst, quality=95)
    if mask_dst is not None:
        Image.open(mask_src).convert("L").resize(size, Image.NEAREST).save(mask_dst)


def _short_training(bundle: Path, names: list[str], validation: list[str], studies: Path, root: Path) -> None:
    """Trains the polyp bundle folder with its own CLI on ``names``, validated on the other images ``validation``
    (the data checks refuse a case in both lists): the weights go to ``bundle/models/model.pt`` as in any
    bundle training."""
    config = bundle / "configs" / "train.json"

    def items(cases):
        return [{"image": str(studies / f"{n}.jpg"), "label": str(studies / "labels" / "final" / f"{n}.png")}
                for n in cases]

    datalist = root / "pretrain_datalist.json"
    datalist.write_text(json.dumps({"training": items(names), "validation": items(validation)}))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config),
           "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--logging_file", str(bundle / "configs" / "logging.conf"), "--bundle_root", str(bundle),
           "--dataset_dir", str(datalist), "--max_epochs", str(PRETRAIN_EPOCHS), *NO_AUGMENTATION]
    env = dict(os.environ, PYTHONPATH=str(bundle), **ONE_THREAD)
    log = root / "short_training.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=bundle, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"short training failed ({' '.join(cmd)}), exit {proc.returncode}:\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """Builds the app, both bundle folders and the studies folder, trains the polyp bundle briefly, starts
    the server, and stops it at the end."""
    require_monailabel()
    for needed in (KVASIR / "images", KVASIR / "masks", PROSTATE_T2):
        if not needed.exists():
            pytest.fail(f"test data missing: {needed} (the tests read ../shared/data next to the repository)")
    from transfuse_bundle.monailabel.app import install_bundle

    root = tmp_path_factory.mktemp("monailabel")
    t0 = time.monotonic()
    app = root / "apps" / "monaibundle"
    polyp = install_bundle(app, POLYP, task="polyp", overrides=POLYP_OVERRIDES, include_models=False,
                           init_weights=True)
    install_bundle(app, PROSTATE_MODEL, task="prostate", overrides=PROSTATE_OVERRIDES, include_models=False,
                   init_weights=True)
    others = [task for task in task_names() if bundle_name(task) not in (POLYP, PROSTATE_MODEL)]
    for task in others:
        install_bundle(app, bundle_name(task), task=task, overrides=SMALL, include_models=False,
                       init_weights=True)
    install_bundle(app, LOOP, task="polyp", overrides=LOOP_OVERRIDES, include_models=False, init_weights=True)
    untrusted = install_bundle(app, UNTRUSTED, task="polyp", overrides=POLYP_OVERRIDES,
                               weights=polyp / "models" / "model.pt")
    # tampered on disk after installation (install_bundle itself refuses such weights)
    torch.save({"weight": torch.zeros(2), "payload": CreatesFile(root / "untrusted_marker")},
               untrusted / "models" / "model.pt")
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    names = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[:N_STUDIES]
    for name in names:
        _downscaled(KVASIR / "images" / f"{name}.jpg", KVASIR / "masks" / f"{name}.png",
                    studies / f"{name}.jpg", studies / "labels" / "final" / f"{name}.png")
    shutil.copyfile(PROSTATE_T2, studies / "prostate020.nii.gz")
    _downscaled(PH2_IMAGE, None, studies / PH2_IMAGE.name, None)
    hip = write_hip_dataset(root / "hip", 1)
    shutil.copyfile(hip / "images" / "hip_00.png", studies / "hip_00.png")
    # the labelling loop: unlabelled images in the studies, their masks (the annotator's) and held-back cases outside
    loop_names = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[
        N_STUDIES + LOAD_IMAGES:N_STUDIES + LOAD_IMAGES + LOOP_POOL + LOOP_HELD_BACK]
    for folder in ("loop_masks", "held_back/images", "held_back/masks"):
        (root / folder).mkdir(parents=True)
    for name in loop_names[:LOOP_POOL]:
        _downscaled(KVASIR / "images" / f"{name}.jpg", KVASIR / "masks" / f"{name}.png", studies / f"{name}.jpg",
                    root / "loop_masks" / f"{name}.png", max_side=LOOP_SIDE)
    for name in loop_names[LOOP_POOL:]:
        _downscaled(KVASIR / "images" / f"{name}.jpg", KVASIR / "masks" / f"{name}.png",
                    root / "held_back" / "images" / f"{name}.jpg", root / "held_back" / "masks" / f"{name}.png",
                    max_side=LOOP_SIDE)
    TIMINGS["build app, bundles and studies"] = time.monotonic() - t0

    t0 = time.monotonic()
    untrained = _md5(polyp / "models" / "model.pt")
    _short_training(polyp, names[:N_PRETRAIN], names[N_PRETRAIN:], studies, root)
    assert _md5(polyp / "models" / "model.pt") != untrained, "the short training did not write models/model.pt"
    TIMINGS[f"short training (bundle CLI, {PRETRAIN_EPOCHS} epochs)"] = time.monotonic() - t0

    t0 = time.monotonic()  # the trained weights quantized (gate relaxed: 2 held-out images), then served by the engine
    from transfuse_bundle.tools.quantize import quantize

    labelled = [{"image": str(studies / f"{n}.jpg"), "label": str(studies / "labels" / "final" / f"{n}.png")}
                for n in names]
    (root / "quantize_datalist.json").write_text(json.dumps({"training": labelled[:8], "validation": [],
                                                             "test": labelled[8:]}))
    quantize(polyp, root / "quantize_datalist.json", calibration_size=8, max_dice_drop=1.0, output_dir=root / "int8")
    for name, engine in ((CPU_ENGINE, "cpu"), (INT8, "int8")):
        install_bundle(app, name, task="polyp", overrides=POLYP_OVERRIDES, weights=polyp / "models" / "model.pt",
                       engine=engine)
    TIMINGS["quantize and install the CPU engine bundles"] = time.monotonic() - t0

    t0 = time.monotonic()
    # MC-dropout scoring with the loop's model; scoring only when asked (not in the background at start,
    # after /train and after each /activelearning call, MONAI Label's default), so that the tests control it
    srv = MonaiLabelServer(app, studies, [POLYP, PROSTATE_MODEL, UNTRUSTED, LOOP, CPU_ENGINE, INT8,
                                          *map(bundle_name, others)],
                           root / "server.log", conf={"epistemic_model": LOOP, "epistemic_simulation_size": MC_SAMPLES,
                                                      "cors_origins": ANNOTATOR_ORIGIN},
                           env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    try:
        srv.wait_ready()
        TIMINGS["server start (until /info answers)"] = time.monotonic() - t0
        srv.names, srv.root, srv.model = names, root, polyp / "models" / "model.pt"
        srv.loop_pool, srv.held_back = loop_names[:LOOP_POOL], loop_names[LOOP_POOL:]
        # one study of each task (image id -> file), for the test that every task is served
        srv.task_studies = {"polyp": names[2], "isic2017": PH2_IMAGE.stem, "hip": "hip_00", "prostate": "prostate020"}
        yield srv
    finally:
        srv.stop()
        (root / "timings.json").write_text(json.dumps(TIMINGS, indent=2))
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # shown even though output is captured
                reporter.write_line("")
                reporter.write_line(f"MONAI Label steps (s; dice values unitless), logs in {root}:")
                for step, value in TIMINGS.items():
                    reporter.write_line(f"  {step:<45} {value:7.2f}")


def _infer_png(server: MonaiLabelServer, path: str, step: str, **kwargs) -> np.ndarray:
    from PIL import Image

    t0 = time.monotonic()
    r = server.request("POST", path, timeout=180, **kwargs)
    TIMINGS[step] = time.monotonic() - t0
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG", f"{path}: expected a PNG, got {image.format}"
    return np.asarray(image)


def _check_label_map(pred: np.ndarray, reference: Path, label_ids: set[int]) -> None:
    from PIL import Image

    width, height = Image.open(reference).size
    assert pred.shape == (height, width), f"label map {pred.shape} is not (H, W) = {(height, width)} of {reference.name}"
    assert pred.dtype == np.uint8, pred.dtype
    values = set(np.unique(pred).tolist())
    assert values <= {0} | label_ids, f"label values {sorted(values)} are not in {{0}} | {sorted(label_ids)}"


def test_info_lists_models(server):
    t0 = time.monotonic()
    info = server.request("GET", "/info/", timeout=30).json()
    TIMINGS["/info"] = time.monotonic() - t0
    polyp = info["models"][POLYP]
    assert polyp["type"] == "segmentation"
    assert polyp["dimension"] == 2
    assert polyp["labels"] == {"polyp": 1}
    assert polyp["config"].get("result_extension") == ".png"
    prostate = info["models"][PROSTATE_MODEL]
    assert prostate["type"] == "segmentation"
    assert prostate["labels"] == {"central gland": 1, "peripheral zone": 2}
    assert POLYP in info["trainers"]
    datastore = server.request("GET", "/datastore/?output=all", timeout=30).json()
    assert set(server.names) | {"prostate020"} <= set(datastore["objects"]), sorted(datastore["objects"])
    assert "Checkpoint keys don't match" not in server.log()


def test_infer_by_id_overlaps_ground_truth(server):
    from PIL import Image

    name = server.names[0]
    pred = _infer_png(server, f"/infer/{POLYP}?image={name}&output=image", "infer by id (2D)")
    _check_label_map(pred, server.studies / f"{name}.jpg", {1})
    dice = _dice(pred, np.asarray(Image.open(server.studies / "labels" / "final" / f"{name}.png")))
    TIMINGS["  dice by id"] = dice
    assert dice > MIN_DICE, f"Dice {dice:.3f} of the served mask of {name} vs its ground truth is not > {MIN_DICE}"
    assert "Checkpoint keys don't match" not in server.log()


def test_cpu_engine_and_int8_serve_the_trained_model(server):
    """The polyp bundle installed with ``--engine cpu`` and ``--engine int8`` answers /infer like the PyTorch one."""
    from PIL import Image

    name = server.names[1]
    served = _infer_png(server, f"/infer/{POLYP}?image={name}&output=image", "infer by id (PyTorch)")
    truth = np.asarray(Image.open(server.studies / "labels" / "final" / f"{name}.png"))
    for model in (CPU_ENGINE, INT8):
        pred = _infer_png(server, f"/infer/{model}?image={name}&output=image", f"infer by id ({model})")
        _check_label_map(pred, server.studies / f"{name}.jpg", {1})
        agreement = float((pred == served).mean())
        TIMINGS[f"  agreement with PyTorch ({model})"] = agreement
        assert agreement >= MIN_AGREEMENT, f"{model}: the mask agrees with PyTorch's on {agreement:.4f} of the pixels"
        assert _dice(pred, truth) > MIN_DICE
    models = server.root / "apps" / "monaibundle" / "model"
    assert list((models / CPU_ENGINE / "models").glob("model.openvino-*.xml")), "no engine model cached beside the weights"
    assert (models / INT8 / "models" / "model.int8.xml").is_file()
    assert "quantized from other weights" not in server.log()


def test_cpu_engine_follows_the_weights_trained_through_monailabel(server):
    """/train on the CPU-engine bundle rewrites model.pt; the next /infer runs an engine model of the new weights
    (a new cache file beside them, the old one gone), as the PyTorch app reloads its network."""
    name = server.names[2]
    models = server.root / "apps" / "monaibundle" / "model" / CPU_ENGINE / "models"
    _infer_png(server, f"/infer/{CPU_ENGINE}?image={name}&output=image", "infer before /train (CPU engine)")
    before = sorted(p.name for p in models.glob("model.openvino-*.xml"))
    t0 = time.monotonic()
    server.request("POST", f"/train/{CPU_ENGINE}?run_sync=true", timeout=600,
                   json={"max_epochs": 1, "val_split": 0.2, "device": "cpu"})
    TIMINGS["/train 1 epoch (CPU engine bundle)"] = time.monotonic() - t0
    pred = _infer_png(server, f"/infer/{CPU_ENGINE}?image={name}&output=image", "infer after /train (CPU engine)")
    _check_label_map(pred, server.studies / f"{name}.jpg", {1})
    after = sorted(p.name for p in models.glob("model.openvino-*.xml"))
    assert len(before) == len(after) == 1 and before != after, (before, after)


def test_infer_by_upload_overlaps_ground_truth(server):
    from PIL import Image

    name = server.names[1]
    image = server.studies / f"{name}.jpg"
    with open(image, "rb") as f:
        pred = _infer_png(server, f"/infer/{POLYP}?output=image", "infer by upload (2D)",
                          files={"file": ("upload.jpg", f, "image/jpeg")}, data={"params": "{}"})
    _check_label_map(pred, image, {1})
    dice = _dice(pred, np.asarray(Image.open(server.studies / "labels" / "final" / f"{name}.png")))
    TIMINGS["  dice by upload"] = dice
    assert dice > MIN_DICE, f"Dice {dice:.3f} of the served mask of the uploaded {name} is not > {MIN_DICE}"


def test_server_listens_on_loopback_only(server):
    """The server (started as docs/monailabel.md shows) accepts connections on 127.0.0.1 only."""
    import ipaddress

    addresses = _listening_addresses(server.port)
    assert addresses, f"nothing listens on port {server.port} ({server.url} answered /info)"
    exposed = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    assert not exposed, f"port {server.port} listens on {exposed} (all: {addresses}), not only on loopback"


def test_load_40_uploads_4_concurrent_all_valid(server):
    """Bounded load: 40 inference uploads of real Kvasir-SEG images (original sizes), 4 in flight at once:
    zero errors, every mask a PNG of the input's size with values in {0} | the model's label ids."""
    from transfuse_bundle.tools.load_test import run_load_test

    images = sorted((KVASIR / "images").glob("*.jpg"))[N_STUDIES:N_STUDIES + LOAD_IMAGES]
    report = run_load_test(server.url, POLYP, images, LOAD_REQUESTS, LOAD_CONCURRENCY, pid=server.proc.pid)
    (server.root / "load_test.json").write_text(json.dumps(report, indent=2))
    TIMINGS[f"load: {LOAD_REQUESTS} uploads, {LOAD_CONCURRENCY} at a time (wall)"] = report["wall_s"]
    TIMINGS["  load: latency p50"] = report["p50_s"]
    TIMINGS["  load: latency p95"] = report["p95_s"]
    TIMINGS["  load: latency max"] = report["max_s"]
    TIMINGS["  load: server RSS before (MB)"] = report["rss_before_mb"]
    TIMINGS["  load: server RSS after (MB)"] = report["rss_after_mb"]
    TIMINGS["  load: server RSS peak (MB)"] = report["rss_peak_mb"]
    assert report["errors"] == 0, f"{report['errors']} failed requests:\n" + "\n".join(report["error_messages"])
    assert report["valid_masks"] == LOAD_REQUESTS
    assert "Checkpoint keys don't match" not in server.log()


def test_train_one_epoch_rewrites_model_and_app_reloads(server):
    name = server.names[2]
    _infer_png(server, f"/infer/{POLYP}?image={name}&output=image", "infer before /train")
    before, reloads = _md5(server.model), server.log().count("Reload model from cache")
    t0 = time.monotonic()
    server.request("POST", f"/train/{POLYP}?run_sync=true", timeout=600,
                   json={"max_epochs": 1, "val_split": 0.2, "device": "cpu"})
    TIMINGS["/train 1 epoch"] = time.monotonic() - t0
    assert _md5(server.model) != before, f"/train for one epoch did not rewrite {server.model}"
    from transfuse_bundle.weights import load_weights

    load_weights(server.model, "model.pt written by /train")  # a plain state dict, loadable weights-only
    pred = _infer_png(server, f"/infer/{POLYP}?image={name}&output=image", "infer after /train (reloads)")
    _check_label_map(pred, server.studies / f"{name}.jpg", {1})
    assert server.log().count("Reload model from cache") > reloads, "the app did not reload model.pt after /train"
    assert "Checkpoint keys don't match" not in server.log()


def test_prostate_volume_served_slice_by_slice(server):
    import nibabel as nib

    t0 = time.monotonic()
    r = server.request("POST", f"/infer/{PROSTATE_MODEL}?image=prostate020&output=image", timeout=300)
    TIMINGS["prostate infer (NIfTI, slice by slice)"] = time.monotonic() - t0
    out = server.root / "prostate020_label.nii.gz"
    out.write_bytes(r.content)
    label, volume = nib.load(out), nib.load(PROSTATE_T2)
    assert label.shape == volume.shape, f"label {label.shape} vs volume {volume.shape}"
    np.testing.assert_allclose(label.affine, volume.affine, atol=1e-4, err_msg="label affine differs from the volume's")
    data = np.asarray(label.dataobj)
    assert data.dtype == np.uint8, data.dtype
    assert set(np.unique(data).tolist()) <= {0, 1, 2}
    assert "Checkpoint keys don't match" not in server.log()


@pytest.mark.parametrize("task", task_names())
def test_every_task_is_served_at_the_input_size(server, task):
    """Each task of the registry, installed by ``install_bundle(task=...)``, answers /infer with a label map of
    its study's own size (2D: PNG of the image's size; 3D: NIfTI of the volume's shape) holding only its class ids."""
    import nibabel as nib
    from PIL import Image

    if task not in server.task_studies:
        pytest.fail(f"task {task!r} has no study in the MONAI Label test: add one to the server fixture")
    study = server.task_studies[task]
    source = next(server.studies.glob(f"{study}.*"))
    r = server.request("POST", f"/infer/{bundle_name(task)}?image={study}&output=image", timeout=300)
    classes = json.loads((server.root / "apps" / "monaibundle" / "model" / bundle_name(task) / "configs"
                          / "train.json").read_text())["class_names"]
    if source.name.endswith(".nii.gz"):
        out = server.root / f"{task}_label.nii.gz"
        out.write_bytes(r.content)
        label, shape = np.asarray(nib.load(out).dataobj), nib.load(source).shape
    else:
        label, shape = np.asarray(Image.open(io.BytesIO(r.content))), Image.open(source).size[::-1]
    assert label.shape == shape, f"{task}: served label {label.shape} for input {shape}"
    assert set(np.unique(label).tolist()) <= set(range(len(classes))), f"{task}: values {np.unique(label)}"
    assert "Checkpoint keys don't match" not in server.log()


def test_malicious_model_pt_is_refused_unrun(server):
    """A ``model.pt`` with pickled code (replaced on disk) makes inference fail with the weights-only error;
    the payload never runs, and the other models keep serving."""
    import requests

    r = requests.post(f"{server.url}/infer/{UNTRUSTED}?image={server.names[0]}&output=image", timeout=180)
    assert r.status_code != 200, "the server served a model from a model.pt with pickled code"
    deadline = time.monotonic() + 30  # the server may write its traceback after answering
    while "Weights only load failed" not in r.text + server.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "Weights only load failed" in r.text + server.log(), (
        f"HTTP {r.status_code}: {r.text[:2000]}\nlog:\n{server.log()[-4000:]}")
    assert not (server.root / "untrusted_marker").exists(), "the server ran the code pickled in model.pt"
    pred = _infer_png(server, f"/infer/{POLYP}?image={server.names[0]}&output=image", "infer after the refused model")
    _check_label_map(pred, server.studies / f"{server.names[0]}.jpg", {1})


# ---- hostile clients: refused in one line before any work (the app's guard, server_guard.py) --------------


def _refused(r, status: int, *words: str) -> str:
    """Checks an answer is HTTP ``status`` with a one-line ``detail`` holding ``words``; returns the detail."""
    assert r.status_code == status, f"{r.request.method} {r.url}: HTTP {r.status_code}, not {status}: {r.text[:500]}"
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and all(w in detail for w in words), detail
    return detail


def _tree(server: MonaiLabelServer) -> tuple:
    """What a refused request must leave as it was: the names in the studies folder's parent (the test's folder)
    and every file of the studies folder with its md5 (the datastore's index and lock, which the server rewrites
    by itself, by name only)."""
    studies = {str(p.relative_to(server.studies)): None if p.name in ("datastore_v2.json", ".lock") else _md5(p)
               for p in sorted(server.studies.rglob("*")) if p.is_file()}
    return sorted(p.name for p in server.root.iterdir()), studies


def test_ids_and_tags_that_leave_the_studies_folder_are_refused(server):
    """Before, ``PUT /datastore/image?image=../x`` (or an absolute id, or an upload named ``..``) wrote the file
    outside the studies folder, a label tag ``../../x`` made a folder beside it, an upload named
    ``datastore_v2.json`` replaced the datastore's index, an upload under an existing id replaced that image
    under its labels, and ``/infer?image=/a/path`` read any file of the server. Now each is HTTP 400 (409 for the
    existing id) naming the value, and nothing changes on disk."""
    import requests

    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(png, "PNG")
    upload = {"file": ("a.png", png.getvalue())}
    before = _tree(server)
    url, name = server.url, server.names[0]
    outside = server.root / "escaped"
    cases = [
        ("PUT", "/datastore/image?image=../escaped", dict(files=upload), 400, "image '../escaped' is not a plain name"),
        ("PUT", f"/datastore/image?image={outside}", dict(files=upload), 400, f"image {str(outside)!r} is not a plain name"),
        ("PUT", "/datastore/image", dict(files={"file": ("..", png.getvalue())}), 400, "image id '..' is not a plain name"),
        ("PUT", "/datastore/image", dict(files={"file": ("datastore_v2.json", b"{}")}), 400, "datastore's own index file"),
        ("PUT", f"/datastore/image?image={name}", dict(files=upload), 409, f"image {name!r} exists in the datastore"),
        ("PUT", f"/datastore/label?image={name}&tag=../../escaped", dict(files={"label": ("l.png", png.getvalue())}),
         400, "tag '../../escaped' is not a plain name"),
        ("PUT", f"/datastore/label?image=..%2F{name}&tag=final", dict(files={"label": ("l.png", png.getvalue())}),
         400, f"image '../{name}' is not a plain name"),
        ("POST", f"/infer/{POLYP}?image={server.studies / (name + '.jpg')}&output=image", {}, 400, "is not a plain name"),
        ("GET", "/datastore/image?image=..%2F..%2Fserver", {}, 400, "is not a plain name"),
    ]
    for method, path, kwargs, status, words in cases:
        _refused(requests.request(method, url + path, data={"params": "{}"}, timeout=60, **kwargs), status, words)
    assert _tree(server) == before, "a refused request changed the studies folder or wrote beside it"
    assert set(_datastore(server)) >= set(server.names) and not any(i.startswith((".", "/")) for i in _datastore(server))


def test_cross_origin_requests_only_from_configured_origins(server):
    """Before, the server answered any ``Origin`` with ``Access-Control-Allow-Origin: <that origin>`` and
    ``Allow-Credentials: true``, so any web page could drive it. Now only ``--conf cors_origins`` (here
    :data:`ANNOTATOR_ORIGIN`) gets CORS headers; other origins get no CORS headers and their requests HTTP 403;
    requests from the server's own pages and from non-browser clients (no ``Origin``) are served."""
    import requests

    evil = "http://evil.example"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    r = requests.options(f"{server.url}/train/{POLYP}", headers={"Origin": evil, **preflight}, timeout=30)
    assert "access-control-allow-origin" not in r.headers and r.status_code >= 400, (r.status_code, r.headers)
    for method in ("GET", "POST"):  # a simple request (no preflight) would run: refused before the endpoint
        r = requests.request(method, f"{server.url}/info/" if method == "GET" else f"{server.url}/train/{POLYP}",
                             headers={"Origin": evil}, timeout=30)
        _refused(r, 403, f"origin {evil!r} are not allowed", "--conf cors_origins")
        assert "access-control-allow-origin" not in r.headers, r.headers
    r = requests.options(f"{server.url}/train/{POLYP}", headers={"Origin": ANNOTATOR_ORIGIN, **preflight}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ANNOTATOR_ORIGIN, (r.status_code, r.headers)
    for origin in (ANNOTATOR_ORIGIN, server.url):  # the configured client, and the server's own page (Swagger UI)
        r = requests.get(f"{server.url}/info/", headers={"Origin": origin}, timeout=30)
        assert r.status_code == 200 and POLYP in r.json()["models"], (origin, r.status_code, r.text[:300])


def test_missing_ids_unknown_models_and_non_images_get_404_or_400(server):
    """Before, each of these was a bare HTTP 500 ("Internal Server Error"), an unknown strategy too."""
    import requests

    name = server.names[0]
    _refused(requests.post(f"{server.url}/infer/{POLYP}?image=no_such_image&output=image", timeout=60), 404,
             "no image 'no_such_image' in the datastore")
    _refused(requests.post(f"{server.url}/infer/no_such_model?image={name}&output=image", timeout=60), 404,
             "no model 'no_such_model'", POLYP)
    _refused(requests.post(f"{server.url}/train/no_such_model?run_sync=true", json={"max_epochs": 1}, timeout=60), 404,
             "no model 'no_such_model': this server trains")
    _refused(requests.post(f"{server.url}/train/{POLYP}?run_sync=true", json={"max_epochs": "abc"}, timeout=60), 400,
             "max_epochs 'abc': expected a whole number")
    _refused(requests.post(f"{server.url}/activelearning/no_such_strategy", json={}, timeout=60), 404,
             "no strategy 'no_such_strategy'", "epistemic")
    _refused(requests.post(f"{server.url}/batch/infer/no_such_model?run_sync=true", json={}, timeout=60), 404,
             "no model 'no_such_model'")
    _refused(requests.put(f"{server.url}/datastore/label?image=no_such_image&tag=final", data={"params": "{}"},
                          files={"label": ("l.png", b"x")}, timeout=60), 404, "no image 'no_such_image'")
    for filename in ("notes.png", "notes.txt"):
        r = requests.post(f"{server.url}/infer/{POLYP}?output=image", files={"file": (filename, b"not an image")},
                          data={"params": "{}"}, timeout=60)
        _refused(r, 400, f"{POLYP}: the uploaded file cannot be read")
    pred = _infer_png(server, f"/infer/{POLYP}?image={name}&output=image", "infer after the refusals")
    _check_label_map(pred, server.studies / f"{name}.jpg", {1})


def test_train_with_a_broken_image_in_the_datastore_is_refused_naming_it(server):
    """Before: HTTP 500. Now ``/train?run_sync=true`` answers 400 with the data check's line naming the broken file,
    before training (``models/model.pt`` unchanged)."""
    import requests
    from PIL import Image

    broken, mask = b"\xff\xd8\xff\xe0 a truncated JPEG", io.BytesIO()
    Image.new("L", (32, 32)).save(mask, "PNG")
    before = _md5(server.model)
    server.request("PUT", "/datastore/image?image=broken_upload", timeout=60, files={"file": ("b.jpg", broken)},
                   data={"params": "{}"})
    try:
        server.request("PUT", "/datastore/label?image=broken_upload&tag=final", timeout=60,
                       files={"label": ("b.png", mask.getvalue())}, data={"params": "{}"})
        r = requests.post(f"{server.url}/train/{POLYP}?run_sync=true", timeout=600,
                          json={"max_epochs": 1, "val_split": 0.2, "device": "cpu"})
        _refused(r, 400, f"{POLYP}: training refused", str(server.studies / "broken_upload.jpg"), "not a readable image")
        _refused(requests.post(f"{server.url}/infer/{POLYP}?image=broken_upload&output=image", timeout=60), 400,
                 "image 'broken_upload' cannot be read")
    finally:
        server.request("DELETE", "/datastore/image?id=broken_upload", timeout=60)
    assert _md5(server.model) == before
    # with its file watcher on, MONAI Label drops a deleted image from its list asynchronously (within ~0.1 s)
    deadline = time.monotonic() + 10
    while "broken_upload" in _datastore(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "broken_upload" not in _datastore(server)


def test_image_above_the_large_image_limit_gets_a_mask_of_its_size(server):
    """An upload above ``LARGE_IMAGE_PIXELS`` is read reduced (by 2 here); before, MONAI Label's last step restored
    the full-size mask to the reduced size along one axis only (4400x4000 in, 4400x2000 out)."""
    from PIL import Image

    from transfuse_bundle.data.readers import LARGE_IMAGE_PIXELS

    width, height = LARGE_SIZE
    assert width * height > LARGE_IMAGE_PIXELS
    image = server.root / "large.jpg"
    yy, xx = np.mgrid[0:height, 0:width]
    Image.fromarray(np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 90)], -1).astype(np.uint8)).save(
        image, quality=80)
    with open(image, "rb") as f:
        pred = _infer_png(server, f"/infer/{POLYP}?output=image", "infer a 4400x4000 upload",
                          files={"file": ("large.jpg", f, "image/jpeg")}, data={"params": "{}"})
    _check_label_map(pred, image, {1})


def test_batch_infer_with_a_default_request_runs_on_the_cpu(server):
    """Before, ``POST /batch/infer/MODEL`` with ``{}`` failed with HTTP 500 on a machine without a GPU (MONAI Label
    spreads the images over the GPU list, empty there); now it runs on the CPU. One image, as ``images=`` a list."""
    name = server.names[3]
    result = server.request("POST", f"/batch/infer/{POLYP}?run_sync=true", timeout=300,
                            json={"images": [name], "label_tag": "original"}).json()
    assert result[name].get("label") == name, result
    r = server.request("GET", f"/datastore/label?label={name}&tag=original", timeout=60)
    from PIL import Image

    _check_label_map(np.asarray(Image.open(io.BytesIO(r.content))), server.studies / f"{name}.jpg", {1})
    server.request("DELETE", f"/datastore/label?id={name}&tag=original", timeout=60)


# ---- batch inference, MC-dropout scoring, active learning and the labelling loop ----------------------
# These run last: the loop saves final labels, which every later /train of any model would train on.


def _datastore(server: MonaiLabelServer) -> dict:
    return server.request("GET", "/datastore/?output=all", timeout=30).json()["objects"]


def _unlabelled(objects: dict) -> list[str]:
    return sorted(i for i, o in objects.items() if "final" not in o.get("labels", {}))


def _upload_dice(server: MonaiLabelServer, model: str) -> list[float]:
    """Dice of ``model``'s masks of the held-back images (uploaded, never in the datastore) with their masks."""
    from PIL import Image

    dice = []
    for name in server.held_back:
        image = server.root / "held_back" / "images" / f"{name}.jpg"
        with open(image, "rb") as f:
            r = server.request("POST", f"/infer/{model}?output=image", timeout=180,
                               files={"file": ("upload.jpg", f, "image/jpeg")}, data={"params": "{}"})
        pred = np.asarray(Image.open(io.BytesIO(r.content)))
        _check_label_map(pred, image, {1})
        dice.append(_dice(pred, np.asarray(Image.open(server.root / "held_back" / "masks" / f"{name}.png"))))
    return dice


def _score(server: MonaiLabelServer, step: str) -> dict:
    t0 = time.monotonic()
    summary = server.request("POST", f"/scoring/{LOOP}?run_sync=true", timeout=600).json()
    TIMINGS[step] = time.monotonic() - t0
    if summary.get("executed"):
        TIMINGS[f"  {step}: per image ({MC_SAMPLES} samples)"] = summary["latency"] / summary["executed"]
    return summary


def _check_scores(objects: dict, scored: list[str]) -> None:
    """Every image in ``scored`` has the three scores, and its MC-dropout samples differed (dropout active)."""
    for image_id in scored:
        info = objects[image_id]["image"]["info"]
        missing = [k for k in ("epistemic_entropy", "epistemic_mutual_information", "epistemic_sample_std",
                               "epistemic_ts") if k not in info]
        assert not missing, f"{image_id}: no {missing} in the datastore after scoring: {info}"
        assert info["epistemic_samples"] == MC_SAMPLES, info
        assert info["epistemic_sample_std"] > 1e-3, (
            f"{image_id}: the MC-dropout samples hardly differ (mean std {info['epistemic_sample_std']:.2e}): "
            f"is dropout active during scoring?")
        assert info["epistemic_mutual_information"] > 0, info
        assert 0 < info["epistemic_entropy"] <= np.log(2) + 1e-6, info  # binary: at most ln 2 nats per pixel


def _next_epistemic(server: MonaiLabelServer) -> str:
    """``POST /activelearning/epistemic``; checks it is the unlabelled image with the highest epistemic_entropy."""
    objects = _datastore(server)
    scores = {i: objects[i]["image"]["info"].get("epistemic_entropy", 0.0) for i in _unlabelled(objects)}
    picked = server.request("POST", "/activelearning/epistemic", timeout=60, json={}).json()
    assert picked.get("id") == max(scores, key=scores.get), (
        f"/activelearning/epistemic gave {picked.get('id')}, the highest epistemic_entropy is "
        f"{max(scores, key=scores.get)}: {scores}")
    return picked["id"]


def _annotate(server: MonaiLabelServer, image_id: str) -> Path:
    """The annotator's corrected mask: Kvasir's ground truth for a loop image, an empty mask for an image of
    another task (no polyp in a skin or hip image)."""
    from PIL import Image

    mask = server.root / "loop_masks" / f"{image_id}.png"
    if not mask.exists():
        source = next(server.studies.glob(f"{image_id}.*"))
        Image.fromarray(np.zeros(Image.open(source).size[::-1], np.uint8)).save(mask)
    return mask


def test_batch_infer_labels_every_unlabelled_image_at_its_size(server):
    """``POST /batch/infer/MODEL?images=unlabeled``: the 2D model saves an ``original`` label of each unlabelled 2D
    image's own size; the volume it cannot read is reported, not fatal. The 3D model labels the volume on its
    grid and reports the RGB images."""
    import nibabel as nib
    from PIL import Image

    params = {"device": "cpu", "multi_gpu": False, "max_workers": 1, "label_tag": "original", "logging": "WARNING"}
    unlabelled = _unlabelled(_datastore(server))
    two_d = [i for i in unlabelled if i != "prostate020"]
    assert set(server.loop_pool) <= set(two_d) and "prostate020" in unlabelled, unlabelled
    t0 = time.monotonic()
    result = server.request("POST", f"/batch/infer/{LOOP}?images=unlabeled&run_sync=true", timeout=600,
                            json=params).json()
    TIMINGS[f"batch infer {LOOP} ({len(unlabelled)} images)"] = time.monotonic() - t0
    TIMINGS["  batch infer: per 2D image"] = (time.monotonic() - t0) / len(two_d)
    assert set(result) == set(unlabelled), f"batch inference answered for {sorted(result)}, not {unlabelled}"
    assert "error" in result["prostate020"] and "\n" not in result["prostate020"]["error"], result["prostate020"]
    objects = _datastore(server)
    for image_id in two_d:
        assert result[image_id].get("label") == image_id, f"{image_id}: {result[image_id]}"
        assert "original" in objects[image_id]["labels"], f"{image_id} has no original label: {objects[image_id]}"
        r = server.request("GET", f"/datastore/label?label={image_id}&tag=original", timeout=30)
        label = np.asarray(Image.open(io.BytesIO(r.content)))
        _check_label_map(label, next(server.studies.glob(f"{image_id}.*")), {1})
    assert _unlabelled(objects) == unlabelled, "batch inference must not mark images as labelled (final)"

    t0 = time.monotonic()
    result = server.request("POST", f"/batch/infer/{PROSTATE_MODEL}?images=unlabeled&run_sync=true", timeout=600,
                            json=params).json()
    TIMINGS[f"batch infer {PROSTATE_MODEL} ({len(unlabelled)} images)"] = time.monotonic() - t0
    assert result["prostate020"].get("label") == "prostate020", result["prostate020"]
    rgb = [*server.loop_pool, PH2_IMAGE.stem]  # 3-channel images for a 1-channel network (a grey image would pass)
    assert all("error" in result[i] for i in rgb), {i: result[i] for i in rgb}
    r = server.request("GET", "/datastore/label?label=prostate020&tag=original", timeout=60)
    out = server.root / "prostate020_batch.nii.gz"
    out.write_bytes(r.content)
    label, volume = nib.load(out), nib.load(PROSTATE_T2)
    assert label.shape == volume.shape, f"batch label {label.shape} vs volume {volume.shape}"
    np.testing.assert_allclose(label.affine, volume.affine, atol=1e-4, err_msg="batch label affine differs")
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2}


def test_labelling_loop_with_active_learning(server):
    """The labelling loop on a real server, from untrained weights: MC-dropout scoring of every unlabelled image
    (samples differ), the most uncertain image from ``/activelearning/epistemic``, its automatic mask, the
    annotator's mask saved with ``PUT /datastore/label``; three times; ``/train``; scoring again with the new
    model; the next image inferred. The trained model beats the untrained one on held-back images."""
    from transfuse_bundle.monailabel.active_learning import STRATEGIES

    info = server.request("GET", "/info/", timeout=30).json()
    assert set(STRATEGIES) <= set(info["strategies"]), info["strategies"]
    assert LOOP in info["scoring"], info["scoring"]
    model = server.root / "apps" / "monaibundle" / "model" / LOOP / "models" / "model.pt"
    untrained_md5 = _md5(model)
    untrained = _upload_dice(server, LOOP)

    summary = _score(server, "scoring (untrained)")
    objects = _datastore(server)
    scored = [i for i in _unlabelled(objects) if i != "prostate020"]
    assert summary["executed"] == len(scored) and set(summary["failed"]) == {"prostate020"}, summary
    _check_scores(objects, scored)

    labelled = []
    for _ in range(LOOP_LABELS):
        image_id = _next_epistemic(server)
        pred = _infer_png(server, f"/infer/{LOOP}?image={image_id}&output=image", "loop: infer the next image")
        _check_label_map(pred, next(server.studies.glob(f"{image_id}.*")), {1})
        with open(_annotate(server, image_id), "rb") as f:
            server.request("PUT", f"/datastore/label?image={image_id}&tag=final", timeout=60,
                           files={"label": (f"{image_id}.png", f, "image/png")}, data={"params": "{}"})
        labelled.append(image_id)
    objects = _datastore(server)
    assert not set(labelled) & set(_unlabelled(objects)), f"labels saved for {labelled} but still unlabelled"

    t0 = time.monotonic()
    server.request("POST", f"/train/{LOOP}?run_sync=true", timeout=900,
                   json={"max_epochs": LOOP_EPOCHS, "val_split": 0.2, "device": "cpu"})
    n_train = len([i for i, o in objects.items() if "final" in o.get("labels", {})])
    TIMINGS[f"loop /train {LOOP_EPOCHS} epochs ({n_train} labelled images)"] = time.monotonic() - t0
    assert _md5(model) != untrained_md5, f"/train did not write {model}"
    assert "Checkpoint keys don't match" not in server.log()

    summary = _score(server, "scoring (trained)")
    objects = _datastore(server)
    remaining = [i for i in _unlabelled(objects) if i != "prostate020"]
    assert summary["executed"] == len(remaining), f"a new model must rescore every unlabelled image: {summary}"
    _check_scores(objects, remaining)
    image_id = _next_epistemic(server)
    pred = _infer_png(server, f"/infer/{LOOP}?image={image_id}&output=image", "loop: infer with the trained model")
    _check_label_map(pred, next(server.studies.glob(f"{image_id}.*")), {1})

    trained = _upload_dice(server, LOOP)
    TIMINGS["  loop: held-back dice untrained"] = float(np.mean(untrained))
    TIMINGS["  loop: held-back dice trained"] = float(np.mean(trained))
    assert np.mean(trained) > np.mean(untrained), (
        f"held-back Dice after the loop {np.round(trained, 3)} does not beat the untrained model's "
        f"{np.round(untrained, 3)}")

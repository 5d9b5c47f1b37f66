"""Prostate158 end to end on the two real T2 volumes: preparation, a short slice-wise training,
evaluation of a whole volume per zone with HD95/ASD in mm, and inference writing a NIfTI mask with
the input's shape, affine and spacing. The same volumes, rewritten in MSD Task05's layout (two channels,
the other label order), check the MSD path end to end.

Small on purpose (64x64 in-plane instead of 320x320, 2 epochs of 4 slices): the network does not
learn much here, so the checks are on the pipeline. The evaluation numbers are checked against the
inference mask, scored here independently (nibabel spacing, MONAI functional metrics): the report
must measure at the volume's own grid and in mm.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from conftest import PROSTATE158, REPO, SMALL, run_command, run_workflow
from transfuse_bundle.tools.prepare import prepare
from transfuse_bundle.tools.tasks import config_parser

SMALL_VOLUMES = {**SMALL, "slices_per_volume": 4, "batch_size": 2}
ZONES = ["central gland", "peripheral zone"]


def _run(config: str, **overrides) -> None:
    """The prostate task's ``config`` ("train.json", "evaluate.json", "inference.json") as a checked workflow."""
    run_workflow(config, "prostate", **overrides)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("prostate")
    lists = prepare(PROSTATE158, root / "datalist.json")
    assert [len(lists[k]) for k in ("training", "validation")] == [1, 1]
    return {"root": root, "datalist": root / "datalist.json", "lists": lists}


@pytest.fixture(scope="module")
def trained(prepared) -> Path:
    bundle = prepared["root"] / "bundle"
    _run("train.json", dataset_dir=str(prepared["datalist"]), bundle_root=str(bundle), max_epochs=2, val_interval=2,
         **SMALL_VOLUMES)
    return bundle


def test_training_samples_are_axial_slices_of_the_z_scored_volume(prepared):
    parser = config_parser("train.json", "prostate", dataset_dir=str(prepared["datalist"]), **SMALL_VOLUMES)
    transform = parser.get_parsed_content("train#preprocessing")
    case = prepared["lists"]["training"][0]
    samples = transform(dict(case))
    assert len(samples) == SMALL_VOLUMES["slices_per_volume"]
    volume = nib.load(case["label"])
    for sample in samples:
        assert sample["image"].shape == sample["label"].shape == (1, 64, 64)
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0, 2.0}
    # pos 2 : neg 1 sampling: most slices hold prostate
    assert sum(bool(s["label"].any()) for s in samples) >= 2
    # the z-score is over the whole volume: a slice is not normalised on its own
    means = [float(s["image"].mean()) for s in samples]
    assert not np.allclose(means, 0.0, atol=1e-3)
    assert volume.shape[2] == 24  # the volumes the slices come from are 3D


@pytest.mark.slow  # a short training, an evaluation and an inference: 15 s on 2 quiet cores, 60 s under load
def test_evaluation_per_zone_in_mm_matches_the_inference_mask(prepared, trained, tmp_path):
    assert (trained / "models" / "model.pt").is_file()
    out = tmp_path / "eval"
    _run("evaluate.json", dataset_dir=str(prepared["datalist"]), bundle_root=str(trained), output_dir=str(out),
         **SMALL_VOLUMES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 1 and set(metrics["per_class"]) == set(ZONES)
    assert metrics["hd95_unit"] == metrics["asd_unit"] == "mm"
    assert set(metrics["per_dataset"]) == {"Prostate158"}
    [row] = list(csv.DictReader(open(out / "per_case.csv")))
    case = prepared["lists"]["validation"][0]
    assert row["filename"] == case["image"] and row["distance_unit"] == "mm"
    assert "Prostate158 (1 volume, distances in millimetres)" in (out / "summary.md").read_text()
    assert list((out / "overlays").glob("t2_slice*.png"))

    # inference on the same volume, from a folder of NIfTI files
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    os.symlink(case["image"], volumes / "p021.nii.gz")
    predictions = tmp_path / "pred"
    _run("inference.json", dataset_dir=str(volumes), bundle_root=str(trained), output_dir=str(predictions),
         **SMALL)
    mask_file = predictions / "p021_seg.nii.gz"
    mask, image, label = nib.load(mask_file), nib.load(case["image"]), nib.load(case["label"])
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4)
    np.testing.assert_allclose(mask.header.get_zooms(), image.header.get_zooms(), atol=1e-5)
    pred, truth = np.asarray(mask.dataobj), np.asarray(label.dataobj).astype(np.int64)
    assert set(np.unique(pred).tolist()) <= {0, 1, 2}

    # the report's per-zone numbers are those of this mask at the volume's grid, in mm
    spacing = [float(z) for z in label.header.get_zooms()]
    for c, zone in enumerate(ZONES, start=1):
        p, g = torch.as_tensor(pred == c)[None, None].float(), torch.as_tensor(truth == c)[None, None].float()
        dice = 2 * float((p * g).sum()) / float(p.sum() + g.sum())
        assert float(row[f"dice_{zone}"]) == pytest.approx(dice, abs=1e-4), zone
        if p.any():
            hd95 = float(compute_hausdorff_distance(p, g, percentile=95, spacing=spacing))
            asd = float(compute_average_surface_distance(p, g, symmetric=True, spacing=spacing))
            assert float(row[f"hd95_{zone}"]) == pytest.approx(hd95, rel=1e-3), zone
            assert float(row[f"asd_{zone}"]) == pytest.approx(asd, rel=1e-3), zone


# --- MSD Task05 layout: two modalities in a 4D volume, zones labelled the other way round ----------------------

MSD_ZONES = ["peripheral zone", "transition zone"]
MSD = {"in_channels": 2, "class_names": ["background", *MSD_ZONES]}


@pytest.fixture(scope="module")
def msd_task(tmp_path_factory) -> Path:
    """An MSD Task05-style folder made from the two real Prostate158 volumes: ``imagesTr`` holds 4D volumes
    (T2 and a second channel derived from it, standing in for ADC), ``labelsTr`` MSD's label order
    (1 = peripheral zone, 2 = transition zone), ``dataset.json`` lists them."""
    root = tmp_path_factory.mktemp("msd") / "Task05_Prostate"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, case in enumerate(sorted(p for p in PROSTATE158.iterdir() if p.is_dir())):
        t2, label = nib.load(case / "t2.nii.gz"), nib.load(case / "t2_anatomy_reader1.nii.gz")
        t2_data = np.asarray(t2.dataobj, dtype=np.float32)
        second = np.sqrt(np.maximum(t2_data, 0.0)) * 10.0
        nib.save(nib.Nifti1Image(np.stack([t2_data, second], axis=-1), t2.affine), root / "imagesTr" / f"prostate_{i:02d}.nii.gz")
        zones = np.asarray(label.dataobj).astype(np.uint8)
        msd_zones = np.select([zones == 1, zones == 2], [2, 1], 0).astype(np.uint8)  # Prostate158 1 = central gland
        nib.save(nib.Nifti1Image(msd_zones, label.affine), root / "labelsTr" / f"prostate_{i:02d}.nii.gz")
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "PROSTATE158", "training": training}))
    return root


@pytest.mark.slow  # a 1-epoch training, an evaluation and an inference on 2-channel volumes: ~45 s
def test_msd_two_channel_volumes_prepare_train_evaluate_infer(msd_task, tmp_path):
    datalist = tmp_path / "datalist.json"
    lists = prepare(msd_task, datalist, val_fraction=0.5, test_fraction=0.0)
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [1, 1, 0]

    # the default single-channel config refuses the 2-channel volumes before any work, naming each file
    bundle = tmp_path / "bundle"
    with pytest.raises(RuntimeError) as error:
        _run("train.json", dataset_dir=str(datalist), bundle_root=str(bundle), max_epochs=1, **SMALL_VOLUMES)
    message = str(error.value.__cause__)
    for case in lists["training"] + lists["validation"]:
        assert f"{case['image']}: volume has 2 channel(s), but the network takes in_channels=1" in message
    assert not list(bundle.rglob("*.pt"))  # nothing trained or saved
    # the same check as a command, with MSD's channels it passes
    script = [sys.executable, str(REPO / "scripts" / "validate_data.py"), str(datalist), "--num-classes", "3",
              "--spatial-dims", "3", "--in-channels"]
    refused = run_command(script + ["1"], check=False)
    assert refused.returncode == 1 and "pass --in_channels 2" in refused.stdout, refused.stdout + refused.stderr
    accepted = run_command(script + ["2"], check=False)
    assert accepted.returncode == 0 and "2 case(s) checked" in accepted.stdout, accepted.stdout + accepted.stderr

    _run("train.json", dataset_dir=str(datalist), bundle_root=str(bundle), max_epochs=1, val_interval=1, **SMALL_VOLUMES, **MSD)
    out = tmp_path / "eval"
    _run("evaluate.json", dataset_dir=str(datalist), bundle_root=str(bundle), output_dir=str(out), **SMALL_VOLUMES, **MSD)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_cases"] == 1 and list(metrics["per_class"]) == MSD_ZONES
    assert metrics["hd95_unit"] == "mm" and set(metrics["per_dataset"]) == {"PROSTATE158"}

    volumes = tmp_path / "volumes"
    volumes.mkdir()
    image_file = lists["validation"][0]["image"]
    os.symlink(image_file, volumes / "case.nii.gz")
    _run("inference.json", dataset_dir=str(volumes), bundle_root=str(bundle), output_dir=str(tmp_path / "pred"),
         **SMALL, **MSD)
    mask, image = nib.load(tmp_path / "pred" / "case_seg.nii.gz"), nib.load(image_file)
    assert image.shape[3] == 2 and mask.shape == image.shape[:3]  # one label volume for the two channels
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2}


# --- volumes whose voxel axes are stored in another order -----------------------------------------------------

def _turned(src: Path, dst: Path) -> Path:
    """``src`` stored another way: the slice axis first and one in-plane axis flipped, the affine changed to
    match (nibabel ``as_reoriented``), so every voxel keeps its position in the scanner: the same scan."""
    turned = nib.load(src).as_reoriented(np.array([[1, -1], [2, 1], [0, 1]]))  # old axis i -> new axis, flip
    nib.save(turned, dst)
    return dst


@pytest.fixture(scope="module")
def turned_case(prepared, tmp_path_factory) -> dict:
    """The validation volume of :func:`prepared` and its label, as they are and turned (:func:`_turned`)."""
    case = prepared["lists"]["validation"][0]
    root = tmp_path_factory.mktemp("turned")
    turned = {key: str(_turned(Path(case[key]), root / f"turned_{key}.nii.gz")) for key in ("image", "label")}
    assert nib.load(turned["image"]).shape == (24, 270, 270) and nib.aff2axcodes(nib.load(turned["image"]).affine)[0] == "S"
    return {"case": {"image": case["image"], "label": case["label"]}, "turned": turned, "root": root}


def test_volumes_are_sliced_axially_whatever_their_axis_order(prepared, turned_case):
    """Before: a volume whose slice axis is not the last voxel axis was cut along the wrong axis (270 'slices'
    of 24 x 270 voxels). Now training, validation and serving turn it to one orientation first: the same scan
    gives the same network input, however it is stored."""
    serving = config_parser("inference.json", "prostate", **SMALL).get_parsed_content("preprocessing")
    training = config_parser("train.json", "prostate", dataset_dir=str(prepared["datalist"]), **SMALL)
    from monai.transforms import Compose

    deterministic = Compose(training.get_parsed_content("train#load") + training.get_parsed_content("normalize")
                            + training.get_parsed_content("train#resize"))
    case, turned = turned_case["case"], turned_case["turned"]
    served, served_turned = serving({"image": case["image"]})["image"], serving({"image": turned["image"]})["image"]
    assert served.shape == served_turned.shape == (1, 64, 64, 24)
    torch.testing.assert_close(served_turned, served, atol=1e-5, rtol=0)
    trained, trained_turned = deterministic(dict(case)), deterministic(dict(turned))
    for key in ("image", "label"):
        assert trained_turned[key].shape == (1, 64, 64, 24)
        torch.testing.assert_close(trained_turned[key], trained[key], atol=1e-5, rtol=0)


@pytest.mark.slow  # an inference and an evaluation of two volumes with untrained weights: ~20 s
def test_turned_volume_is_predicted_and_scored_like_the_original_and_written_as_stored(turned_case, tmp_path):
    case, turned = turned_case["case"], turned_case["turned"]
    parser = config_parser("inference.json", "prostate", **SMALL, device="cpu")
    parser.get_parsed_content("imports")
    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")

    volumes = tmp_path / "volumes"
    volumes.mkdir()
    os.symlink(case["image"], volumes / "p021.nii.gz")
    os.symlink(turned["image"], volumes / "p021_turned.nii.gz")
    _run("inference.json", dataset_dir=str(volumes), bundle_root=str(bundle), output_dir=str(tmp_path / "pred"),
         **SMALL)
    plain, stored = nib.load(tmp_path / "pred" / "p021_seg.nii.gz"), nib.load(tmp_path / "pred" / "p021_turned_seg.nii.gz")
    source = nib.load(turned["image"])
    assert stored.shape == source.shape  # written in the input's own axis order and affine
    np.testing.assert_allclose(stored.affine, source.affine, atol=1e-4)
    back = stored.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(stored.affine),
                                                                nib.io_orientation(plain.affine)))
    np.testing.assert_allclose(back.affine, plain.affine, atol=1e-4)
    # the same prediction, but for float rounding in the resize of a flipped grid (untrained: near-ties of the argmax)
    assert np.mean(np.asarray(back.dataobj) == np.asarray(plain.dataobj)) > 0.99
    assert np.asarray(plain.dataobj).any()

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [case, turned]}))
    out = tmp_path / "eval"
    _run("evaluate.json", dataset_dir=str(datalist), bundle_root=str(bundle), output_dir=str(out), **SMALL)
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["filename"] for r in rows] == [case["image"], turned["image"]]
    for zone in ZONES:
        assert float(rows[1][f"dice_{zone}"]) == pytest.approx(float(rows[0][f"dice_{zone}"]), abs=0.01), zone

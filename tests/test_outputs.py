"""Output folders: inference and evaluation never overwrite a file they did not
write, refuse before any work naming it, and rerun into their own output folder.

Real Kvasir-SEG images and masks from ../shared/data, shrunk into tmp_path; untrained 64 x 64 weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import KVASIR, SMALL, root_cause, untrained_weights
from transfuse_bundle.outputs import MANIFEST_NAME, OutputConflictError, claim, ours, record
from transfuse_bundle.tools.tasks import config_workflow

STEMS = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[:2]
SIZE = (48, 40)
SMALL_ON_CPU = {**SMALL, "device": "cpu"}


def _image(stem: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(KVASIR / "images" / f"{stem}.jpg").convert("RGB").resize(SIZE).save(dest)
    return dest


def _mask(stem: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(KVASIR / "masks" / f"{stem}.png").convert("L").resize(SIZE, Image.NEAREST).save(dest)
    return dest


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(config: str, **overrides) -> None:
    """Initializes and runs the workflow of ``config`` ("inference.json", "evaluate.json") of the repository."""
    workflow = config_workflow(config, **SMALL_ON_CPU, **overrides)
    workflow.initialize()
    workflow.run()


def _refused(config: str, **overrides) -> str:
    """Runs the workflow, which must stop with an ``OutputConflictError``; returns its message."""
    with pytest.raises(Exception) as err:
        _run(config, **overrides)
    cause = root_cause(err.value)
    assert isinstance(cause, OutputConflictError), repr(err.value)
    return str(cause)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    untrained_weights(root, variant=SMALL["variant"])
    return root


def test_inference_keeps_ground_truth_masks_in_its_output_folder(bundle, tmp_path):
    """The reported data loss: output_dir = the input folder, which holds the ground truth as <stem>_seg.png."""
    folder = tmp_path / "cases"
    for stem in STEMS:
        _image(stem, folder / f"{stem}.jpg")
        _mask(stem, folder / f"{stem}_seg.png")
    before = _files(folder)
    message = _refused("inference.json", bundle_root=str(bundle), dataset_dir=str(folder),
                       output_dir=str(folder))
    assert str(folder / f"{STEMS[0]}_seg.png") in message and "--overwrite true" in message
    assert _files(folder) == before  # nothing written, nothing replaced

    # asked for: the masks are replaced (and, being in the input folder, segmented too), then recorded as ours
    _run("inference.json", bundle_root=str(bundle), dataset_dir=str(folder), output_dir=str(folder),
         overwrite=True)
    assert {f"{stem}_seg.png" for stem in STEMS} <= ours(folder)


def test_inference_reruns_into_its_own_output_folder_but_not_over_a_changed_file(bundle, tmp_path):
    folder = tmp_path / "cases"
    for stem in STEMS:
        _image(stem, folder / f"{stem}.jpg")
    for _ in range(2):  # the same command twice, the predictions next to the images
        _run("inference.json", bundle_root=str(bundle), dataset_dir=str(folder),
             output_dir=str(folder))
    # the first run's masks are its own outputs, not new inputs: no <stem>_seg_seg.png
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST_NAME] + [f"{s}{e}" for s in STEMS
                                                                                for e in (".jpg", "_seg.png")])
    edited = _mask(STEMS[1], folder / f"{STEMS[1]}_seg.png")  # the user corrects a predicted mask by hand
    before = edited.read_bytes()
    message = _refused("inference.json", bundle_root=str(bundle), dataset_dir=str(folder),
                       output_dir=str(folder))
    assert message.startswith(str(edited)) and "changed since" in message
    assert edited.read_bytes() == before


def test_evaluation_keeps_reports_it_did_not_write_and_reruns_into_its_own(bundle, tmp_path):
    data = tmp_path / "data"
    for stem in STEMS:
        _image(stem, data / "images" / f"{stem}.jpg")
        _mask(stem, data / "masks" / f"{stem}.png")
    config = "evaluate.json"
    out = tmp_path / "report"
    (out / "overlays").mkdir(parents=True)
    (out / "summary.md").write_text("my notes\n")
    _image(STEMS[0], out / "overlays" / "figure.png")  # someone's picture in a folder evaluation writes to
    before = _files(out)
    message = _refused(config, bundle_root=str(bundle), dataset_dir=str(data), output_dir=str(out))
    assert message.startswith(str(out / "summary.md")) and "(and 1 more)" in message
    assert _files(out) == before

    fresh = tmp_path / "fresh"
    for _ in range(2):
        _run(config, bundle_root=str(bundle), dataset_dir=str(data), output_dir=str(fresh))
    written = ours(fresh)
    assert {"metrics.json", "per_case.csv", "summary.md", "metrics.csv", "val_mean_dice_raw.csv"} <= written
    assert {f"overlays/{stem}.png" for stem in STEMS} <= written
    assert written == set(_files(fresh)) - {MANIFEST_NAME}  # every file it wrote is recorded


def test_claim_on_real_files(tmp_path):
    out = tmp_path / "out"
    mask = _mask(STEMS[0], out / "a_seg.png")
    assert claim(out, ["b_seg.png", "overlays/*.png"]) == str(out)  # nothing there yet
    _mask(STEMS[1], out / "scan[1]_seg.png")  # brackets are part of a file name, not a pattern
    with pytest.raises(OutputConflictError, match=r"scan\[1\]_seg.png"):
        claim(out, [out / "scan[1]_seg.png"])
    (out / "scan[1]_seg.png").unlink()
    with pytest.raises(OutputConflictError, match="a_seg.png: exists and was not written by this tool"):
        claim(out, ["a_seg.png"])
    record(out, [mask])
    assert claim(out, ["a_seg.png"]) == str(out)
    with open(out / MANIFEST_NAME, "a") as handle:
        handle.write('{"file": "b_seg.png", "sha')  # a run killed while recording
    _mask(STEMS[1], out / "b_seg.png")
    with pytest.raises(OutputConflictError, match="b_seg.png"):
        claim(out, ["a_seg.png", "b_seg.png"])
    with pytest.raises(OutputConflictError, match="b_seg.png"):  # "--overwrite false" arrives as a string
        claim(out, ["b_seg.png"], overwrite="false")
    assert claim(out, ["b_seg.png"], overwrite="true") == str(out)
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert [entry["file"] for entry in lines] == ["a_seg.png"]  # compacted: the torn line is gone
    (out / "overlays" / "x.png").mkdir(parents=True)
    with pytest.raises(OutputConflictError, match="a folder where this run writes a file"):
        claim(out, ["overlays/*.png"])
    with pytest.raises(NotADirectoryError, match="is a file"):
        claim(mask, ["a_seg.png"])
    with pytest.raises(NotADirectoryError, match="is a file"):
        claim(mask / "deeper", ["a_seg.png"])
    shutil.rmtree(out / "overlays")
    truth = _mask(STEMS[0], tmp_path / "truth" / "a.png")
    (out / "c_seg.png").symlink_to(truth)  # a link where an output goes: writing would go into the truth
    with pytest.raises(OutputConflictError, match="c_seg.png"):
        claim(out, ["c_seg.png"])
    record(out, [out / "c_seg.png"])  # even when recorded with the content it points to
    with pytest.raises(OutputConflictError, match="c_seg.png"):
        claim(out, ["c_seg.png"])
    before = truth.read_bytes()
    claim(out, ["c_seg.png"], overwrite=True)
    assert not (out / "c_seg.png").exists() and truth.read_bytes() == before  # the link goes, not its target
    with pytest.raises(ValueError, match="file name is 300 bytes, longer than"):  # would fail halfway
        claim(out, ["x" * 296 + ".png"])
    assert not (tmp_path / "new").exists() and claim(tmp_path / "new" / "out", ["x.png"])
    assert not (tmp_path / "new").exists()  # checked, not created: the writers create it


# ---- training: a trained model is replaced only when the run says so ----------------------------------------


def _training(bundle: Path, data: Path, **overrides):
    """The training workflow on ``data`` into ``bundle``, initialized (nothing runs yet)."""
    workflow = config_workflow("train.json", bundle_root=str(bundle), dataset_dir=str(data), **SMALL, **overrides)
    workflow.initialize()
    return workflow


def test_training_into_a_bundle_root_with_a_trained_model_is_refused_before_any_work(tmp_path):
    """Before, training again into a bundle root replaced model.pt and checkpoint.pt after one epoch, exit 0, no
    warning. Now it stops before the data is read, naming the file and the two ways on; nothing is written."""
    data = tmp_path / "data"
    for stem in STEMS:
        _image(stem, data / "images" / f"{stem}.jpg"), _mask(stem, data / "masks" / f"{stem}.png")
    bundle = tmp_path / "bundle"
    model = untrained_weights(bundle, variant=SMALL["variant"])
    (bundle / "models" / "checkpoint.pt").write_bytes(b"the user's checkpoint")
    before = _files(bundle)
    with pytest.raises(Exception) as err:
        _training(bundle, data).run()
    cause = root_cause(err.value)
    assert isinstance(cause, OutputConflictError), repr(err.value)
    assert str(cause).startswith(f"{model} (and checkpoint.pt): exists (a trained model)"), str(cause)
    assert "--resume true" in str(cause) and "--overwrite true" in str(cause)
    assert _files(bundle) == before and not (bundle / "eval").exists()
    # either way on passes this check (the run's first checks, without training)
    assert _training(bundle, data, overwrite=True).parser.get_parsed_content("check_writable")
    assert _training(bundle, data, overwrite="true").parser.get_parsed_content("check_writable")
    model.chmod(0o444)  # protected by its owner: replaced (os.replace) only after chmod u+w, even with overwrite
    try:
        with pytest.raises(Exception) as err:
            _training(bundle, data, overwrite=True).parser.get_parsed_content("check_writable")
        assert f"{model}: is read-only (protected)" in str(root_cause(err.value))
    finally:
        model.chmod(0o644)
    assert _files(bundle) == before

"""The trained and the served model are one definition, per task, in the folders users get.

For each task of the registry, the packaged bundle folder's training chain (``train.json``, and the evaluation
overlay on it) and its serving chain (``inference.json``, what ``monai.bundle run`` and MONAI Label's
``monaibundle`` app read) must build the same network, read and preprocess an image the same way, and run the
network at the same precision: the same targets and arguments, and the same tensors out of the same real image.
(Before ``configs/train.json`` became the one home of these, the polyp task served ``drop_rate`` 0.0 where it
trained with 0.2, and inference had its own precision switches; this test then failed.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle.config_item import ConfigComponent, ConfigExpression, ConfigItem
from monai.utils import set_determinism

from conftest import DATA, write_hip_dataset
from transfuse_bundle.tools.bundle_folder import copy_bundle
from transfuse_bundle.tools.tasks import config_parser, task_names

SIZE = {"image_size": [64, 64]}  # the packaged configs at a small size, as a user's --set image_size


def _plain(value):
    """A parsed config item without MONAI's wrappers: components as their resolved configs, recursively."""
    if isinstance(value, (ConfigComponent, ConfigExpression, ConfigItem)):
        return _plain(value.get_config())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "_meta_"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _definition(parser, id_: str):
    """``id_`` resolved (references and expressions evaluated) but not instantiated: targets and arguments.
    (A fresh parse: MONAI caches what it resolved, so an instance asked for later would be the definition.)"""
    return _plain(parser.get_parsed_content(id_, instantiate=False, lazy=False))


def _case(task: str, tmp_path: Path) -> dict[str, str]:
    """One real (or, for the hip task, synthetic) image with its mask, in the task's format."""
    if task == "prostate":
        folder = DATA / "prostate158" / "020"
        return {"image": str(folder / "t2.nii.gz"), "label": str(folder / "t2_anatomy_reader1.nii.gz")}
    if task == "hip":
        root = write_hip_dataset(tmp_path / "hip", 1)
        return {"image": str(root / "images" / "hip_00.png"), "label": str(root / "masks" / "hip_00.png")}
    folder = DATA / ("ph2" if task == "isic2017" else "kvasir_seg")
    image = sorted((folder / "images").glob("*.jpg"))[0]
    return {"image": str(image), "label": str(folder / "masks" / f"{image.stem}.png")}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Each task's bundle folder, as packaging and the MONAI Label installer write it."""
    root = tmp_path_factory.mktemp("bundles")
    return {task: copy_bundle(root / f"transfuse_{task}", task=task, overrides=SIZE, include_models=False)
            for task in task_names()}


@pytest.mark.parametrize("task", task_names())
def test_served_network_preprocessing_and_precision_are_the_trained_ones(task, bundles, tmp_path):
    bundle = bundles[task]
    common = {"bundle_root": str(bundle), "device": "$torch.device('cpu')"}
    trained = config_parser("train.json", source=bundle, **common)
    evaluated = config_parser("evaluate.json", source=bundle, **common)
    served = config_parser("inference.json", source=bundle, **common)

    # targets and arguments: the network, the served preprocessing, the precision, the served inferer
    for id_ in ("network_def", "preprocessing", "autocast_dtype", "inferer", "num_workers"):
        assert _definition(served, id_) == _definition(trained, id_), f"{task}: {id_} differs between serving and training"
    assert served["amp_dtype"] == trained["amp_dtype"]
    assert _definition(evaluated, "validate#inferer") == _definition(served, "inferer")  # evaluation runs the served path
    served.parse(reset=True), trained.parse(reset=True), evaluated.parse(reset=True)  # instances from here on
    served_inferer, validation_inferer = served.get_parsed_content("inferer"), trained.get_parsed_content("validate#inferer")
    assert served_inferer.dtype == validation_inferer.dtype == trained.get_parsed_content("autocast_dtype")
    assert type(served_inferer.inferer) is type(validation_inferer.inferer)  # the same slicing (or none)

    # the same tensors out of the same image: the served preprocessing and the validation preprocessing
    case = _case(task, tmp_path)
    served_image = served.get_parsed_content("preprocessing")({"image": case["image"]})["image"]
    validated = trained.get_parsed_content("validate#preprocessing")(dict(case))
    assert torch.equal(served_image.as_tensor(), validated["image"].as_tensor()), f"{task}: preprocessed images differ"
    assert served_image.shape[1:3] == torch.Size(SIZE["image_size"])

    # the same logits: the served network and inferer against the evaluation's, with the same weights
    set_determinism(seed=0)
    served_net = served.get_parsed_content("network_def").eval()
    evaluated_net = evaluated.get_parsed_content("network_def").eval()
    evaluated_net.load_state_dict(served_net.state_dict(), strict=True)
    x = served_image[None]
    if served_image.ndim == 4:  # a volume: a few slices are enough
        x = x[..., served_image.shape[-1] // 2 - 1: served_image.shape[-1] // 2 + 1]
    with torch.no_grad():
        served_logits = served_inferer(x, served_net)
        evaluated_logits = evaluated.get_parsed_content("validate#inferer")(x, evaluated_net)
    assert torch.equal(torch.as_tensor(served_logits), torch.as_tensor(evaluated_logits))
    assert np.isfinite(torch.as_tensor(served_logits).numpy()).all()
    set_determinism(seed=None)

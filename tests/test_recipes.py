"""Training-recipe overlays (configs/recipes/): the official recipe on top of train.json, on real images.

Real Kvasir-SEG images are read in place from ``../shared/data/kvasir_seg``; the datalist and every
output go to tmp_path. 64x64 and one epoch on four images, so the whole file takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigParser

from conftest import KVASIR
from transfuse_bundle.data import write_datalist
from transfuse_bundle.losses import OfficialStructureLoss, StructureLoss
from transfuse_bundle.tools.tasks import config_parser

OFFICIAL = "configs/recipes/official.json"  # an overlay, relative to the repository root


def _parser(tmp_path: Path, *overlays: str) -> ConfigParser:
    assert (KVASIR / "images").is_dir(), f"the recipe check needs Kvasir-SEG at {KVASIR}"
    datalist = tmp_path / "datalist.json"
    if not datalist.exists():
        write_datalist(KVASIR, datalist, num_training=4, num_validation=2, num_test=0, seed=0)
    return config_parser("train.json", overlays=overlays, bundle_root=str(tmp_path / "bundle"),
                         dataset_dir=str(datalist), image_size=[64, 64], num_workers=0, max_epochs=1,
                         **{"train#trainer#max_epochs": 1})


def test_official_recipe_overlay_changes_exactly_the_official_parts_and_trains(tmp_path):
    default, official = _parser(tmp_path), _parser(tmp_path, OFFICIAL)
    case = default.get_parsed_content("datalist")["training"][0]

    # masks: ours stay binary after resizing; the official ones are bilinear and not re-binarised
    ours = default.get_parsed_content("train#preprocessing")(dict(case))["label"]
    theirs = official.get_parsed_content("train#preprocessing")(dict(case))["label"]
    assert set(torch.unique(ours).tolist()) <= {0.0, 1.0}
    assert ((theirs > 0) & (theirs < 1)).any() and theirs.min() >= 0 and theirs.max() <= 1
    # validation labels are the same for both recipes (checkpoints are selected the same way)
    val_case = default.get_parsed_content("datalist")["validation"][0]
    assert torch.equal(default.get_parsed_content("validate#preprocessing")(dict(val_case))["label"],
                       official.get_parsed_content("validate#preprocessing")(dict(val_case))["label"])

    assert isinstance(official.get_parsed_content("loss").loss, OfficialStructureLoss)
    assert isinstance(default.get_parsed_content("loss").loss, StructureLoss)
    assert (official.get_parsed_content("batch_size"), default.get_parsed_content("batch_size")) == (16, 8)

    net = official.get_parsed_content("network")
    # the official network's Dropout2d (0.2 on the branches, 0.1 after BiFusion); ours trains without it
    def drop_rates(network):
        return sorted({m.p for m in network.modules() if isinstance(m, torch.nn.Dropout2d)})
    assert drop_rates(net) == [0.1, 0.2]
    assert drop_rates(default.get_parsed_content("network")) == [0.0]
    assert torch.count_nonzero(net.vit.pos_embed) == 0  # official: zeros without pretraining
    assert torch.count_nonzero(default.get_parsed_content("network").vit.pos_embed) > 0

    # official: every training image (the validation split too), the last epoch's weights
    datalist = official.get_parsed_content("datalist")
    assert official.get_parsed_content("train#dataset#data") == datalist["training"] + datalist["validation"]
    assert default.get_parsed_content("train#dataset#data") == datalist["training"]
    assert official["keep_model"] == default["keep_model"] == "last"
    # the official augmentation: shift/scale/rotate with zero padding (ours too), both flips, colour jitter half the time
    affine = official.get_parsed_content("train#augment")[0]
    assert affine.rand_affine.rand_affine_grid.rotate_range == (0.4363,)  # 25 degrees
    assert set(affine.padding_mode) == {"zeros"}

    before = net.vit.pos_embed.detach().clone()
    trainer = official.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.state.iteration == 1  # six images in one batch of 16
    saved = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert not torch.equal(net.vit.pos_embed.detach(), before)  # the zero embedding is trained

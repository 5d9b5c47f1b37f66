"""The real official TransFuse code, imported from a checkout at run time (transfuse_bundle.tools.official): it
reproduces the official reference outputs, runs at 352x352 through the shimmed token grid, and leaves timm's
registry as it was. The checkout is made from the local mirror of github.com/Rayicer/TransFuse (git archive)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO

REFERENCE = REPO.parent / "shared" / "reference"
MIRROR = Path("/work/.mirror/Rayicer+TransFuse/repo")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    if not MIRROR.is_dir():
        pytest.skip(f"no local mirror of the official repository at {MIRROR}")
    folder = tmp_path_factory.mktemp("official_transfuse")
    archive = subprocess.run(["git", f"--git-dir={MIRROR}", "archive", "HEAD", "lib"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def test_official_code_reproduces_the_reference_outputs_and_keeps_timm_intact(checkout):
    import timm

    from transfuse_bundle.tools.official import check_official

    assert check_official(checkout, REFERENCE) < 1e-5
    # the official modules register deit_* factories of their own: timm's registry must still build timm's model
    assert type(timm.create_model("deit_small_patch16_224", pretrained=False)).__module__.startswith("timm.")


def test_official_code_runs_at_352_with_its_token_grid_resized(checkout):
    from transfuse_bundle.tools.official import official_transfuse_s

    net = official_transfuse_s(checkout, (352, 352))
    assert net.net.transformer.pos_embed.shape == (1, 22 * 22, 384)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 352, 352)).shape == (1, 1, 352, 352)
    net.train()
    heads = net(torch.rand(1, 3, 352, 352))
    assert [tuple(h.shape) for h in heads] == [(1, 1, 352, 352)] * 3


def test_a_folder_that_is_not_the_official_code_is_refused(tmp_path):
    from transfuse_bundle.tools.official import OfficialCodeError, load_official_module

    with pytest.raises(OfficialCodeError, match="lib/TransFuse.py: not found"):
        load_official_module(tmp_path)

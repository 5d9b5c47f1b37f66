"""TransFuse network family: shapes, parameter counts, errors, scripting, ONNX, weights."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from transfuse_bundle.networks import TransFuse, convert_official_state_dict, padded_size

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def small_s() -> TransFuse:
    torch.manual_seed(0)
    return TransFuse("S", img_size=(64, 96)).eval()


@pytest.fixture(scope="module")
def official():
    """Official TransFuse_S random weights (float16 -> float32) and its outputs for a fixed input."""
    state = torch.load(REFERENCE / "official_transfuse_s_random_fp16.pt", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    io = torch.load(REFERENCE / "official_transfuse_s_io.pt", weights_only=True)
    return state, io


def test_s_parameter_count_matches_official_without_cls_token():
    assert _param_count(TransFuse("S", in_channels=3, out_channels=1)) == 26_248_341


@pytest.mark.parametrize("variant, expected, embed_dim, depth", [
    ("L", 129_472_797, 768, 10), ("L*", 143_534_389, 768, 12), ("tiny", 7_835_109, 192, 4)])
def test_other_variants_parameter_counts(variant, expected, embed_dim, depth):
    model = TransFuse(variant, img_size=(192, 256)).eval()
    assert _param_count(model) == expected
    assert model.vit.embed_dim == embed_dim and len(model.vit.blocks) == depth
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 48)).shape == (1, 1, 32, 48)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (128, 128), (192, 256)])
def test_s_eval_output_shape_at_several_sizes(small_s, size):
    with torch.no_grad():
        out = small_s(torch.rand(2, 3, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("in_channels, out_channels", [(1, 1), (4, 3), (3, 2)])
def test_channels_and_deep_supervision_tuple(in_channels, out_channels):
    model = TransFuse("S", in_channels=in_channels, out_channels=out_channels, img_size=(64, 64)).train()
    outputs = model(torch.rand(2, in_channels, 64, 64))
    assert isinstance(outputs, tuple) and len(outputs) == 3
    for out in outputs:
        assert out.shape == (2, out_channels, 64, 64)
    # the order is (map_2, map_1, map_x): the fused head first, the transformer head, the coarse head
    sum(o.mean() for o in outputs).backward()
    assert model.head_fused[-1].conv.weight.grad is not None
    assert model.head_vit[-1].conv.weight.grad is not None
    assert model.head_coarse[-1].conv.weight.grad is not None


def test_without_deep_supervision_training_returns_one_tensor_and_has_no_unused_heads():
    model = TransFuse("S", img_size=(64, 64), deep_supervision=False).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)
    out.mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP works without find_unused_parameters


def test_dropout_alias_sets_drop_rates():
    model = TransFuse("S", img_size=(64, 64), dropout=0.4)
    assert model.drop.p == pytest.approx(0.4)
    assert model.fusion16.dropout.p == pytest.approx(0.2)


def test_any_timm_backbones_by_name():
    # convnext has no stride-2 stage: its stride-4/8/16 features are indices 0-2, not 1-3
    model = TransFuse(cnn_name="convnext_atto", vit_name="vit_tiny_patch16_224", vit_depth=2, img_size=(64, 64)).eval()
    assert model.cnn.feature_info.reduction() == [4, 8, 16]
    assert len(model.vit.blocks) == 2 and model.vit.embed_dim == 192
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_positional_embedding_is_resized_to_the_input_grid():
    torch.manual_seed(0)
    model = TransFuse("S", img_size=(64, 64)).eval()
    bigger = TransFuse("S", img_size=(96, 128)).eval()
    state = model.state_dict()
    pos = state["vit.pos_embed"].transpose(1, 2).reshape(1, 384, 4, 4)
    pos = torch.nn.functional.interpolate(pos, size=(6, 8), mode="bilinear", align_corners=True)
    state["vit.pos_embed"] = pos.flatten(2).transpose(1, 2)
    bigger.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), bigger(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "XL"}, "unknown TransFuse variant 'XL'"),
        ({"img_size": (200, 300)}, "(208, 304)"),
        ({"img_size": (8, 8)}, "img_size must be"),
        ({"in_channels": 0}, "in_channels and out_channels must be >= 1"),
        ({"drop_rate": 1.5}, "drop_rate must be in [0, 1)"),
        ({"cnn_name": "no_such_cnn"}, "unknown timm CNN 'no_such_cnn'"),
        ({"vit_name": "vit_small_patch8_224"}, "patch size 8"),
        ({"cnn_weights": "/nonexistent/resnet34.pth"}, "not found: /nonexistent/resnet34.pth"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        TransFuse(**{"img_size": (64, 64), **kwargs})
    assert message in str(err.value)


def test_bad_input_size_names_padded_size(small_s):
    assert padded_size((200, 300)) == (208, 304)
    with pytest.raises(ValueError, match="pad or resize to 208x304"):
        small_s(torch.rand(1, 3, 200, 300))


def test_official_weights_reproduce_official_outputs(official):
    state, io = official
    model = TransFuse("S", out_channels=1).eval()
    model.load_state_dict(convert_official_state_dict(state), strict=True)
    with torch.no_grad():
        out = model(io["input"])
    assert _relative_error(out, io["map_2"]) < 1e-4
    # Training-mode outputs without dropout and with frozen BN statistics give the official
    # (map_x, map_1, map_2), returned here as (map_2, map_1, map_x).
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d):
            module.p = 0.0
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        map_2, map_1, map_x = model(io["input"])
    assert _relative_error(map_2, io["map_2"]) < 1e-4
    assert _relative_error(map_1, io["map_1"]) < 1e-4
    assert _relative_error(map_x, io["map_x"]) < 1e-4


def test_official_weights_convert_to_other_sizes(official):
    state, io = official
    converted = convert_official_state_dict({f"module.{k}": v for k, v in state.items()}, img_size=(352, 352))
    assert converted["vit.pos_embed"].shape == (1, 22 * 22, 384)
    model = TransFuse("S", img_size=(352, 352)).eval()
    model.load_state_dict(converted, strict=True)
    with pytest.raises(KeyError, match="not a key of the official"):
        convert_official_state_dict({"decoder.weight": torch.zeros(1)})


def test_torchscript_matches_eager(small_s):
    scripted = torch.jit.script(small_s)
    for size in [(64, 96), (96, 96)]:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), small_s(x), rtol=1e-5, atol=1e-5)


def test_onnx_export_matches_eager(small_s, tmp_path):
    import onnxruntime as ort  # from the test extra

    x = torch.rand(1, 3, 64, 96)
    path = tmp_path / "transfuse.onnx"
    torch.onnx.export(small_s, (x,), str(path), input_names=["image"], output_names=["pred"], dynamo=True)
    session = ort.InferenceSession(str(path))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        eager = small_s(x).numpy()
    np.testing.assert_allclose(onnx_out, eager, rtol=1e-4, atol=1e-4)


def test_local_pretrained_weights_load_like_the_official_code(tmp_path, caplog):
    """Weights saved from timm models load offline: the CNN exactly, the DeiT with its class slot
    dropped, its 14x14 position grid resized to 12x16 and blocks 8-11 dropped, all logged."""
    torch.manual_seed(0)
    resnet, deit = timm.create_model("resnet34"), timm.create_model("deit_small_patch16_224")
    torch.save(resnet.state_dict(), tmp_path / "resnet34.pth")
    torch.save(deit.state_dict(), tmp_path / "deit_small.pth")
    with caplog.at_level(logging.INFO, logger="transfuse_bundle"):
        model = TransFuse("S", cnn_weights=str(tmp_path / "resnet34.pth"), vit_weights=str(tmp_path / "deit_small.pth"))
    cnn_state = model.cnn.state_dict()
    for key, value in resnet.state_dict().items():
        if key.startswith(("conv1", "bn1", "layer1", "layer2", "layer3")):
            torch.testing.assert_close(cnn_state[key], value, rtol=0, atol=0)
    vit_state = model.vit.state_dict()
    for key, value in deit.state_dict().items():
        if key.startswith(("patch_embed", "norm.", *[f"blocks.{i}." for i in range(8)])):
            torch.testing.assert_close(vit_state[key], value, rtol=0, atol=0)
    grid = deit.pos_embed[:, 1:].detach().transpose(1, 2).reshape(1, 384, 14, 14)
    expected = torch.nn.functional.interpolate(grid, size=(12, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(model.vit.pos_embed.detach(), expected.flatten(2).transpose(1, 2))
    log = caplog.text
    assert "cls_token" in log and "blocks.11.mlp.fc2.weight" in log and "head.weight" in log
    assert "blocks.7." not in log


def test_local_pretrained_weights_adapt_to_grey_input(tmp_path):
    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "resnet34.pth")
    model = TransFuse("S", in_channels=1, img_size=(64, 64), cnn_weights=str(tmp_path / "resnet34.pth"))
    assert model.cnn.conv1.weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_pretrained_download_failure_says_how_to_work_offline():
    # conftest.py sets HF_HUB_OFFLINE=1: no test may reach a hub, so the fetch fails at once
    with pytest.raises(RuntimeError, match="cnn_weights= / vit_weights="):
        TransFuse("S", img_size=(64, 64), pretrained=True)


@pytest.mark.parametrize(
    "kwargs, absent",
    [
        ({"fusion": "concat"}, ["W_g", "W_x", "W", "spatial", "fc1", "fc2"]),
        ({"fusion": ["spatial_attention"]}, ["W_g", "W", "fc1"]),
        ({"fusion": ["channel_attention", "hadamard"]}, ["spatial"]),
        ({"composition": "sequential"}, []),
    ],
)
def test_ablation_options_build_script_and_run(kwargs, absent):
    torch.manual_seed(0)
    model = TransFuse("S", img_size=(64, 64), **kwargs).eval()
    for fusion in (model.fusion16, model.fusion8, model.fusion4):
        for name in absent:
            assert getattr(fusion, name) is None, name
    if kwargs.get("composition") == "sequential":
        # the ViT reads the CNN's stride-16 features through a 1x1 projection, not 16x16 image patches
        assert model.vit.patch_embed.proj.kernel_size == (1, 1)
        assert model.vit.patch_embed.proj.in_channels == 256
    x = torch.rand(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(scripted(x), out)
    assert out.shape == (1, 1, 64, 64)
    full_s_at_64 = 26_248_341 - (192 - 16) * 384  # the 4x4 position grid instead of 12x16
    assert _param_count(model) < full_s_at_64


def test_bad_ablation_options_raise():
    with pytest.raises(ValueError, match="fusion must be"):
        TransFuse("S", img_size=(64, 64), fusion=["squeeze"])
    with pytest.raises(ValueError, match="composition must be"):
        TransFuse("S", img_size=(64, 64), composition="serial")

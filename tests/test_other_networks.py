"""TransUNet and MedT: the systems the paper compares TransFuse with, in the same bundle."""

from __future__ import annotations

import pytest
import torch

from transfuse_bundle.tools.peers import MedT, TransUNet


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_transunet_r50_vit_b16_shapes_size_and_scripting():
    torch.manual_seed(0)
    model = TransUNet(in_channels=3, out_channels=2, img_size=(64, 96)).eval()
    # the paper's R50-ViT-B/16 has 105.28M parameters at 224x224 (196 tokens); here 24 tokens
    assert _param_count(model) + (196 - 24) * 768 == pytest.approx(105.28e6, rel=1e-3)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 2, 64, 96)
        torch.testing.assert_close(torch.jit.script(model)(x), out)
        assert model(torch.rand(1, 3, 96, 96)).shape == (1, 2, 96, 96)  # position grid resized
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.rand(1, 3, 70, 96))


def test_transunet_trains_one_step():
    model = TransUNet(in_channels=1, out_channels=1, img_size=(32, 32), vit_depth=2).train()
    out = model(torch.rand(2, 1, 32, 32))
    out.mean().backward()
    assert model.head.weight.grad is not None and model.stem.conv.weight.grad is not None


def test_medt_global_and_local_branches():
    torch.manual_seed(0)
    model = MedT(in_channels=3, out_channels=2, img_size=(128, 128)).eval()
    assert 1.2e6 < _param_count(model) < 1.7e6  # a ~1.4M-parameter model, as the paper's MedT
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), out)
        # the patches are re-assembled in place: a change in the top-left patch changes the
        # top-left output most (local branch) and the rest less (global branch only)
        y = x.clone()
        y[:, :, :32, :32] = 0
        change = (model(y) - out).abs()
        assert change[..., :32, :32].mean() > change[..., 64:, 64:].mean()
    assert out.shape == (1, 2, 128, 128)


def test_medt_gates_are_learned():
    model = MedT(img_size=(128, 128)).train()
    model(torch.rand(2, 3, 128, 128)).mean().backward()
    gate = model.layer1[0].height.gate_qr
    assert gate.requires_grad and gate.grad is not None and gate.grad.abs() > 0


def test_medt_rejects_other_sizes():
    with pytest.raises(ValueError, match="multiples of 128"):
        MedT(img_size=(96, 128))
    with pytest.raises(ValueError, match="built for 128x128"):
        MedT(img_size=(128, 128)).eval()(torch.rand(1, 3, 256, 256))

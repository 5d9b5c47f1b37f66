"""Structure loss: binary and multi-class, boundary weights, deep supervision, dtype and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transfuse_bundle.losses import (
    DEEP_SUPERVISION_WEIGHTS,
    OfficialStructureLoss,
    StructureLoss,
    boundary_weights,
    transfuse_deep_supervision_loss,
)


def _disc_mask(size: int = 64, radius: int = 14) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius**2).float()[None, None]  # (1, 1, H, W)


def _official_structure_loss(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official code's loss (zero padding), in float32, for comparison away from the border."""
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    wbce = F.binary_cross_entropy_with_logits(pred, mask, reduction="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    prob = torch.sigmoid(pred)
    inter = ((prob * mask) * weit).sum(dim=(2, 3))
    union = ((prob + mask) * weit).sum(dim=(2, 3))
    return (wbce + 1 - (inter + 1) / (union - inter + 1)).mean()


def test_perfect_prediction_beats_inverted_and_random():
    mask = _disc_mask()
    loss = StructureLoss()
    perfect = loss(20.0 * (2 * mask - 1), mask)
    inverted = loss(-20.0 * (2 * mask - 1), mask)
    random = loss(torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0)), mask)
    assert perfect < 0.01
    assert perfect < random < inverted
    assert inverted > 10


def test_matches_official_loss_when_the_lesion_is_far_from_the_border():
    """With the mask flat near the border, replicate padding and zero padding agree exactly."""
    mask = torch.zeros(2, 1, 96, 96)
    mask[:, :, 40:56, 36:60] = 1  # > 15 px (half the window) from every border, so zero padding == replicate
    pred = torch.randn(2, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(StructureLoss()(pred, mask), _official_structure_loss(pred, mask), atol=1e-6)


def test_boundary_weights_do_not_inflate_at_the_image_border():
    full = torch.ones(1, 1, 48, 48)  # foreground everywhere: there is no boundary anywhere
    weights = boundary_weights(full)
    assert torch.allclose(weights, torch.ones_like(weights))
    zero_padded = 1 + 5 * torch.abs(F.avg_pool2d(full, 31, stride=1, padding=15) - full)
    assert zero_padded.max() > 2  # what the official code does wrong at the borders


def test_boundary_weights_peak_at_the_edge_of_the_lesion():
    mask = _disc_mask()
    weights = boundary_weights(mask)
    assert weights.dtype == torch.float32
    assert weights[0, 0, 32, 32 + 14] > weights[0, 0, 32, 32] + 1  # on the rim vs the centre
    assert weights.min() >= 1 and weights.max() <= 6


def test_loss_stays_float32_even_for_half_or_double_inputs():
    mask = _disc_mask()
    for dtype in (torch.float64, torch.bfloat16):
        value = StructureLoss()(torch.zeros(1, 1, 64, 64, dtype=dtype), mask)
        assert value.dtype == torch.float32


def test_multiclass_softmax_loss_orders_predictions():
    ids = torch.zeros(1, 1, 64, 64)
    ids[:, :, 10:30, 10:30] = 1
    ids[:, :, 36:60, 30:60] = 2
    one_hot = F.one_hot(ids[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    loss = StructureLoss()
    perfect = loss(20.0 * (2 * one_hot - 1), ids)
    swapped = loss(20.0 * (2 * one_hot[:, [0, 2, 1]] - 1), ids)
    assert perfect < 0.01 < swapped
    assert loss(20.0 * (2 * one_hot - 1), ids[:, 0].long()) == pytest.approx(perfect.item())  # (B, H, W) targets too


def test_gradients_flow_and_reduce_the_loss():
    torch.manual_seed(0)
    mask = _disc_mask()
    logits = torch.zeros(1, 1, 64, 64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.5)
    loss = StructureLoss()
    first = loss(logits, mask)
    for _ in range(30):
        optimizer.zero_grad()
        value = loss(logits, mask)
        value.backward()
        optimizer.step()
    assert value < first / 2


def test_deep_supervision_weights_the_three_heads_in_order():
    mask = _disc_mask()
    heads = tuple(torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(s)) for s in range(3))
    single = StructureLoss()
    expected = sum(w * single(h, mask) for w, h in zip(DEEP_SUPERVISION_WEIGHTS, heads))
    combined = transfuse_deep_supervision_loss()(heads, mask)
    assert combined.item() == pytest.approx(expected.item(), rel=1e-6)
    assert transfuse_deep_supervision_loss()(heads[0], mask).item() == pytest.approx(single(heads[0], mask).item())


def test_errors_name_the_problem():
    loss = StructureLoss()
    with pytest.raises(ValueError, match="0/1 target"):
        loss(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 255.0))
    with pytest.raises(ValueError, match="class ids must be in"):
        loss(torch.zeros(1, 3, 8, 8), torch.full((1, 1, 8, 8), 3.0))
    with pytest.raises(ValueError, match="matching logits"):
        loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="odd"):
        boundary_weights(torch.zeros(1, 1, 8, 8), kernel_size=4)


def test_official_loss_is_the_official_formula_in_float64_on_soft_masks_at_the_border():
    """The official-recipe loss: zero padding, float64, soft (bilinearly resized) masks accepted."""
    gen = torch.Generator().manual_seed(2)
    mask = F.interpolate((torch.rand(3, 1, 12, 12, generator=gen) > 0.5).float(), size=(64, 64), mode="bilinear")
    assert 0 < ((mask > 0) & (mask < 1)).float().mean() < 1  # soft values, lesions touching the border
    logits = torch.randn(3, 1, 64, 64, generator=gen, requires_grad=True)
    value = OfficialStructureLoss()(logits, mask)
    assert value.dtype == torch.float64
    expected = _official_structure_loss(logits.detach().double(), mask.double())
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    value.backward()
    assert logits.grad.dtype == torch.float32 and logits.grad.abs().sum() > 0
    # our StructureLoss differs exactly where the official zero padding inflates the border weights
    assert abs(StructureLoss()(logits.detach(), mask).item() - value.item()) > 1e-3
    assert OfficialStructureLoss()(logits.detach(), mask[:, 0]).item() == pytest.approx(value.item())  # (B, H, W)
    with pytest.raises(ValueError, match="binary"):
        OfficialStructureLoss()(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))

import math

import open_clip.loss
import pytest
import torch
import torch.nn.functional as F

from mmpretrain.losses import ClipLoss


def features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64).exp().detach().requires_grad_()
    return image, text, scale


@pytest.mark.parametrize("n", [2, 7, 32])
def test_clip_loss_value_and_gradients_match_open_clip(n):
    ours_in = features(n, 16, seed=n)
    ref_in = [t.detach().clone().requires_grad_() for t in ours_in]
    ours = ClipLoss()(*ours_in)
    reference = open_clip.loss.ClipLoss()(*ref_in)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_aligned_pairs_with_large_scale_give_near_zero_loss():
    eye = torch.eye(8)
    assert ClipLoss()(eye, eye, torch.tensor(100.0)).item() < 1e-6


def test_uniform_similarity_gives_log_batch_size():
    same = F.normalize(torch.ones(5, 4), dim=-1)
    assert ClipLoss()(same, same, torch.tensor(10.0)).item() == pytest.approx(math.log(5))

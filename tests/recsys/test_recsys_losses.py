import math

import pytest
import torch
import torch.nn.functional as F

from napo.recsys.losses import bce_loss, full_ce_loss, sampled_softmax_loss


def test_bce_hand_computed():
    pos = torch.tensor([0.0])
    neg = torch.tensor([[0.0, math.log(3.0)]])
    # -log(0.5) + mean(-log(0.5), -log(1 - 0.75))
    want = math.log(2) + (math.log(2) + math.log(4)) / 2
    assert bce_loss(pos, neg).item() == pytest.approx(want)
    # masking the second negative leaves only the first
    mask = torch.tensor([[True, False]])
    assert bce_loss(pos, neg, mask).item() == pytest.approx(2 * math.log(2))


def test_sampled_softmax_with_all_negatives_is_full_ce():
    torch.manual_seed(0)
    h, items = torch.randn(5, 4), torch.randn(7, 4)
    targets = torch.tensor([0, 3, 6, 2, 2])
    logits = h @ items.T
    negs = torch.stack([torch.tensor([j for j in range(7) if j != t]) for t in targets])
    pos = logits[torch.arange(5), targets]
    neg = torch.gather(logits, 1, negs)
    full = full_ce_loss(h, items, targets)
    torch.testing.assert_close(sampled_softmax_loss(pos, neg), full)
    torch.testing.assert_close(full, F.cross_entropy(logits, targets))
    # a constant log_q shifts every logit equally: no change
    c = torch.full_like(neg, -2.0)
    torch.testing.assert_close(sampled_softmax_loss(pos, neg, None, torch.full_like(pos, -2.0), c), full)


def test_sampled_softmax_logq_and_accidental_hits():
    pos, neg = torch.tensor([1.0]), torch.tensor([[1.0, 0.0]])
    # log_q of the negatives raised by log 2 -> their logits drop by log 2
    got = sampled_softmax_loss(pos, neg, None, torch.zeros(1), torch.full((1, 2), math.log(2)))
    want = math.log(math.e + math.e / 2 + 0.5) - 1.0
    assert got.item() == pytest.approx(want)
    masked = sampled_softmax_loss(pos, neg, torch.tensor([[False, True]]))
    assert masked.item() == pytest.approx(math.log(math.e + 1.0) - 1.0)

import pytest
import torch

from napo.recsys.samplers import SAMPLERS, build_sampler

NUM_ITEMS = 50
COUNTS = torch.arange(NUM_ITEMS, 0, -1).float() ** 2  # item 0 most popular


def _batch(b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, NUM_ITEMS, (b,), generator=g)
    hist = torch.randint(0, NUM_ITEMS, (b, 5), generator=g)
    return targets, hist + 1  # shifted ids, no padding


def _score_by_id(ids):
    return ids.float()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_shapes_exclusions_and_freshness(name):
    s = build_sampler(name, NUM_ITEMS, COUNTS, generator=torch.Generator().manual_seed(1))
    targets, seq = _batch()
    a = s.sample(targets, seq, 4, score_fn=_score_by_id)
    b = s.sample(targets, seq, 4, score_fn=_score_by_id)
    assert a.shape == (64, 4) and a.dtype == torch.long
    assert (a >= 0).all() and (a < NUM_ITEMS).all()
    assert not (a == targets[:, None]).any()
    assert not ((a[:, :, None] + 1) == seq[:, None, :]).any()
    assert not torch.equal(a, b)  # fresh negatives on every call


def test_popularity_follows_count_power():
    s = build_sampler("popularity", NUM_ITEMS, COUNTS, alpha=0.5, generator=torch.Generator().manual_seed(0))
    targets = torch.full((20000,), NUM_ITEMS - 1)
    seq = torch.zeros(20000, 1, dtype=torch.long)
    neg = s.sample(targets, seq, 1).reshape(-1)
    freq = torch.bincount(neg, minlength=NUM_ITEMS).float() / neg.numel()
    p = COUNTS ** 0.5
    p[-1] = 0  # the target is never drawn
    p = p / p.sum()
    assert torch.allclose(freq, p, atol=0.006)
    torch.testing.assert_close(s.log_q(torch.arange(NUM_ITEMS)).exp().sum(), torch.tensor(1.0))


def test_in_batch_draws_other_rows_targets():
    s = build_sampler("in-batch", NUM_ITEMS, COUNTS, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([10, 20, 30, 40])
    seq = torch.zeros(4, 1, dtype=torch.long)
    neg = s.sample(targets, seq, 6)
    for i in range(4):
        assert set(neg[i].tolist()) <= set(targets.tolist()) - {targets[i].item()}


def test_adaptive_keeps_the_hardest():
    targets, seq = _batch(256)
    uni = build_sampler("random", NUM_ITEMS, generator=torch.Generator().manual_seed(0))
    ada = build_sampler("adaptive", NUM_ITEMS, pool_factor=10, generator=torch.Generator().manual_seed(0))
    u = uni.sample(targets, seq, 2).float().mean()
    a = ada.sample(targets, seq, 2, score_fn=_score_by_id).float().mean()
    # top-2 of 20 uniform draws on 0..49 averages about 45; uniform about 24.5
    assert a > 40 and u < 30
    with pytest.raises(ValueError, match="score_fn"):
        ada.sample(targets, seq, 2)
    with pytest.raises(ValueError, match="logQ"):
        ada.log_q(targets)


def test_mixed_half_in_batch():
    s = build_sampler("mixed", 10_000, mixed_fraction=0.5, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(8) * 7
    neg = s.sample(targets, torch.zeros(8, 1, dtype=torch.long), 4)
    batch_items = set(targets.tolist())
    assert all(set(neg[i, :2].tolist()) <= batch_items for i in range(8))
    torch.testing.assert_close(s.log_q(torch.arange(10_000)).exp().sum(), torch.tensor(1.0))


def test_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("hard", 5)

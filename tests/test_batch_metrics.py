"""napo.batch_metrics: the reference's rewards/* over the OWN negatives, pool/* over the pool."""

import pytest
import torch

from napo.batch_metrics import batch_metrics
from napo.sharing import NegativePool


def _pool(logps, mask, k, ref=None):
    b, p = logps.shape
    shared = (torch.arange(p) >= k).expand(b, p)
    extras = {} if ref is None else {"ref": ref}
    return NegativePool(ids=torch.arange(b * p).reshape(b, p), mask=mask, shared=shared.clone(),
                        partners=torch.zeros(b, (p - k) // k, dtype=torch.long), logps=logps, extras=extras)


def test_rewards_are_over_own_negatives_and_pool_metrics_over_the_pool():
    # row 0 beats its own two negatives but not the borrowed -1.0; row 1 loses to its own -2.5
    chosen = torch.tensor([-2.0, -3.0])
    logps = torch.tensor([[-5.0, -4.0, -1.0, -9.0],
                          [-2.5, -6.0, -7.0, float("nan")]])  # a masked slot may hold anything
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    local, stats = batch_metrics(chosen, None, _pool(logps, mask, k=2), 0.7, beta=0.5)
    value = {key: (v.sum() / (w.sum() if w is not None else len(v))).item() for key, (v, w) in {**local, **stats}.items()}
    assert value["rewards/accuracies"] == pytest.approx(0.5)  # row 0 only
    assert value["pool/rewards/accuracies"] == pytest.approx(0.0)  # row 0 loses to the borrowed -1.0
    # margins: beta * (chosen - mean of the negatives), per row, then the mean over rows
    own_margins = [0.5 * (-2.0 - (-4.5)), 0.5 * (-3.0 - (-4.25))]
    pool_margins = [0.5 * (-2.0 - (-19.0 / 4)), 0.5 * (-3.0 - (-15.5 / 3))]
    assert value["rewards/margins"] == pytest.approx(sum(own_margins) / 2)
    assert value["pool/rewards/margins"] == pytest.approx(sum(pool_margins) / 2)
    assert value["rewards/chosen"] == pytest.approx(0.5 * -2.5)
    # rejected: the mean over every real negative (4 own; 7 in the pool)
    assert value["logps/rejected"] == pytest.approx((-5 - 4 - 2.5 - 6) / 4)
    assert value["pool/logps/rejected"] == pytest.approx((-5 - 4 - 1 - 9 - 2.5 - 6 - 7) / 7)
    assert value["rewards/rejected"] == pytest.approx(0.5 * (-5 - 4 - 2.5 - 6) / 4)
    assert value["napo/pool_size"] == pytest.approx(3.5)
    assert value["napo/shared_fraction"] == pytest.approx(3 / 7)
    assert value["napo/gamma"] == pytest.approx(0.7)
    assert set(local) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                          "logps/chosen", "logps/rejected"}


def test_reference_log_probs_enter_the_rewards():
    chosen, ref_chosen = torch.tensor([-2.0]), torch.tensor([-1.0])
    logps = torch.tensor([[-3.0, -4.0]])
    ref = torch.tensor([[-1.5, -5.0]])
    local, stats = batch_metrics(chosen, ref_chosen, _pool(logps, torch.ones(1, 2, dtype=torch.bool), k=1, ref=ref),
                                 torch.tensor(1.0), beta=2.0, margin_state={"m_t": 0.3, "m_bar": None})
    # rewards 2 * (logps - ref): chosen -2, own +(-3 + 1.5) * 2 = -3, borrowed (-4 + 5) * 2 = +2
    assert local["rewards/chosen"][0].item() == pytest.approx(-2.0)
    assert local["rewards/accuracies"][0].item() == 1.0 and stats["pool/rewards/accuracies"][0].item() == 0.0
    assert stats["napo/m_t"][0].item() == pytest.approx(0.3) and "napo/m_bar" not in stats

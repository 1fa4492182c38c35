"""CF losses against independent formulas, and the identities between them."""

import math

import pytest
import torch

from napo.recsys.cf import bpr_loss, bsl_loss, psl_loss, psl_sigma, ssm_loss


@pytest.fixture
def cosines():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(7, generator=g, dtype=torch.float64) * 2 - 1  # [B] in [-1, 1]
    neg = torch.rand(7, 5, generator=g, dtype=torch.float64) * 2 - 1  # [B, K]
    return pos, neg


def _rowwise(fn, pos, neg):
    return sum(fn(float(p), [float(x) for x in n]) for p, n in zip(pos, neg, strict=False)) / len(pos)


def test_bpr_equals_formula(cosines):
    pos, neg = cosines
    want = _rowwise(lambda p, n: sum(-math.log(1 / (1 + math.exp(-(p - x)))) for x in n) / len(n), pos, neg)
    assert bpr_loss(pos, neg).item() == pytest.approx(want, rel=1e-12)


def test_bpr_mask_drops_negatives(cosines):
    pos, neg = cosines
    mask = torch.ones_like(neg, dtype=torch.bool)
    mask[:, 2:] = False
    assert bpr_loss(pos, neg, mask).item() == pytest.approx(bpr_loss(pos, neg[:, :2]).item(), rel=1e-12)


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_ssm_equals_formula(cosines, tau):
    pos, neg = cosines
    want = _rowwise(lambda p, n: -math.log(math.exp(p / tau) / sum(math.exp(x / tau) for x in n)), pos, neg)
    assert ssm_loss(pos, neg, tau).item() == pytest.approx(want, rel=1e-10)
    with_pos = _rowwise(lambda p, n: -math.log(math.exp(p / tau) / (math.exp(p / tau) + sum(math.exp(x / tau) for x in n))), pos, neg)
    assert ssm_loss(pos, neg, tau, include_positive=True).item() == pytest.approx(with_pos, rel=1e-10)


def test_bsl_equals_formula_and_ssm_at_equal_temperatures(cosines):
    pos, neg = cosines
    t1, t2 = 0.1, 0.3
    want = _rowwise(lambda p, n: -p / t1 + (t2 / t1) * math.log(sum(math.exp(x / t2) for x in n)), pos, neg)
    assert bsl_loss(pos, neg, t1, t2).item() == pytest.approx(want, rel=1e-10)
    for tau in (0.05, 0.2):
        assert bsl_loss(pos, neg, tau, tau).item() == pytest.approx(ssm_loss(pos, neg, tau).item(), rel=1e-12)


@pytest.mark.parametrize("activation,sigma", [
    ("tanh", lambda d: math.tanh(d) + 1),
    ("atan", lambda d: math.atan(d) + 1),
    ("relu", lambda d: max(d + 1, 0.0)),
])
def test_psl_equals_formula(cosines, activation, sigma):
    pos, neg = cosines
    tau = 0.2  # raw-cosine convention: the paper's tau is 0.1 on half cosines
    tau_paper = tau / 2
    want = _rowwise(lambda p, n: math.log(sum(sigma((x - p) / 2) ** (1 / tau_paper) for x in n)), pos, neg)
    assert psl_loss(pos, neg, tau, activation).item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.4])
def test_psl_exp_equals_ssm_at_the_same_tau(cosines, tau):
    pos, neg = cosines
    assert psl_loss(pos, neg, tau, "exp").item() == pytest.approx(ssm_loss(pos, neg, tau).item(), rel=1e-12)


def test_psl_surrogates_sit_between_step_and_exp_and_bound_is_tighter(cosines):
    d = torch.linspace(-1, 1, 401, dtype=torch.float64)
    step = (d >= 0).double()
    for act in ("tanh", "atan", "relu"):
        s = psl_sigma(d, act)
        assert bool((s >= step - 1e-12).all()) and bool((s <= torch.exp(d) + 1e-12).all()), act
    pos, neg = cosines
    for act in ("tanh", "atan", "relu"):
        assert psl_loss(pos, neg, 0.2, act).item() <= ssm_loss(pos, neg, 0.2).item()


def test_psl_relu_at_minus_one_is_finite():
    pos = torch.tensor([1.0], requires_grad=True)
    neg = torch.tensor([[-1.0, 0.5]])
    loss = psl_loss(pos, neg, 0.2, "relu")
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(pos.grad.item())


def test_weighted_mean():
    pos = torch.tensor([0.5, -0.2], dtype=torch.float64)
    neg = torch.tensor([[0.1], [0.3]], dtype=torch.float64)
    per = torch.nn.functional.softplus(neg[:, 0] - pos)
    w = torch.tensor([3.0, 1.0], dtype=torch.float64)
    assert bpr_loss(pos, neg, weight=w).item() == pytest.approx(((per * w).sum() / 4).item(), rel=1e-12)

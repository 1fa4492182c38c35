import math

import pytest
import torch
import torch.nn.functional as F

from napo.losses import listwise_preference_loss, preference_rewards


def trl_dpo_sigmoid(pc, pr, rc, rr, beta):
    """TRL's `sigmoid` DPO loss (label_smoothing 0), written from its definition."""
    logits = (pc - pr) - (rc - rr)
    return -F.logsigmoid(beta * logits)


def test_k1_with_reference_equals_dpo_sigmoid():
    torch.manual_seed(0)
    pc, rc = torch.randn(6) * 5 - 20, torch.randn(6) * 5 - 20
    pr, rr = torch.randn(6, 1) * 5 - 20, torch.randn(6, 1) * 5 - 20
    for beta in (0.1, 1.0, 3.0):
        got = listwise_preference_loss(pc, pr, rc, rr, beta=beta)
        want = trl_dpo_sigmoid(pc, pr[:, 0], rc, rr[:, 0], beta)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_dpo_hand_computed():
    # d_chosen = 0.5, d_rejected = -0.5, beta = 0.5 -> softplus(-0.5) = log(1 + e^-0.5)
    loss = listwise_preference_loss(
        torch.tensor([-2.0]),
        torch.tensor([[-3.0]]),
        torch.tensor([-2.5]),
        torch.tensor([[-2.5]]),
        beta=0.5,
    )
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    assert loss.item() == pytest.approx(0.474077, abs=1e-6)


def test_sdpo_hand_computed():
    # d_chosen = 0, d_rejected = [0, log 2, log 3]: sum_k exp = 6 -> loss = log(1 + 6) = log 7
    ref_r = torch.tensor([[-4.0, -5.0, -6.0]])
    rejected = ref_r + torch.tensor([[0.0, math.log(2), math.log(3)]])
    loss = listwise_preference_loss(
        torch.tensor([-1.0]), rejected, torch.tensor([-1.0]), ref_r, beta=1.0
    )
    assert loss.item() == pytest.approx(math.log(7), abs=1e-6)


def test_sdpo_matches_formula_and_gradient_is_softmax_weighted():
    torch.manual_seed(1)
    pc = (torch.randn(4) - 10).requires_grad_()
    pr = (torch.randn(4, 5) - 10).requires_grad_()
    rc, rr = torch.randn(4) - 10, torch.randn(4, 5) - 10
    beta = 0.7
    loss = listwise_preference_loss(pc, pr, rc, rr, beta=beta)
    r_c, r_r = beta * (pc - rc), beta * (pr - rr)
    # -log sigmoid(-log sum_k exp(r_k - r_c)), written with explicit exp (safe at these scales)
    want = -torch.log(torch.sigmoid(-torch.log(torch.exp(r_r - r_c[:, None]).sum(-1))))
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    z = r_r - r_c[:, None]
    expected = beta * torch.sigmoid(torch.logsumexp(z, -1))[:, None] * torch.softmax(z, -1)
    torch.testing.assert_close(pr.grad, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pc.grad, -expected.sum(-1).detach(), rtol=1e-5, atol=1e-6)


def test_napo_reference_free_with_margin_hand_computed():
    # c = -1, l = [-1.5, -2], beta = 2, gamma = 0.5:
    # softplus(gamma - beta c + log(e^{beta l_1} + e^{beta l_2}))
    c, l1, l2, beta, gamma = -1.0, -1.5, -2.0, 2.0, 0.5
    z = gamma - beta * c + math.log(math.exp(beta * l1) + math.exp(beta * l2))
    want = math.log(1 + math.exp(z))
    loss = listwise_preference_loss(
        torch.tensor([c]), torch.tensor([[l1, l2]]), beta=beta, margin=gamma
    )
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert want == pytest.approx(0.604131, abs=1e-6)


def test_margin_per_example_tensor():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([[-1.0], [-2.0]])  # logits 0 -> softplus(m)
    margin = torch.tensor([0.0, 1.0])
    loss = listwise_preference_loss(pc, pr, beta=1.0, margin=margin)
    torch.testing.assert_close(loss, torch.tensor([math.log(2), math.log(1 + math.e)]))


def test_requires_both_refs_or_neither():
    with pytest.raises(ValueError, match="both"):
        listwise_preference_loss(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), beta=1.0)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        listwise_preference_loss(torch.zeros(2), torch.zeros(3, 3), beta=1.0)


@pytest.mark.parametrize("beta", [1.0, 10.0, 100.0])
def test_finite_for_large_logps(beta):
    pc = torch.tensor([-1.0e4, -1.2e4, -9.0e3], requires_grad=True)
    pr = torch.tensor([[-1.01e4, -1.02e4], [-1.0e4, -1.3e4], [-9.0e3, -9.0e3]], requires_grad=True)
    loss = listwise_preference_loss(pc, pr, beta=beta, margin=1.0)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    # row 1: the best negative beats the chosen by 2000 -> loss ~ 1 + beta * 2000 (linear regime)
    assert loss[1].item() == pytest.approx(1.0 + beta * 2000.0, rel=1e-5)
    # row 0: the chosen beats every negative by >= 100 -> loss ~ e^{1 - 100 beta}, tiny but >= 0
    assert 0.0 <= loss[0].item() < 1e-30
    # row 2: two ties -> softplus(1 + log 2)
    assert loss[2].item() == pytest.approx(math.log(1 + 2 * math.e), rel=1e-5)


def test_masked_slots_change_nothing():
    torch.manual_seed(2)
    pc, rc = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    real = torch.randn(3, 2, dtype=torch.float64)
    real_ref = torch.randn(3, 2, dtype=torch.float64)
    garbage = torch.tensor(
        [[float("nan"), 1e30], [float("inf"), -float("inf")], [7.0, 3.0]], dtype=torch.float64
    )
    pr = torch.cat([real[:, :1], garbage, real[:, 1:]], dim=1).requires_grad_()  # [3, 4]
    rr = torch.cat([real_ref[:, :1], garbage.flip(1), real_ref[:, 1:]], dim=1)
    mask = torch.tensor([[True, False, False, True]] * 3)
    pc1 = pc.clone().requires_grad_()
    loss = listwise_preference_loss(pc1, pr, rc, rr, beta=1.5, margin=0.3, rejected_mask=mask)
    loss.sum().backward()

    pc2, real2 = pc.clone().requires_grad_(), real.clone().requires_grad_()
    want = listwise_preference_loss(pc2, real2, rc, real_ref, beta=1.5, margin=0.3)
    want.sum().backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(pc1.grad, pc2.grad)
    torch.testing.assert_close(pr.grad[:, [0, 3]], real2.grad)
    assert (pr.grad[:, 1:3] == 0).all()


def test_all_masked_row_is_zero_with_zero_gradient():
    pc = torch.tensor([-1.0, -1.0], requires_grad=True)
    pr = torch.tensor([[-2.0, -0.5], [float("nan"), 3.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    loss = listwise_preference_loss(pc, pr, beta=1.0, margin=0.5, rejected_mask=mask)
    assert loss[1].item() == 0.0
    want0 = math.log(1 + math.exp(0.5 + math.log(math.exp(-1.0) + math.exp(0.5))))
    assert loss[0].item() == pytest.approx(want0, abs=1e-6)
    loss.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert pc.grad[1].item() == 0.0 and (pr.grad[1] == 0).all()
    assert pc.grad[0].item() != 0.0


def test_gradcheck_double():
    torch.manual_seed(3)
    pc = torch.randn(3, dtype=torch.float64, requires_grad=True)
    pr = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rc = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rr = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    margin = torch.randn(3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(
        [[True, False, True, True], [True, True, True, True], [False, True, False, False]]
    )

    def fn(pc, pr, rc, rr, margin):
        return listwise_preference_loss(pc, pr, rc, rr, beta=1.3, margin=margin, rejected_mask=mask)

    assert torch.autograd.gradcheck(fn, (pc, pr, rc, rr, margin))


def test_preference_rewards():
    pc, rc = torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([-2.0, -2.0, -2.0])
    pr = torch.tensor([[-4.0, -3.0], [-1.0, -5.0], [9.0, -9.0]])
    rr = torch.full((3, 2), -3.0)
    mask = torch.tensor([[True, True], [True, True], [False, False]])
    r = preference_rewards(pc, pr, rc, rr, beta=2.0, rejected_mask=mask)
    torch.testing.assert_close(r.chosen, torch.tensor([2.0, -2.0, 0.0]))
    torch.testing.assert_close(r.rejected, torch.tensor([[-2.0, 0.0], [4.0, -4.0], [0.0, 0.0]]))
    torch.testing.assert_close(r.rejected_mean, torch.tensor([-1.0, 0.0, 0.0]))
    torch.testing.assert_close(r.margins, torch.tensor([3.0, -2.0, 0.0]))
    # row 0 beats both; row 1 loses to one negative; row 2 has none (vacuously true)
    torch.testing.assert_close(r.accuracies, torch.tensor([1.0, 0.0, 1.0]))
    # reference-free, no mask; detached even if inputs need grad
    r2 = preference_rewards(pc.requires_grad_(), pr, beta=1.0)
    assert not r2.chosen.requires_grad
    torch.testing.assert_close(r2.accuracies, torch.tensor([1.0, 0.0, 0.0]))

"""Triplet Shapley: the Monte Carlo estimator on a toy game with exact values, the incremental
lookahead game against a from-scratch recomputation, and TIP."""

import itertools
import math

import numpy as np
import pytest
import torch

from napo.eval.metrics import set_ranking_metrics
from napo.recsys.shapley import TIP, LookaheadGame, control_variate, mc_shapley, prefix_marginals

WEIGHTS = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 1.5])
N = len(WEIGHTS)


def toy_value(coalition):
    """Diminishing returns: v(S) = sqrt(sum of weights) + 0.3 * [players 0 and 4 both in S]."""
    s = list(coalition)
    return math.sqrt(WEIGHTS[s].sum()) + (0.3 if 0 in s and 4 in s else 0.0)


def exact_shapley():
    """phi_t = sum_{S not containing t} |S|! (n - |S| - 1)! / n! [v(S + t) - v(S)] (subset formula)."""
    phi = np.zeros(N)
    for t in range(N):
        others = [p for p in range(N) if p != t]
        for size in range(N):
            w = math.factorial(size) * math.factorial(N - size - 1) / math.factorial(N)
            for s in itertools.combinations(others, size):
                phi[t] += w * (toy_value(list(s) + [t]) - toy_value(list(s)))
    return phi


ALL_PERMS = np.array(list(itertools.permutations(range(N))))  # [720, 6]


def test_estimator_is_unbiased_over_all_permutations():
    est = mc_shapley(lambda p: prefix_marginals(toy_value, p), N, 0, None, permutations=ALL_PERMS)
    exact = exact_shapley()
    # the expectation of a one-permutation estimate = its mean over all n! equally likely permutations
    np.testing.assert_allclose(est.plain, exact, atol=1e-12)
    assert exact.sum() == pytest.approx(toy_value(range(N)) - toy_value([]), abs=1e-12)  # efficiency
    # with a fixed coefficient the control-covariate estimator is unbiased too (E[Z] is known)
    cv, _ = control_variate(est.marginals, est.positions, N, coef=np.full(N, -0.05))
    np.testing.assert_allclose(cv, exact, atol=1e-12)


def test_control_covariate_lowers_variance():
    est = mc_shapley(lambda p: prefix_marginals(toy_value, p), N, 0, None, permutations=ALL_PERMS)
    d, z = est.marginals, est.positions
    c = ((d - d.mean(0)) * (z - z.mean(0))).mean(0) / (z - z.mean(0)).var(0)
    resid = d - c * (z - (N - 1) / 2)
    # per permutation, exact over all 720: lower for every player, less than half in total
    assert (resid.var(0) < d.var(0)).all() and resid.var(0).sum() < 0.5 * d.var(0).sum()
    # and as used (coefficient estimated from the same M = 12 samples), over 300 repetitions
    exact = exact_shapley()
    rng = np.random.default_rng(0)
    err_plain, err_cv = [], []
    for _ in range(300):
        rows = rng.integers(len(ALL_PERMS), size=12)
        cv, _ = control_variate(d[rows], z[rows], N)
        err_plain.append(((d[rows].mean(0) - exact) ** 2).mean())
        err_cv.append(((cv - exact) ** 2).mean())
    assert np.mean(err_cv) < 0.7 * np.mean(err_plain)  # about half here


def _utility(users, items, val_users, targets, exclude, k=20):
    s = (users[val_users] @ items.T).numpy()
    return set_ranking_metrics(s, targets, exclude, (k,))[f"ndcg@{k}"]


def test_lookahead_game_matches_recomputation():
    g = torch.Generator().manual_seed(3)
    users, items = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(30, 4, generator=g, dtype=torch.float64)
    val_users = np.array([1, 2, 4])
    targets = [np.array([3, 7]), np.array([11]), np.array([0, 5, 9])]
    exclude = [np.array([1, 2]), np.array([4, 6, 8]), np.array([10])]
    trip = np.array([[1, 1, 20], [2, 4, 3], [4, 10, 11], [1, 2, 7], [2, 6, 0]])
    eta, k = 5.0, 15
    game = LookaheadGame(users, items, trip, val_users, targets, exclude, eta, k)
    perm = np.array([3, 0, 4, 2, 1])
    got = game.marginals(perm)
    # from scratch: theta(S) = theta_0 - eta * sum of the BPR gradients at theta_0
    w = torch.sigmoid((users[trip[:, 0]] * (items[trip[:, 2]] - items[trip[:, 1]])).sum(1))
    u, it = users.clone(), items.clone()
    prev = _utility(u, it, val_users, targets, exclude, k)
    assert game.empty_value == pytest.approx(prev, abs=1e-12)
    for t in perm:
        a, i, j = trip[t]
        du, di, dj = eta * w[t] * (items[i] - items[j]), eta * w[t] * users[a], -eta * w[t] * users[a]
        u[a] += du
        it[i] += di
        it[j] += dj
        cur = _utility(u, it, val_users, targets, exclude, k)
        assert got[t] == pytest.approx(cur - prev, abs=1e-12)
        prev = cur
    assert any(abs(x) > 0 for x in got)  # the step is large enough to move rankings here


def test_tip_fits_a_learnable_target():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = 1e-3 * (x[:, 0] * x[:, 4] + x[:, 1])  # tiny scale, like Shapley values
    torch.manual_seed(0)
    tip = TIP(4, hidden=32)
    r2 = tip.fit(x, y, epochs=300)
    assert r2 > 0.9
    assert abs(float(tip(x).mean()) - float(y.mean())) < 2e-4

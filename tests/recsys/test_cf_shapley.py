"""Triplet Shapley: the Monte Carlo estimator on a toy game with exact values, the incremental
lookahead game against a from-scratch recomputation, TIP and its held-out R^2, and the ways the
values are used (the authors' weighted BPR, TIP resampling, the direct draw)."""

import itertools
import math

import numpy as np
import pytest
import torch

from napo.eval.metrics import set_ranking_metrics
from napo.recsys import cf_train
from napo.recsys.cf import MF, UniformNegatives
from napo.recsys.shapley import LookaheadGame, control_variate, mc_shapley, prefix_marginals
from napo.recsys.shapley_sampler import (
    TIP,
    ShapleySampler,
    ShapleySettings,
    kfold_r2,
    tip_fit_predict,
    value_weights,
)

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


# ---------------------------------------------------------------------------------------------
# how the values are used: the authors' weighting, TIP's held-out R^2, the direct draw


def test_value_weights_clip_and_normalise():
    np.testing.assert_allclose(value_weights(torch.tensor([0.2, -0.1, 0.0, 0.6])).numpy(), [1.0, 0.0, 0.0, 3.0])
    assert value_weights(torch.tensor([-1.0, 0.0])).tolist() == [1.0, 1.0]  # nothing positive: uniform


class FixedNegatives:
    """UniformNegatives stand-in: row r of a batch gets negative neg[r]."""

    def __init__(self, neg):
        self.negs = torch.as_tensor(neg)
        self.gen = torch.Generator().manual_seed(0)

    def sample(self, users, k):
        neg = self.negs[: len(users), None].expand(-1, k).clone()
        return neg, torch.ones_like(neg, dtype=torch.bool)


def _sampler(mode, negatives, **settings):
    train_user, train_item = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 0])
    valid = {0: np.array([1]), 1: np.array([2])}
    return ShapleySampler(ShapleySettings(mode=mode, val_users=2, **settings), negatives, train_user, train_item,
                          valid, {}, seed=0)


def test_weight_mode_is_the_weighted_bpr_of_the_authors_code_with_clipped_values():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]])
    items = torch.tensor([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0], [0.2, 0.3], [-1.0, 0.0]])
    model = MF(4, 5, dim=2)
    with torch.no_grad():
        model.user.copy_(users)
        model.item.copy_(items)
    u, i, j = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]), torch.tensor([3, 4, 3, 4])
    sampler = _sampler("weight", FixedNegatives(j))
    sampler.set_vectors(users, items)
    phi = torch.tensor([0.2, -0.1, 0.0, 0.6])  # TIP's predictions for the four triplets
    sampler.tip = lambda x: phi[:, None].expand(x.shape[:-1])
    cfg = cf_train.CFConfig(model="MF", loss="bpr", dim=2, sampler="shapley", shapley_mode="weight")
    got = cf_train._batch_loss(model, cfg, u, i, None, sampler)
    # known answer: weights (0.2, 0, 0, 0.6) / mean 0.2 = (1, 0, 0, 3); loss = sum w l / sum w
    terms = [math.log1p(math.exp(float(users[r] @ items[j[r]] - users[r] @ items[i[r]]))) for r in range(4)]
    assert float(got) == pytest.approx((terms[0] + 3 * terms[3]) / 4, rel=1e-6)
    # the raw values of the released code would give the negative-valued triplet a reversed gradient
    assert (terms[0] * 0.2 - terms[1] * 0.1 + terms[3] * 0.6) != pytest.approx(float(got))


def test_kfold_r2_known_answers():
    rng = np.random.default_rng(0)
    y = rng.normal(size=12)
    x = np.zeros((12, 1))

    def mean_model(x_tr, y_tr, x_te):
        return np.full(len(x_te), y_tr.mean())

    # leave-one-out with the mean predictor: y_i - mean_{-i} = n / (n - 1) (y_i - mean), so
    # R^2 = 1 - (n / (n - 1))^2 whatever y is
    assert kfold_r2(mean_model, x, y, 12, rng) == pytest.approx(1 - (12 / 11) ** 2, abs=1e-12)
    # a noiseless linear target with least squares: every held-out row is predicted exactly
    xs = rng.normal(size=(40, 3))
    ys = xs @ np.array([1.0, -2.0, 0.5]) + 0.3

    def ols(x_tr, y_tr, x_te):
        a = np.c_[x_tr, np.ones(len(x_tr))]
        coef = np.linalg.lstsq(a, y_tr, rcond=None)[0]
        return np.c_[x_te, np.ones(len(x_te))] @ coef

    assert kfold_r2(ols, xs, ys, 5, rng) == pytest.approx(1.0, abs=1e-10)
    # the synthetic regression y = x0 + noise: held-out R^2 of least squares near Var(x0) / Var(y) = 0.5
    xn = rng.normal(size=(4000, 2))
    yn = xn[:, 0] + rng.normal(size=4000)
    assert kfold_r2(ols, xn, yn, 5, rng) == pytest.approx(0.5, abs=0.03)


def test_tip_fits_noise_in_sample_but_not_out_of_sample():
    """What the README's Triplet Shapley runs showed: train R^2 near 1, held-out R^2 below 0."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 128, generator=g), 1e-4 * torch.randn(256, generator=g)
    torch.manual_seed(0)
    assert TIP(64).fit(x, y) > 0.9
    r2 = kfold_r2(tip_fit_predict(64), x.numpy(), y.double().numpy(), 5, np.random.default_rng(0))
    assert r2 < 0


def test_direct_mode_draws_valued_triplets_by_clipped_value():
    rows = 4000
    u, pos = torch.arange(rows) % 4, torch.arange(rows) % 3
    sampler = _sampler("direct", FixedNegatives(torch.full((rows,), 4)), uniform_mix=0.25)
    trip = torch.tensor([[0, 0, 3], [1, 1, 4], [2, 2, 3], [3, 0, 4]])
    sampler.valued = (trip, torch.tensor([0.75, 0.0, 0.0, 0.25]))  # clipped values 0.3, -, 0, 0.1 normalised
    uu, pp, nn, mask, weight = sampler.sample(u, pos)
    assert weight is None and bool(mask.all())
    replaced = ~((uu == u) & (pp == pos) & (nn[:, 0] == 4))
    assert replaced.float().mean().item() == pytest.approx(0.75, abs=0.03)
    drawn = torch.stack([uu[replaced], pp[replaced], nn[replaced, 0]], 1)
    counts = [int((drawn == t).all(1).sum()) for t in trip]
    assert counts[1] == counts[2] == 0  # values <= 0 are never drawn
    assert counts[0] / len(drawn) == pytest.approx(0.75, abs=0.03)
    assert counts[0] + counts[3] == len(drawn)


def test_direct_mode_probabilities_come_from_the_round_values(cf_dir):
    data, _ = cf_train.load_data(cf_dir / "cf")
    negatives = UniformNegatives(*data.train, data.num_items, torch.Generator().manual_seed(0))
    sampler = ShapleySampler(ShapleySettings(mode="direct", players=40, permutations=4, val_users=20, eta=5.0),
                             negatives, *data.train, data.by_user("valid"), data.by_user("train"), seed=0)
    g = torch.Generator().manual_seed(0)
    info = sampler.refresh(torch.randn(data.num_users, 4, generator=g), torch.randn(data.num_items, 4, generator=g), 1)
    clipped = np.clip(sampler.values, 0, None)
    np.testing.assert_allclose(sampler.valued[1].numpy(), clipped / clipped.sum())
    assert sampler.tip is None and "tip_r2" not in info and info["draw_positive"] == pytest.approx((clipped > 0).mean())


@pytest.mark.parametrize("mode", ["resample", "direct"])
def test_a_round_without_information_falls_back_to_uniform(cf_dir, capsys, mode):
    data, _ = cf_train.load_data(cf_dir / "cf")
    negatives = UniformNegatives(*data.train, data.num_items, torch.Generator().manual_seed(0))
    sampler = ShapleySampler(ShapleySettings(mode=mode, players=40, permutations=3, val_users=20, eta=0.0),
                             negatives, *data.train, data.by_user("valid"), data.by_user("train"), seed=0)
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(data.num_users, 4, generator=g), torch.randn(data.num_items, 4, generator=g)
    info = sampler.refresh(users, items, 1)  # eta 0: no triplet moves anything, every value is 0
    assert info["v_gain"] == 0 and info["phi_nonzero"] == 0
    assert not sampler.active and "uniform triplets until the next valuation" in capsys.readouterr().err
    sampler.set_vectors(users, items)
    u, i = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    uu, ii, _, _, weight = sampler.sample(u, i)
    assert torch.equal(uu, u) and torch.equal(ii, i) and weight is None

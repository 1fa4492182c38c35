"""Triplet Shapley, the valuation (after He & Ma, CIKM 2024, "ITIPR"): the Shapley values of BPR
triplets (u, i, j) for a validation utility, by Monte Carlo over permutations with a control
covariate. How the values are used in training (TIP, weighting, resampling) is
napo.recsys.shapley_sampler.

What follows the paper (abstract-level, see shared/papers/cf.md section 1): Shapley values of
training triplets, a Monte Carlo permutation estimator (unbiased), a control-covariate variance
reduction. Everything else is OUR design, because the paper body could not be read and the
official code has no control covariates:
- the game: v(S) = NDCG@20 over a fixed subset of validation users (their valid items as targets,
  training items excluded) of the embeddings after ONE gradient step of size eta on
  sum_{t in S} BPR_t from the current model theta_0 (a one-step lookahead, so prefixes are
  updated incrementally: a triplet moves only e_u, e_i, e_j). eta is a config field; a step that
  overshoots shows as v(N) - v(empty) < 0 (`v_gain` in each round's log);
- the control covariate Z_t(pi) = |Pre_pi(t)| (position of t in the permutation), whose mean
  (n - 1) / 2 is known: phi_cv = phi_hat - c_hat (Z_bar - (n - 1) / 2), c_hat = Cov(D, Z) / Var(Z).
The valued game uses the backbone's output vectors as if they were free parameters: exact for MF,
an approximation for LightGCN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from napo.eval.metrics import set_metrics_per_user

# ---------------------------------------------------------------------------------------------
# Monte Carlo Shapley with a control covariate (generic over games)


@dataclass
class ShapleyEstimate:
    plain: np.ndarray  # [n] mean marginal contribution over the permutations
    cv: np.ndarray  # [n] with the coalition-size control covariate
    coef: np.ndarray  # [n] c_hat per player
    marginals: np.ndarray  # [M, n] D[m, t] = contribution of t in permutation m
    positions: np.ndarray  # [M, n] Z[m, t] = number of players before t


def prefix_marginals(value: Callable[[list[int]], float], perm: np.ndarray) -> np.ndarray:
    """Marginal contribution of every player in permutation `perm` [n] of a game given by its
    value function on coalitions: D[perm[k]] = v(perm[:k + 1]) - v(perm[:k]). Returns [n]."""
    out = np.zeros(len(perm))
    prev = value([])
    for k, t in enumerate(perm):
        cur = value(list(perm[: k + 1]))
        out[t] = cur - prev
        prev = cur
    return out


def control_variate(marginals: np.ndarray, positions: np.ndarray, n: int,
                    coef: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """phi_cv = mean(D) - c (mean(Z) - (n - 1) / 2) per player; c = Cov(D, Z) / Var(Z) estimated
    from the same samples unless `coef` [n] is given. D, Z: [M, n]. Returns (phi_cv, c)."""
    z_mean = (n - 1) / 2
    if coef is None:
        dz = marginals - marginals.mean(0)
        zz = positions - positions.mean(0)
        var = (zz ** 2).mean(0)
        coef = np.where(var > 0, (dz * zz).mean(0) / np.where(var > 0, var, 1.0), 0.0)
    return marginals.mean(0) - coef * (positions.mean(0) - z_mean), coef


def mc_shapley(marginals_of: Callable[[np.ndarray], np.ndarray], n: int, num_permutations: int,
               rng: np.random.Generator, permutations: np.ndarray | None = None) -> ShapleyEstimate:
    """phi_hat_t = (1 / M) sum_m D_t(pi_m) over M uniform permutations (unbiased when every
    marginal is exact: no truncation), plus the control-covariate estimate.

    `marginals_of(perm [n]) -> [n]` gives each player's contribution in that permutation.
    `permutations` [M, n] overrides the random draw (tests enumerate all n! of them).
    """
    perms = permutations if permutations is not None else np.stack(
        [rng.permutation(n) for _ in range(num_permutations)])
    marg = np.stack([marginals_of(p) for p in perms])  # [M, n]
    pos = np.argsort(perms, axis=1).astype(np.float64)  # [M, n] position of player t
    cv, coef = control_variate(marg, pos, n)
    return ShapleyEstimate(marg.mean(0), cv, coef, marg, pos)


# ---------------------------------------------------------------------------------------------
# The triplet game: one-step BPR lookahead, validation NDCG@k


class LookaheadGame:
    """Players: triplets [n, 3] (u, i, j) whose users are all validation users of the game.

    users [U, d], items [I, d]: the current (theta_0) vectors, dot-product scores.
    val_users [V]; val_targets: V id arrays; val_exclude: V id arrays (training items).
    Adding triplet t applies its own BPR gradient step at theta_0:
        w = sigmoid(s_uj - s_ui),  e_u += eta w (e_i - e_j),  e_i += eta w e_u,  e_j -= eta w e_u.
    Utility: mean NDCG@k over the V users (napo.eval.metrics, pessimistic ties).
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, triplets: np.ndarray,
                 val_users: np.ndarray, val_targets: list, val_exclude: list, eta: float, k: int = 20):
        u0 = users[val_users].double().numpy()  # [V, d]
        self.items0 = items.double().numpy()  # [I, d]
        self.k = k
        row = np.full(users.shape[0], -1, np.int64)
        row[val_users] = np.arange(len(val_users))
        self.trip_row = row[triplets[:, 0]]
        if (self.trip_row < 0).any():
            raise ValueError("every triplet's user must be a validation user of the game")
        self.trip = triplets
        eu, ei, ej = u0[self.trip_row], self.items0[triplets[:, 1]], self.items0[triplets[:, 2]]
        w = 1.0 / (1.0 + np.exp(-((eu * ej).sum(1) - (eu * ei).sum(1))))  # [n]
        self.d_user = eta * w[:, None] * (ei - ej)  # [n, d]
        self.d_pos = eta * w[:, None] * eu
        self.d_neg = -eta * w[:, None] * eu
        self.u0 = u0
        self.targets = val_targets
        self.mask = np.zeros((len(val_users), len(self.items0)), bool)
        for r, e in enumerate(val_exclude):
            self.mask[r, e] = True
        s0 = np.where(self.mask, -np.inf, u0 @ self.items0.T)  # [V, I]
        self.s0 = s0
        self.ndcg0 = self._ndcg(s0, np.arange(len(val_users)))
        self.thr0 = self._threshold(s0)

    def _ndcg(self, s: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return set_metrics_per_user(s, [self.targets[r] for r in rows], None, (self.k,))[f"ndcg@{self.k}"]

    def _threshold(self, s: np.ndarray) -> np.ndarray:
        kk = min(self.k, s.shape[1]) - 1
        return -np.partition(-s, kk, axis=1)[:, kk]

    @property
    def empty_value(self) -> float:
        return float(self.ndcg0.mean())

    def marginals(self, perm: np.ndarray) -> np.ndarray:
        """Walk `perm` [n], adding one triplet at a time; returns each triplet's contribution [n].
        Only users whose top-k can change (a moved score at or above their k-th best, or their
        own row) are re-scored, so the walk is exact and cheap."""
        u, e, s = self.u0.copy(), self.items0.copy(), self.s0.copy()
        ndcg, thr = self.ndcg0.copy(), self.thr0.copy()
        total = ndcg.sum()
        out = np.zeros(len(perm))
        for t in perm:
            r, i, j = self.trip_row[t], self.trip[t, 1], self.trip[t, 2]
            old = s[:, [i, j]].copy()  # [V, 2]
            u[r] += self.d_user[t]
            e[i] += self.d_pos[t]
            e[j] += self.d_neg[t]
            s[:, i] = np.where(self.mask[:, i], -np.inf, u @ e[i])
            s[:, j] = np.where(self.mask[:, j], -np.inf, u @ e[j])
            s[r] = np.where(self.mask[r], -np.inf, e @ u[r])
            hit = (old >= thr[:, None]).any(1) | (s[:, [i, j]] >= thr[:, None]).any(1)
            hit[r] = True
            rows = np.flatnonzero(hit)
            new = self._ndcg(s[rows], rows)
            before = total
            total += new.sum() - ndcg[rows].sum()
            ndcg[rows] = new
            thr[rows] = self._threshold(s[rows])
            out[t] = (total - before) / len(ndcg)
        return out

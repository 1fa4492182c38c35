"""Triplet Shapley in training: generalise the triplet values (napo.recsys.shapley) to unseen
triplets with a small model (TIP), and weight or resample BPR triplets by them.

What follows the authors' released code (shared/papers/cf.md 1.2): weighting each sampled
triplet's BPR term by its value (`mode: weight`), with the values clipped at 0 as cf.md 1.4.7
documents (the code multiplies by raw, possibly negative values, which reverses the gradient of a
negative-valued triplet; we never do that). What follows the paper's abstract: a model that
predicts the importance of unseen triplets, and resampling of important triplets. The rest is
OUR design (the official code has no TIP):
- TIP: a 2-layer MLP (64 hidden, ReLU) on [e_u*e_i + c_u*e_i, e_u*e_j + c_u*e_j] (c_u = mean
  embedding of u's training items), regressed on the standardised values with MSE. Its held-out
  R^2 (k-fold, `tip_folds`) is logged each round, with a warning when it is <= 0: TIP then
  predicts no better than the mean, and whatever uses its predictions is close to uniform;
- how the values are used (`mode`):
    resample         for each positive, `pool` uniform negatives are scored by TIP and one is drawn
                     with p = mix / pool + (1 - mix) (max(phi, 0) + eps) / sum(max(phi, 0) + eps);
    weight           the authors' code: one uniform negative, the BPR term weighted by
                     w = max(phi, 0) / mean_batch(max(phi, 0)) (all 1 when the batch's values are
                     all <= 0), phi = TIP's prediction; a weighted mean instead of the code's raw
                     sum, so the step size keeps its meaning (the sum scales it by sum(phi));
    resample_weight  both;
    direct           no TIP: a share (1 - mix) of each batch's rows is replaced by VALUED triplets
                     drawn with p proportional to max(phi_cv, 0); the other rows keep uniform
                     negatives.
A round whose values are all equal (the step moved no top-k list) or, for direct, none positive
gives nothing to draw by: it warns, and triplets are uniform until the next valuation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from napo.recsys.shapley import LookaheadGame, mc_shapley

# ---------------------------------------------------------------------------------------------
# TIP: generalise values to unseen triplets


def triplet_features(users: torch.Tensor, items: torch.Tensor, centroid: torch.Tensor,
                     u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """[e_u*e_i + c_u*e_i, e_u*e_j + c_u*e_j]: u, i, j [...] ids -> [..., 2d]."""
    eu, cu = users[u], centroid[u]
    return torch.cat([(eu + cu) * items[i], (eu + cu) * items[j]], -1)


class TIP(nn.Module):
    """Triplet-importance predictor: MLP 2d -> hidden -> 1 (ReLU), trained on standardised values."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("sd", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., 2d] -> predicted value [...] in the original units."""
        return self.net(x).squeeze(-1) * self.sd + self.mu

    def fit(self, x: torch.Tensor, y: torch.Tensor, epochs: int = 200, lr: float = 1e-2) -> float:
        """Full-batch Adam on MSE of the standardised targets; returns the final train R^2."""
        self.mu.fill_(float(y.mean()))
        self.sd.fill_(float(y.std().clamp(min=1e-12)))
        z = (y - self.mu) / self.sd
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        for _ in range(epochs):
            loss = ((self.net(x).squeeze(-1) - z) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(1 - ((self.net(x).squeeze(-1) - z) ** 2).mean() / z.var().clamp(min=1e-12))


def kfold_r2(fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], x: np.ndarray,
             y: np.ndarray, folds: int, rng: np.random.Generator) -> float:
    """Out-of-fold R^2 = 1 - sum (y - y_oof)^2 / sum (y - mean y)^2, where y_oof of each row comes
    from `fit_predict(x_train, y_train, x_test)` fitted on the other folds (rows shuffled by `rng`
    into `folds` near-equal folds). x [n, ...], y [n]. Below 0: worse than predicting the mean."""
    n = len(y)
    if folds < 2 or n < folds:
        raise ValueError(f"k-fold R^2 needs 2 <= folds <= rows, got {folds} folds for {n} rows")
    fold = np.empty(n, np.int64)
    fold[rng.permutation(n)] = np.arange(n) % folds
    pred = np.empty(n, np.float64)
    for f in range(folds):
        test = fold == f
        pred[test] = fit_predict(x[~test], y[~test], x[test])
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else float("nan")


def tip_fit_predict(dim: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """kfold_r2's fit_predict for a fresh TIP (as refresh fits it)."""

    def fit_predict(x_tr, y_tr, x_te):
        tip = TIP(dim)
        tip.fit(torch.as_tensor(x_tr, dtype=torch.float32), torch.as_tensor(y_tr, dtype=torch.float32))
        with torch.no_grad():
            return tip(torch.as_tensor(x_te, dtype=torch.float32)).double().numpy()

    return fit_predict


def value_weights(phi: torch.Tensor) -> torch.Tensor:
    """BPR weights from triplet values phi [B]: max(phi, 0) / mean(max(phi, 0)), all 1 when no
    value is positive (cf.md 1.4.7; never the raw values, whose negative part reverses a gradient)."""
    clipped = phi.clamp(min=0)
    mean = clipped.mean()
    return torch.ones_like(phi) if float(mean) <= 0 else clipped / mean


# ---------------------------------------------------------------------------------------------
# Resampling / weighting BPR triplets by predicted value


MODES = ("resample", "weight", "resample_weight", "direct")


@dataclass
class ShapleySettings:
    warmup_epochs: int = 20  # uniform BPR before the first valuation
    refresh_epochs: int = 10  # epochs between valuations
    rounds: int = 3  # valuations at most
    players: int = 512  # triplets valued per round
    permutations: int = 30  # Monte Carlo permutations per round
    val_users: int = 300  # validation users of the utility
    eta: float = 1.0  # lookahead step size
    pool: int = 4  # uniform negatives TIP chooses from, per positive
    uniform_mix: float = 0.5  # share of the uniform distribution in the resampling mixture
    mode: str = "resample"  # resample | weight | resample_weight | direct (module docstring)
    tip_folds: int = 5  # k of TIP's held-out R^2 (0 = not measured)
    eps: float = 1e-6


class ShapleySampler:
    """Draws the BPR triplets of a batch: uniform until the first valuation, then by `mode`."""

    def __init__(self, settings: ShapleySettings, negatives, train_user: np.ndarray,
                 train_item: np.ndarray, valid_targets: dict[int, np.ndarray],
                 train_items: dict[int, np.ndarray], seed: int):
        if settings.mode not in MODES:
            raise ValueError(f"shapley mode must be one of {', '.join(MODES)}, got {settings.mode!r}")
        self.s = settings
        self.seed = seed
        self.neg = negatives  # napo.recsys.cf.UniformNegatives
        self.train_user, self.train_item = train_user.copy(), train_item.copy()  # writable
        self.rng = np.random.default_rng([seed, 11])
        users = np.array(sorted(valid_targets))
        self.val_users = np.sort(self.rng.choice(users, min(len(users), settings.val_users), replace=False))
        self.val_targets = [valid_targets[u] for u in self.val_users]
        self.val_exclude = [train_items.get(u, np.zeros(0, np.int64)) for u in self.val_users]
        self.tip: TIP | None = None
        self.valued: tuple[torch.Tensor, torch.Tensor] | None = None  # (triplets [n, 3], draw p [n]): direct
        self.values: np.ndarray | None = None  # direct: the valued triplets' phi_cv [n]
        self.rounds_done = 0
        self.log: list[dict] = []
        self._vectors = None

    @property
    def active(self) -> bool:
        """Is there a TIP or a valued set to draw by (before the first valuation, and after a
        valuation whose values were all equal, every mode draws uniform triplets)?"""
        return self.tip is not None or self.valued is not None

    def due(self, epoch: int) -> bool:
        """Valuation before `epoch` (1-based)?"""
        s = self.s
        since = epoch - 1 - s.warmup_epochs
        return since >= 0 and since % s.refresh_epochs == 0 and self.rounds_done < s.rounds

    def refresh(self, users: torch.Tensor, items: torch.Tensor, epoch: int) -> dict:
        """Value `players` triplets of the game's users; fit TIP on the values (every mode but
        direct, which keeps the valued triplets and their draw probabilities instead)."""
        users, items = users.detach(), items.detach()
        s = self.s
        pair = np.flatnonzero(np.isin(self.train_user, self.val_users))
        pick = self.rng.choice(pair, min(s.players, len(pair)), replace=False)
        u = torch.from_numpy(self.train_user[pick])
        j, ok = self.neg.sample(u, 1)
        trip = np.stack([self.train_user[pick], self.train_item[pick], j[:, 0].numpy()], 1)[ok[:, 0].numpy()]
        game = LookaheadGame(users, items, trip, self.val_users, self.val_targets, self.val_exclude, s.eta)
        est = mc_shapley(game.marginals, len(trip), s.permutations, self.rng)
        self.rounds_done += 1
        var_plain = est.marginals.var(0).mean() / s.permutations
        resid = est.marginals - est.coef * (est.positions - (len(trip) - 1) / 2)
        info = {"epoch": epoch, "players": int(len(trip)), "v_empty": game.empty_value,
                # every permutation's marginals add up to v(all players) - v(empty) (efficiency)
                "v_gain": float(est.marginals[0].sum()),
                "phi_mean": float(est.cv.mean()), "phi_positive": float((est.cv > 0).mean()),
                "phi_nonzero": float((np.abs(est.plain) > 0).mean()),
                "var_plain": float(var_plain), "var_cv": float(resid.var(0).mean() / s.permutations)}
        clipped = np.clip(est.cv, 0, None)
        if np.ptp(est.cv) == 0 or (s.mode == "direct" and clipped.sum() == 0):  # nothing to draw by
            self.tip, self.valued = None, None  # uniform triplets until the next valuation
            print(f"warning: Triplet Shapley round {self.rounds_done} (epoch {epoch}): no valued triplet has a "
                  f"positive value that differs from the others (mean {est.cv.mean():g}; the lookahead step "
                  f"shapley_eta {s.eta:g} may change no top-k list): uniform triplets until the next valuation",
                  file=sys.stderr)
        elif s.mode == "direct":
            p = clipped / clipped.sum()
            self.valued = (torch.from_numpy(trip.astype(np.int64)), torch.from_numpy(p))
            self.values = est.cv
            info["draw_positive"] = float((p > 0).mean())
        else:
            centroid = self._centroid(items, users.shape[0])
            x = triplet_features(users, items, centroid, *(torch.from_numpy(trip[:, c]) for c in range(3))).float()
            y = torch.from_numpy(est.cv).float()
            self.tip = TIP(users.shape[1])
            info["tip_r2"] = self.tip.fit(x, y)
            if s.tip_folds >= 2 and len(trip) >= s.tip_folds:
                with torch.random.fork_rng(devices=[]):  # the held-out fits leave the training's RNG streams alone
                    torch.manual_seed(self.seed * 1000 + self.rounds_done)
                    r2 = kfold_r2(tip_fit_predict(users.shape[1]), x.numpy(), y.double().numpy(), s.tip_folds,
                                  np.random.default_rng([self.seed, 13, self.rounds_done]))
                info["tip_r2_heldout"] = r2
                if not r2 > 0:
                    print(f"warning: Triplet Shapley round {self.rounds_done} (epoch {epoch}): TIP's held-out R^2 is "
                          f"{r2:.3f} ({s.tip_folds}-fold) while its training R^2 is {info['tip_r2']:.3f}: its "
                          "predictions are no better than the mean, so the resampling / weighting they drive is "
                          "close to uniform (value more triplets, or use shapley_mode direct)", file=sys.stderr)
        self.log.append(info)
        return info

    def _centroid(self, items: torch.Tensor, num_users: int) -> torch.Tensor:
        """c_u = mean item vector of u's training items: [U, d]."""
        tot = torch.zeros(num_users, items.shape[1]).index_add_(
            0, torch.from_numpy(self.train_user), items[torch.from_numpy(self.train_item)])
        cnt = torch.bincount(torch.from_numpy(self.train_user), minlength=num_users).clamp(min=1)
        return tot / cnt[:, None]

    def set_vectors(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """The model's current vectors for TIP features (call once per epoch)."""
        users, items = users.detach(), items.detach()
        self._vectors = (users, items, self._centroid(items, users.shape[0]))

    def _tip_values(self, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """TIP's predicted values of triplets (u, pos, neg), neg [B, P] -> [B, P]."""
        users, items, centroid = self._vectors
        x = triplet_features(users, items, centroid, u[:, None].expand_as(neg), pos[:, None].expand_as(neg), neg)
        return self.tip(x)

    @torch.no_grad()
    def sample(self, u: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch's triplets from its positive pairs u [B], pos [B]:
        (users [B], positives [B], negatives [B, 1], mask [B, 1], weight [B] or None)."""
        s = self.s
        if not self.active or s.mode == "weight":
            neg, ok = self.neg.sample(u, 1)
            if not self.active:
                return u, pos, neg, ok, None
            return u, pos, neg, ok, value_weights(self._tip_values(u, pos, neg)[:, 0])
        if s.mode == "direct":
            return self._direct(u, pos)
        pool, ok = self.neg.sample(u, s.pool)  # [B, P]
        phi = self._tip_values(u, pos, pool)  # [B, P]
        p_val = (phi.clamp(min=0) + s.eps) * ok
        p = s.uniform_mix * ok / ok.sum(1, keepdim=True).clamp(min=1) + \
            (1 - s.uniform_mix) * p_val / p_val.sum(1, keepdim=True).clamp(min=1e-30)
        choice = torch.multinomial(p + 1e-30 * ok, 1, generator=self.neg.gen)  # [B, 1]
        neg, mask = pool.gather(1, choice), ok.gather(1, choice)
        weight = value_weights(phi.gather(1, choice)[:, 0]) if s.mode == "resample_weight" else None
        return u, pos, neg, mask, weight

    def _direct(self, u: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rows kept with probability uniform_mix (uniform negative); the others become valued
        triplets drawn with the round's probabilities."""
        trip, p = self.valued
        neg, ok = self.neg.sample(u, 1)
        replace = torch.rand(len(u), generator=self.neg.gen) >= self.s.uniform_mix  # [B]
        k = int(replace.sum())
        if k:
            pick = trip[torch.multinomial(p, k, replacement=True, generator=self.neg.gen)]  # [k, 3]
            u, pos, neg, ok = u.clone(), pos.clone(), neg.clone(), ok.clone()
            u[replace], pos[replace], neg[replace, 0] = pick[:, 0], pick[:, 1], pick[:, 2]
            ok[replace] = True  # valued triplets were drawn as true negatives
        return u, pos, neg, ok, None


def summary(history: list[dict]) -> dict:
    """metrics.json keys of a Shapley run from the fit history's `shapley` records: rounds, and
    the mean over rounds of TIP's training and held-out R^2, v(N) - v(empty) and the share of
    positive values."""
    rounds = [r["shapley"] for r in history if "shapley" in r]
    out = {"shapley/rounds": len(rounds)}
    for key in ("tip_r2", "tip_r2_heldout", "v_gain", "phi_positive"):
        vals = [r[key] for r in rounds if key in r and np.isfinite(r[key])]
        if vals:
            out[f"shapley/{key}"] = float(np.mean(vals))
    return out

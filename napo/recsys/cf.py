"""Collaborative-filtering backbones (MF, LightGCN) and their losses (BPR, SSM, BSL, PSL).

Backbones map nothing to (user table [U, d], item table [I, d]); a score is a dot product
(BPR) or a cosine (the softmax family) of a user and an item vector.

Temperature convention (ONE for every loss here): tau divides the *raw cosine* difference,
    SSM: log sum_j exp((c_uj - c_ui) / tau).
The PSL paper writes f = cos / 2 and sigma(d)^(1/tau_paper) with d = f_uj - f_ui, so
tau_paper = tau / 2 (the PSL paper's tau 0.1 is tau 0.2 here); with sigma = exp, PSL at tau
is SSM at tau. BSL's tau1, tau2 are raw-cosine temperatures too (IR-Benchmark form).

Every loss takes scores of one positive per row, pos [B], and of K sampled negatives, neg [B, K],
with an optional neg_mask [B, K] (False = drop that negative, e.g. an accidental hit), and
returns the mean over rows (or a weighted mean with `weight` [B]).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("MF", "LightGCN")
LOSSES = ("bpr", "ssm", "bsl", "psl")
PSL_ACTIVATIONS = ("tanh", "atan", "relu", "exp")
_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# backbones


class MF(nn.Module):
    """Matrix factorisation: user and item embedding tables, N(0, init_std^2) initialised."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64, init_std: float = 0.1):
        super().__init__()
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.user = nn.Parameter(torch.randn(num_users, dim) * init_std)
        self.item = nn.Parameter(torch.randn(num_items, dim) * init_std)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [U, d], items [I, d]): the vectors that are scored."""
        return self.user, self.item


def normalized_adjacency(user: np.ndarray, item: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """Symmetric normalisation of the bipartite graph, D^-1/2 A D^-1/2, as a sparse
    [U + I, U + I] tensor. A has a 1 at (u, U + i) and (U + i, u) for every training pair."""
    n = num_users + num_items
    rows = np.concatenate([user, item + num_users])
    cols = np.concatenate([item + num_users, user])
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1)), 0.0)
    vals = inv_sqrt[rows] * inv_sqrt[cols]
    idx = torch.from_numpy(np.stack([rows, cols])).long()
    return torch.sparse_coo_tensor(idx, torch.from_numpy(vals).float(), (n, n), check_invariants=False).coalesce()


class LightGCN(MF):
    """LightGCN (He et al. 2020): E^(l+1) = A_hat E^(l) with A_hat = D^-1/2 A D^-1/2, no weights
    and no nonlinearity; readout = mean over layers 0..L, so L = 0 is MF."""

    def __init__(self, num_users: int, num_items: int, adjacency: torch.Tensor, dim: int = 64,
                 num_layers: int = 2, init_std: float = 0.1):
        super().__init__(num_users, num_items, dim, init_std)
        self.num_layers = num_layers
        self.register_buffer("adjacency", adjacency, persistent=False)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.cat([self.user, self.item])  # [U + I, d]
        total = e
        for _ in range(self.num_layers):
            e = torch.sparse.mm(self.adjacency, e)
            total = total + e
        out = total / (self.num_layers + 1)
        return out[: self.num_users], out[self.num_users:]


def build_backbone(name: str, num_users: int, num_items: int, train_user: np.ndarray,
                   train_item: np.ndarray, dim: int, num_layers: int, init_std: float) -> MF:
    if name == "MF":
        return MF(num_users, num_items, dim, init_std)
    if name == "LightGCN":
        adj = normalized_adjacency(train_user, train_item, num_users, num_items)
        return LightGCN(num_users, num_items, adj, dim, num_layers, init_std)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


# ---------------------------------------------------------------------------------------------
# losses (pure functions of scores)


def _mean(per_row: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=1e-12)


def _masked(x: torch.Tensor, neg_mask: torch.Tensor | None) -> torch.Tensor:
    return x if neg_mask is None else x.masked_fill(~neg_mask, _NEG_INF)


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """BPR (Rendle et al. 2009): -log sigmoid(s_ui - s_uj) = softplus(s_uj - s_ui), averaged over
    the K negatives of a row (masked ones dropped). pos [B], neg [B, K] dot-product scores."""
    terms = F.softplus(neg - pos[:, None])  # [B, K]
    w = torch.ones_like(terms) if neg_mask is None else neg_mask.float()
    per_row = (terms * w).sum(1) / w.sum(1).clamp(min=1.0)  # [B]
    return _mean(per_row, weight)


def ssm_loss(pos: torch.Tensor, neg: torch.Tensor, tau: float, neg_mask: torch.Tensor | None = None,
             include_positive: bool = False, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled softmax over cosines: log sum_{j in N_u} exp((c_uj - c_ui) / tau)
    = -log[exp(c_ui / tau) / sum_j exp(c_uj / tau)] (negatives only in the denominator, as both
    official codes do). With include_positive the positive joins the denominator:
    log(1 + sum_j exp((c_uj - c_ui) / tau)). pos [B], neg [B, K] cosines."""
    logits = _masked((neg - pos[:, None]) / tau, neg_mask)  # [B, K]
    if include_positive:
        logits = torch.cat([torch.zeros_like(pos)[:, None], logits], 1)  # [B, 1 + K]
    return _mean(torch.logsumexp(logits, 1), weight)


def bsl_loss(pos: torch.Tensor, neg: torch.Tensor, tau1: float, tau2: float,
             neg_mask: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bilateral softmax (Wu et al. 2024, IR-Benchmark form):
    -c_ui / tau1 + (tau2 / tau1) log sum_j exp(c_uj / tau2). tau1 = tau2 gives SSM."""
    neg_part = torch.logsumexp(_masked(neg / tau2, neg_mask), 1)  # [B]
    return _mean(-pos / tau1 + (tau2 / tau1) * neg_part, weight)


def psl_sigma(d: torch.Tensor, activation: str) -> torch.Tensor:
    """The surrogate of the Heaviside step on d in [-1, 1]: tanh(d) + 1, atan(d) + 1,
    relu(d + 1), or exp(d) (which recovers SSM)."""
    if activation == "tanh":
        return torch.tanh(d) + 1
    if activation == "atan":
        return torch.atan(d) + 1
    if activation == "relu":
        return F.relu(d + 1)
    if activation == "exp":
        return torch.exp(d)
    raise ValueError(f"unknown PSL activation {activation!r}; choose one of {', '.join(PSL_ACTIVATIONS)}")


def psl_loss(pos: torch.Tensor, neg: torch.Tensor, tau: float, activation: str = "tanh",
             neg_mask: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise softmax (Yang et al. 2024): log sum_j sigma(d_uij)^(1 / tau_paper) with
    d_uij = (c_uj - c_ui) / 2 (half cosines, in [-1, 1]) and tau_paper = tau / 2, i.e.
    log sum_j exp(2 log sigma(d_uij) / tau). The temperature is outside sigma, as in the paper.
    sigma is clamped at 1e-12 (relu is 0 at d = -1, where the log would be -inf)."""
    d = (neg - pos[:, None]) / 2  # [B, K]
    logits = _masked(2.0 * torch.log(psl_sigma(d, activation).clamp(min=1e-12)) / tau, neg_mask)
    return _mean(torch.logsumexp(logits, 1), weight)


def cf_loss(name: str, pos: torch.Tensor, neg: torch.Tensor, *, tau: float, tau2: float,
            activation: str, include_positive: bool = False, neg_mask: torch.Tensor | None = None,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch by name: bpr | ssm | bsl (tau1 = tau, tau2) | psl (tau, activation)."""
    if name == "bpr":
        return bpr_loss(pos, neg, neg_mask, weight)
    if name == "ssm":
        return ssm_loss(pos, neg, tau, neg_mask, include_positive, weight)
    if name == "bsl":
        return bsl_loss(pos, neg, tau, tau2, neg_mask, weight)
    if name == "psl":
        return psl_loss(pos, neg, tau, activation, neg_mask, weight)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


# ---------------------------------------------------------------------------------------------
# negatives


class UniformNegatives:
    """Uniform negatives that avoid the user's training items.

    Draws K items per row uniformly, redraws the ones that hit a training item of the user up to
    `retries` times, and returns a mask that drops whatever still hits (rare: 1 - density^4).
    Membership: sorted keys user * I + item, and the users' training items in CSR form
    (indptr [U + 1], indices [T]) for the shared draw.
    """

    def __init__(self, train_user: np.ndarray, train_item: np.ndarray, num_items: int,
                 generator: torch.Generator, retries: int = 3):
        self.num_items = num_items
        order = np.lexsort((train_item, train_user))
        num_users = int(train_user.max()) + 1 if len(train_user) else 0
        self.indptr = torch.from_numpy(np.r_[0, np.cumsum(np.bincount(train_user, minlength=num_users))])
        self.indices = torch.from_numpy(train_item[order].astype(np.int64))
        self.keys = torch.from_numpy(np.unique(train_user.astype(np.int64) * num_items + train_item))
        self.gen = generator
        self.retries = retries

    def _pairs(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row [P], item [P]): every training item of every row's user."""
        start, stop = self.indptr[users], self.indptr[users + 1]
        sizes = stop - start
        row = torch.repeat_interleave(torch.arange(len(users)), sizes)
        offset = torch.arange(int(sizes.sum())) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
        return row, self.indices[torch.repeat_interleave(start, sizes) + offset]

    def is_train(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [B], items [B, K] -> bool [B, K]: is items[b, k] a training item of users[b]?
        (binary search of user * I + item in the sorted training keys)"""
        q = users[:, None] * self.num_items + items  # [B, K]
        pos = torch.searchsorted(self.keys, q).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == q

    def sample(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """users [B] -> (negatives [B, K] item ids, mask [B, K], True = a true negative)."""
        neg = torch.randint(self.num_items, (len(users), k), generator=self.gen)
        for _ in range(self.retries):
            hit = self.is_train(users, neg)
            if not bool(hit.any()):
                break
            neg[hit] = torch.randint(self.num_items, (int(hit.sum()),), generator=self.gen)
        return neg, ~self.is_train(users, neg)

    def sample_shared(self, users: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One set of K uniform items for the whole batch (scored by a [B, d] x [d, K] matmul
        instead of a [B, K, d] gather): users [B] -> (negatives [K], mask [B, K])."""
        neg = torch.randint(self.num_items, (k,), generator=self.gen)
        slot = torch.full((self.num_items,), -1, dtype=torch.long)
        slot[neg] = torch.arange(k)  # a duplicated draw keeps one slot; fix the others below
        row, item = self._pairs(users)
        mask = torch.ones(len(users), k, dtype=torch.bool)
        s = slot[item]
        mask[row[s >= 0], s[s >= 0]] = False
        dup = slot[neg] != torch.arange(k)  # later copies of a duplicated draw
        if bool(dup.any()):
            mask[:, dup] = mask[:, slot[neg[dup]]]
        return neg, mask

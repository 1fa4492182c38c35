"""What the trainer logs per batch, and over which rows (docs/reproduction.md, "Logged metrics").

Two families, so that curves compare with the reference code's AND say what the pool does:

- ``rewards/*`` and ``logps/*``: the NAPO / S-DPO reference code's names with its meanings:
  over each example's OWN negatives (never the borrowed ones), and over the LOCAL batch (the
  reference logs rank 0's micro-batch; our main process logs its own rows).
- ``pool/*`` (the same quantities over the whole negative pool, borrowed items included) and
  ``napo/*`` (pool size, shared fraction, gamma_t, M_t, M_bar): means over the GLOBAL batch.

Each value is (per-row value [B], per-row weight [B] or None): the logged mean is
sum(value) / sum(weight) over the rows (a plain mean when the weight is None), so the trainer can
gather rows across processes first where the key is global.
"""

from __future__ import annotations

import torch
from torch import Tensor

from napo.losses import PreferenceRewards, preference_rewards
from napo.sharing import NegativePool

Stat = tuple[Tensor, Tensor | None]


def _mean_over_negatives(rewards: PreferenceRewards, values: Tensor) -> Stat:
    """(per-row sum over the real negatives, their count): a mean over every real negative."""
    return torch.where(rewards.mask, values, 0.0).sum(-1), rewards.mask.float().sum(-1)


@torch.no_grad()
def batch_metrics(chosen: Tensor, ref_chosen: Tensor | None, pool: NegativePool, gamma, *, beta: float,
                  margin_state: dict | None = None) -> tuple[dict[str, Stat], dict[str, Stat]]:
    """(local stats, global stats) of one batch; see the module docstring.

    Args:
        chosen: [B] policy log-probs of the positives; ref_chosen: [B] or None (reference-free).
        pool: the batch's ``NegativePool`` (own K negatives first; logps, mask, shared, extras "ref").
        gamma: the margin, a float, 0-d or [B] tensor. beta: the loss's beta.
        margin_state: ``DynamicMargin.last`` ({"m_t", "m_bar"}) or None.
    """
    k = pool.num_own
    logps, ref = pool.logps.detach(), pool.extras.get("ref")
    chosen = chosen.detach()
    own = preference_rewards(chosen, logps[:, :k], ref_chosen, None if ref is None else ref[:, :k], beta=beta,
                             rejected_mask=pool.mask[:, :k])
    whole = preference_rewards(chosen, logps, ref_chosen, ref, beta=beta, rejected_mask=pool.mask)
    local = {
        "rewards/chosen": (own.chosen, None),
        "rewards/rejected": _mean_over_negatives(own, own.rejected),
        "rewards/margins": (own.margins, None),
        "rewards/accuracies": (own.accuracies, None),
        "logps/chosen": (chosen, None),
        "logps/rejected": _mean_over_negatives(own, logps[:, :k]),
    }
    maskf = whole.mask.float()
    gamma_rows = gamma.detach().float().expand_as(chosen) if torch.is_tensor(gamma) else torch.full_like(chosen, gamma)
    stats = {
        "pool/rewards/rejected": _mean_over_negatives(whole, whole.rejected),
        "pool/rewards/margins": (whole.margins, None),
        "pool/rewards/accuracies": (whole.accuracies, None),
        "pool/logps/rejected": _mean_over_negatives(whole, logps),
        "napo/pool_size": (maskf.sum(-1), None),
        "napo/shared_fraction": ((pool.shared & whole.mask).float().sum(-1), maskf.sum(-1)),
        "napo/gamma": (gamma_rows, None),
    }
    for name in ("m_t", "m_bar"):  # the margin's inputs (the same on every rank)
        if margin_state and margin_state.get(name) is not None:
            stats[f"napo/{name}"] = (torch.full_like(chosen, margin_state[name]), None)
    return local, stats

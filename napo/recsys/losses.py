"""Training objectives of the id-based recommenders (pure tensor math).

All take the user vectors h [B, d] and the item-vector table E [num_items, d]; s(i) = <h, E_i>.
- full cross-entropy: -log softmax_i(s)[target] over the whole catalogue;
- BCE with sampled negatives: -log sigma(s(pos)) - mean_k log(1 - sigma(s(neg_k)));
- sampled softmax: -log softmax over [pos, neg_1..neg_K] of s - log_q (logQ correction,
  Yi et al. 2019: subtracting the log proposal probability makes the sampled softmax an
  unbiased-in-the-limit estimate of the full one).
A sampled negative equal to the positive ("accidental hit") is masked out of every loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bce", "sampled_softmax")


def full_ce_loss(h: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """h [B, d], item_vectors [num_items, d], targets [B] -> scalar mean loss."""
    return F.cross_entropy(h @ item_vectors.T, targets)


def bce_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """pos [B] logits, neg [B, K] logits, neg_mask [B, K] bool (True = use) -> scalar."""
    pos_term = F.softplus(-pos)  # -log sigma(pos)
    neg_terms = F.softplus(neg)  # -log(1 - sigma(neg))
    if neg_mask is None:
        neg_term = neg_terms.mean(dim=1)
    else:
        w = neg_mask.float()
        neg_term = (neg_terms * w).sum(1) / w.sum(1).clamp(min=1.0)
    return (pos_term + neg_term).mean()


def sampled_softmax_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None,
                         pos_log_q: torch.Tensor | None = None,
                         neg_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """pos [B], neg [B, K] logits; optional log proposal probabilities (logQ correction)."""
    if pos_log_q is not None:
        pos = pos - pos_log_q
    if neg_log_q is not None:
        neg = neg - neg_log_q
    if neg_mask is not None:
        neg = neg.masked_fill(~neg_mask, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)  # [B, 1 + K]
    return (torch.logsumexp(logits, dim=1) - pos).mean()

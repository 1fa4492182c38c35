"""Listwise preference losses: DPO, S-DPO and NAPO are settings of one function.

Pure tensor math: no model, no trainer, no I/O. Scores are summed completion log-probs
(``napo.scoring``); B = examples, K = negatives per example (after sharing, the pool size).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _implicit_rewards(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """d = logps - ref_logps, or the raw logps when reference-free. Returns ([B], [B, K])."""
    if (ref_chosen_logps is None) != (ref_rejected_logps is None):
        raise ValueError(
            "pass both ref_chosen_logps and ref_rejected_logps, or neither (reference-free)"
        )
    if rejected_logps.dim() != 2 or chosen_logps.shape != rejected_logps.shape[:1]:
        raise ValueError(
            f"expected chosen_logps [B] and rejected_logps [B, K], got {tuple(chosen_logps.shape)} "
            f"and {tuple(rejected_logps.shape)}"
        )
    if ref_chosen_logps is None:
        return chosen_logps, rejected_logps
    return chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps


def listwise_preference_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    margin: float | Tensor = 0.0,
    rejected_mask: Tensor | None = None,
) -> Tensor:
    """Per-example listwise preference loss, shape [B] (reduce it yourself).

    With d = logps - ref_logps (or d = logps when both refs are None, i.e. reference-free)::

        loss_b = softplus(margin_b + logsumexp_{k : mask[b, k]} beta * (d_rej[b, k] - d_chosen[b]))
               = -log sigmoid(-(margin_b + logsumexp_k ...))

    - K = 1, refs given, margin 0: DPO's sigmoid loss, softplus(beta * (d_rej - d_chosen)).
    - refs given, K > 1: S-DPO (softmax DPO).
    - reference-free, margin = gamma_t (``napo.margin.DynamicMargin``), pool from
      ``napo.sharing``: NAPO, softplus(gamma - beta * c + logsumexp_j beta * l_j).

    Args:
        chosen_logps: [B] summed log-probs of the chosen completion under the policy.
        rejected_logps: [B, K] the same for the K negatives.
        ref_chosen_logps, ref_rejected_logps: [B], [B, K] under the reference, or both None.
        beta: inverse temperature (the papers use 1).
        margin: float or [B]; added inside the softplus (a larger margin asks for a larger gap).
        rejected_mask: [B, K] bool, True = a real negative. Masked slots have no effect on the
            value or the gradient, whatever they hold (even nan/inf). A row with no real negative
            has loss softplus(-inf) = 0 and zero gradient: there is nothing to prefer over.

    Numerically stable for large beta * |logps| (logsumexp, never exp-then-log).
    """
    d_chosen, d_rejected = _implicit_rewards(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (d_rejected - d_chosen.unsqueeze(-1))  # [B, K]
    if rejected_mask is None:
        return F.softplus(margin + torch.logsumexp(logits, dim=-1))  # [B]

    mask = rejected_mask.to(torch.bool)
    empty = ~mask.any(dim=-1)  # [B] rows without any real negative
    # torch.where (not masked_fill on a product) so masked slots get exactly zero gradient even
    # when they hold nan/inf. Empty rows get a finite dummy (0) so logsumexp's backward stays
    # finite; their loss is replaced by 0 below, which also zeroes their gradient.
    neg_inf = torch.full_like(logits, float("-inf"))
    logits = torch.where(mask, logits, neg_inf)
    logits = torch.where(empty.unsqueeze(-1), torch.zeros_like(logits), logits)
    loss = F.softplus(margin + torch.logsumexp(logits, dim=-1))  # [B]
    return torch.where(empty, torch.zeros_like(loss), loss)


class PreferenceRewards(NamedTuple):
    """Implicit rewards r = beta * d for logging (detached). Shapes: chosen [B], rejected [B, K]."""

    chosen: Tensor  # [B]
    rejected: Tensor  # [B, K], masked slots hold 0
    mask: Tensor  # [B, K] bool, True = a real negative

    @property
    def rejected_mean(self) -> Tensor:
        """[B] mean reward of the real negatives (0 for a row without any)."""
        count = self.mask.sum(-1)
        return (self.rejected * self.mask).sum(-1) / count.clamp(min=1)

    @property
    def margins(self) -> Tensor:
        """[B] chosen reward minus the mean reward of the real negatives."""
        return self.chosen - self.rejected_mean

    @property
    def accuracies(self) -> Tensor:
        """[B] float, 1 where the chosen reward beats EVERY real negative (strictly).

        A row without real negatives counts as 1 (vacuously true; its loss is 0 too).
        """
        beaten = (self.chosen.unsqueeze(-1) > self.rejected) | ~self.mask  # [B, K]
        return beaten.all(-1).to(self.chosen.dtype)


@torch.no_grad()
def preference_rewards(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    rejected_mask: Tensor | None = None,
) -> PreferenceRewards:
    """Rewards beta * (logps - ref_logps) (or beta * logps reference-free), detached, for logging.

    Same arguments as ``listwise_preference_loss``; returns ``PreferenceRewards`` with
    chosen [B], rejected [B, K] (masked slots set to 0) and the mask [B, K].
    """
    d_chosen, d_rejected = _implicit_rewards(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    if rejected_mask is None:
        mask = torch.ones_like(d_rejected, dtype=torch.bool)
    else:
        mask = rejected_mask.to(torch.bool)
    rejected = torch.where(mask, beta * d_rejected, torch.zeros_like(d_rejected))
    return PreferenceRewards(chosen=beta * d_chosen, rejected=rejected, mask=mask)

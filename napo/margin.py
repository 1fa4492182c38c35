"""NAPO's dynamic reward margin (the only stateful piece of the loss: a moving average).

    gamma_t = gamma0 * (1 - alpha * (M_t - M_bar))

M_t is the mean auxiliary-recommender score (raw SASRec logits) of the batch's negatives and
M_bar the moving average (momentum m) of M_t over PREVIOUS training batches. Negatives that the
auxiliary model scores higher than usual are more likely to be unlabelled positives, so the
margin shrinks. gamma_t is a constant for the loss (no gradient).

Choices (the paper leaves them open):
- M_bar excludes the current batch: "compare with the usual level" only makes sense against
  the past; including the current batch would damp the signal by (1 - m). On the very first
  batch there is no past; with bias correction M_bar is taken as M_t there (gamma = gamma0).
- Bias correction (as Adam): M_bar = ema / (1 - m^t), so early steps are not pulled to 0.
- M_bar moves only in training, with the GLOBAL mean over all processes (an all_reduce of sum
  and count), so every rank holds the same state and the same gamma in mode "batch".
- mode "user": M_t per example from its own pool ([B] margins); M_bar still tracks the global
  batch mean.
- ``faithful=True`` reproduces the reference code step by step (napo-reference.md 2.4.2): the
  average starts at 0 without bias correction and is updated BEFORE gamma is computed (the
  current batch is already inside M_bar); M_t is each process's LOCAL mean (the trainer passes
  the whole reused pool, duplicates and partners' scores included), the updated average is
  averaged across processes; it also moves in evaluation; no clamp (gamma may go negative); one
  scalar per process (mode "batch" only).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

_MODES = ("batch", "user")


class DynamicMargin:
    """Stateful margin; call it once per step, on every process (it may run a collective).

    Args:
        gamma0: base margin. alpha: sensitivity to the score shift. momentum: m of the average.
        mode: "batch" (one scalar per global batch, the paper) or "user" (one per example).
        bias_correction: divide the average by 1 - m^t.
        clamp_min: lower bound for gamma (0 keeps it a margin), or None for no clamp.
        faithful: reproduce the reference code (see the module docstring); overrides
            bias_correction and clamp_min.
        distributed: average M_t across processes when torch.distributed is initialized.
    """

    def __init__(
        self,
        gamma0: float = 1.0,
        alpha: float = 0.3,
        momentum: float = 0.9,
        mode: str = "batch",
        bias_correction: bool = True,
        clamp_min: float | None = 0.0,
        faithful: bool = False,
        distributed: bool = True,
    ):
        if mode not in _MODES:
            raise ValueError(f"margin mode must be one of {_MODES}, got {mode!r}")
        if faithful and mode != "batch":
            raise ValueError("the reference code's margin is one scalar per batch: use mode 'batch' with faithful")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"margin momentum must be in [0, 1), got {momentum}")
        self.gamma0, self.alpha, self.momentum, self.mode = gamma0, alpha, momentum, mode
        self.faithful = faithful
        self.bias_correction = bias_correction and not faithful
        self.clamp_min = None if faithful else clamp_min
        self.distributed = distributed
        self.training = True
        self.ema = 0.0  # raw exponential average of the global M_t (python float, float64)
        self.steps = 0  # number of updates so far
        self.last: dict[str, float | None] = {}  # M_t and M_bar of the latest call (logged)

    def train(self, mode: bool = True) -> DynamicMargin:
        self.training = mode
        return self

    def eval(self) -> DynamicMargin:
        return self.train(False)

    @property
    def m_bar(self) -> float | None:
        """Average of previous batches' M_t; None before the first update (bias-corrected)."""
        if not self.bias_correction:
            return self.ema
        if self.steps == 0:
            return None
        return self.ema / (1.0 - self.momentum**self.steps)

    def __call__(
        self, neg_scores: Tensor, mask: Tensor | None = None, *, training: bool | None = None
    ) -> Tensor:
        """gamma_t for this batch.

        Args:
            neg_scores: [B, K] auxiliary scores of this process's negatives (pass each negative
                once: the own negatives for mode "batch", the example's pool for mode "user").
            mask: [B, K] bool, True = a real negative; None = all real.
            training: whether to update the average; None = use .train()/.eval().
        Returns:
            gamma: 0-d tensor (mode "batch") or [B] (mode "user"), dtype/device of neg_scores.
        """
        training = self.training if training is None else training
        scores = neg_scores.detach().to(torch.float64)  # [B, K]
        valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        scores = torch.where(valid, scores, torch.zeros_like(scores))  # masked slots may be nan
        row_sum, row_count = scores.sum(-1), valid.sum(-1).to(torch.float64)  # [B], [B]
        if self.faithful:
            return self._reference_code(row_sum.sum().item(), row_count.sum().item(), neg_scores)

        totals = torch.stack([row_sum.sum(), row_count.sum()])  # [2] local sum and count
        if self._distributed():
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        total, count = totals.tolist()
        m_t = total / count if count > 0 else None  # global mean of the batch's negatives

        m_bar = self.m_bar
        if m_bar is None:  # first batch, bias-corrected: no past yet, compare with itself
            m_bar = m_t if m_t is not None else 0.0
        if self.mode == "batch":
            current = torch.tensor(m_t if m_t is not None else m_bar, dtype=torch.float64)
        else:  # per example; rows without negatives sit at the average (gamma = gamma0)
            current = torch.where(row_count > 0, row_sum / row_count.clamp(min=1), m_bar)
        gamma = self.gamma0 * (1.0 - self.alpha * (current - m_bar))
        if self.clamp_min is not None:
            gamma = gamma.clamp(min=self.clamp_min)

        if training and m_t is not None:
            self.ema = self.momentum * self.ema + (1.0 - self.momentum) * m_t
            self.steps += 1
        self.last = {"m_t": m_t, "m_bar": m_bar}
        return gamma.to(device=neg_scores.device, dtype=neg_scores.dtype)

    def _distributed(self) -> bool:
        return self.distributed and dist.is_available() and dist.is_initialized()

    def _reference_code(self, total: float, count: float, like: Tensor) -> Tensor:
        """The reference code's order: update the average with the local M_t, average it across
        processes, then gamma = gamma0 * (1 - alpha * (M_t - M_bar)), unclamped."""
        m_t = total / count if count > 0 else 0.0
        ema = torch.tensor(self.momentum * self.ema + (1.0 - self.momentum) * m_t, dtype=torch.float64)
        if self._distributed():
            dist.all_reduce(ema, op=dist.ReduceOp.SUM)
            ema /= dist.get_world_size()
        self.ema, self.steps = float(ema), self.steps + 1
        self.last = {"m_t": m_t, "m_bar": self.ema}
        gamma = self.gamma0 * (1.0 - self.alpha * (m_t - self.ema))
        return torch.tensor(gamma, device=like.device, dtype=like.dtype)

    def state_dict(self) -> dict:
        """JSON-serializable state for checkpoints (the average and the step count)."""
        return {"ema": self.ema, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.steps = float(state["ema"]), int(state["steps"])

"""What a NaN/inf in training means for a run: the check and the one line (no trainer imports).

Used by the LLM trainers' callback (napo/guards.py) and the recommender loop (napo/recsys/train.py).
"""

from __future__ import annotations

import torch

from data_prep.errors import UserError

MODES = ("stop", "skip")


class NonFiniteError(UserError):
    """Training met a NaN/inf loss or gradient (one line: step and last good checkpoint)."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"nonfinite must be stop or skip, got {mode!r}")
    return mode


def nonfinite_gradients(parameters) -> bool:
    """True when any gradient holds a NaN or inf (one stacked check, a single sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return False
    return bool(torch.stack([(~torch.isfinite(g)).any() for g in grads]).any())


def nonfinite_message(what: str, step: str, last_good) -> str:
    """The one line of ``nonfinite: stop``: what, where, the last good checkpoint, what to do."""
    where = (f"last good checkpoint: {last_good} (resume with --resume_from_checkpoint true)" if last_good
             else "no checkpoint was saved yet")
    return (f"non-finite {what} at {step}; training stopped before the update; {where}; "
            "lower the learning rate, check the data, or set nonfinite: skip")

"""The one fit loop of every recommender without an LLM (sequential models and CF comparators).

What happens around the epochs lives here once: validation every `eval_every` epochs (and at the
last epoch, and when the wall clock runs out), the best-so-far state kept and loaded back at the
end, early stopping after `patience` validations without improvement, the `max_minutes` safety
valve, the thread policy's per-epoch check (napo.threads), the progress bar and the per-epoch
history.

What stopped a run is recorded (`FitResult.stopped_by`: patience, max_epochs or clock). A number
that a clock decided depends on the machine's load, so a run stopped by `max_minutes` says so on
stderr and in metrics.json (`train/stopped_by_clock`); reported configs keep `max_minutes: 0`. What happens inside an epoch (batches, negatives,
losses, resampling) is the caller's `train_epoch(epoch, deadline) -> dict`, so each model
family keeps its own training math and random-number stream.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

STOP_REASONS = ("patience", "max_epochs", "clock")


@dataclass
class FitResult:
    best_epoch: int
    best_valid: float
    epochs_run: int
    wall_s: float
    history: list[dict]
    stopped_by: str = "max_epochs"  # one of STOP_REASONS

    @property
    def stopped_by_clock(self) -> bool:
        return self.stopped_by == "clock"

    def metrics(self) -> dict:
        """The `train/...` keys of metrics.json."""
        return {"train/best_epoch": self.best_epoch, "train/epochs": self.epochs_run,
                "train/fit_seconds": round(self.wall_s, 1), "train/stopped_by": self.stopped_by,
                "train/stopped_by_clock": self.stopped_by_clock}

    def record(self) -> dict:
        """What run.json keeps about the fit (beside the per-epoch history)."""
        return {"best_epoch": self.best_epoch, "epochs": self.epochs_run, "stopped_by": self.stopped_by,
                "stopped_by_clock": self.stopped_by_clock, "fit_seconds": round(self.wall_s, 1)}


@dataclass
class LoopState:
    """Early-stopping bookkeeping: what a resumable checkpoint stores (napo/recsys/state.py)."""

    best: float = -math.inf
    best_epoch: int = 0
    bad: int = 0  # validations since the last improvement
    history: list[dict] = field(default_factory=list)
    epoch: int = 0  # the last finished epoch
    best_state: dict | None = None

    def counters(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "history": self.history}


def run_epochs(model, train_epoch: Callable[[int, float], dict], validate: Callable[[object], float], *,
               max_epochs: int, eval_every: int, patience: int, max_minutes: float = 0.0,
               desc: str = "fit", progress: bool = True, state: LoopState | None = None,
               after_epoch: Callable[[int, LoopState], None] | None = None,
               start: float | None = None, threads=None,
               report: Callable[[int, float], None] | None = None) -> FitResult:
    """Epochs `state.epoch + 1 .. max_epochs` of `train_epoch`, with validation and early stopping.

    train_epoch(epoch, deadline) trains one epoch (deadline: time.time() seconds, inf without a
    cap) and returns the epoch's record (at least `loss`); validate(model) -> the selection score
    (higher is better), called with the model in eval mode. after_epoch(epoch, state) runs after
    each epoch's bookkeeping (checkpoints). threads: a napo.threads.ThreadPolicy (or None),
    re-checked after every epoch. report(epoch, score) is called after every validation (a tuner's
    pruning hook; an exception it raises ends the fit). The best state is loaded back into `model`.
    """
    start = time.time() if start is None else start
    state = state or LoopState()
    deadline = start + max_minutes * 60 if max_minutes else math.inf
    bar = tqdm(range(state.epoch + 1, max_epochs + 1), desc=desc, disable=not progress)
    epoch = state.epoch
    stopped = state.bad >= patience  # a resumed run that had already stopped early
    stopped_by = "patience" if stopped else "max_epochs"
    for epoch in ([] if stopped else bar):
        record = {"epoch": epoch, **train_epoch(epoch, deadline)}
        out_of_time = time.time() > deadline
        if threads is not None:
            record["threads"] = threads.current
            threads.adjust()
        if epoch % eval_every == 0 or out_of_time or epoch == max_epochs:
            model.eval()
            score = validate(model)
            record["valid"] = score
            if report is not None:
                report(epoch, score)
            if score > state.best:
                state.best, state.best_epoch, state.bad = score, epoch, 0
                state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state.bad += 1
        state.history.append(record)
        state.epoch = epoch
        if after_epoch is not None:
            after_epoch(epoch, state)
        bar.set_postfix(loss=f"{record['loss']:.4f}", valid=f"{record.get('valid', float('nan')):.4f}",
                        best=f"{state.best:.4f}@{state.best_epoch}")
        if state.bad >= patience:
            stopped_by = "patience"
            break
        if out_of_time:
            stopped_by = "clock" if epoch < max_epochs else "max_epochs"
            break
    if stopped_by == "clock":
        print(f"warning: max_minutes {max_minutes:g} stopped training at epoch {epoch} of {max_epochs} before "
              "patience did: this run's numbers depend on the machine's load (metrics.json "
              "train/stopped_by_clock); set max_minutes 0 for a reported number", file=sys.stderr)
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    return FitResult(state.best_epoch, state.best, epoch, time.time() - start, state.history, stopped_by)

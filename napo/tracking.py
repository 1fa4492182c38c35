"""Curves kept with every run, whatever ``save_strategy`` and ``report_to`` say.

:class:`LogHistoryCallback` appends every log of the trainer (train losses, ``rewards/*``,
``napo/gamma``, eval metrics) to ``OUT/log_history.jsonl`` as it is logged, so a run killed
midway keeps its curves. At the end of training the trainer's own helpers write the rest:
``Trainer.save_state`` (``OUT/trainer_state.json``, with the whole ``log_history``) and
``Trainer.save_metrics`` (``OUT/train_results.json`` and ``OUT/eval_results.json``, merged into
``OUT/all_results.json``: the final train summary and the last evaluation). Every trainer with
``napo.hub.RunCardMixin`` adds it. Trackers (``report_to: tensorboard``, the ``tracking`` extra)
are transformers' own integrations; this file needs none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

LOG_HISTORY = "log_history.jsonl"
TRAINER_STATE = "trainer_state.json"  # what Trainer.save_state writes
ALL_RESULTS = "all_results.json"  # what Trainer.save_metrics merges into
# Last-logged training values worth a line in the model card (those a run logs).
_CARD_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "napo/pool_size", "napo/gamma", "mean_token_accuracy")


def train_summary(log_history: list[dict]) -> dict:
    """The final train summary (``train_loss``, ``train_runtime``, ...) and the global step."""
    summary = next((dict(h) for h in reversed(log_history) if "train_runtime" in h), {})
    summary.pop("step", None)
    return summary


def last_evaluation(log_history: list[dict]) -> dict:
    """The last evaluation's ``eval_*`` values (empty without evaluation)."""
    entry = next((h for h in reversed(log_history) if any(k.startswith("eval_") for k in h)), {})
    return {k: v for k, v in entry.items() if k.startswith("eval_") or k == "epoch"}


def final_metrics(log_history: list[dict]) -> dict:
    """What a model card shows of a run's results: the train summary's loss, the last logged
    training values (loss, reward accuracy and margin, pool size, margin gamma) and the last
    evaluation. Empty before any log."""
    out: dict = {}
    summary = train_summary(log_history)
    if "train_loss" in summary:
        out["train_loss (mean over the run)"] = summary["train_loss"]
    last = next((h for h in reversed(log_history) if "loss" in h), None)
    if last is not None:
        out.update({f"{k} (last log, step {last.get('step')})": last[k] for k in _CARD_KEYS if k in last})
    out.update({k: v for k, v in last_evaluation(log_history).items() if k != "epoch"})
    return out


class LogHistoryCallback(TrainerCallback):
    """Writes OUT/log_history.jsonl live; at the end, the trainer's state and results files."""

    def __init__(self, trainer=None):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / LOG_HISTORY
        if state.is_world_process_zero and state.global_step == 0 and path.exists():
            path.unlink()  # a fresh run in a reused directory: its curves only (a resume appends)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / LOG_HISTORY, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}, sort_keys=True) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer is None or not state.is_world_process_zero:
            return
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        self.trainer.save_metrics("train", {**train_summary(state.log_history), "global_step": state.global_step})
        evaluation = last_evaluation(state.log_history)
        if evaluation:
            self.trainer.save_metrics("eval", evaluation)
        self.trainer.save_state()

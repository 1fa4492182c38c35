"""Curves kept with every run, whatever ``save_strategy`` and ``report_to`` say.

:class:`LogHistoryCallback` appends every log of the trainer (train losses, ``rewards/*``,
``napo/gamma``, eval metrics) to ``OUT/log_history.jsonl`` as it is logged, so a run killed
midway keeps its curves; at the end of training it writes ``OUT/trainer_state.json`` (transformers'
``TrainerState``, with the whole ``log_history``) and ``OUT/all_results.json`` (the final train
summary and the last evaluation). Trackers (``report_to: tensorboard``, the ``tracking`` extra)
are transformers' own integrations; this file needs none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

LOG_HISTORY = "log_history.jsonl"
TRAINER_STATE = "trainer_state.json"
ALL_RESULTS = "all_results.json"


class LogHistoryCallback(TrainerCallback):
    """Writes OUT/log_history.jsonl live and OUT/trainer_state.json + OUT/all_results.json at the end."""

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
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        state.save_to_json(str(out / TRAINER_STATE))
        results: dict = {}
        for entry in state.log_history:
            if "train_runtime" in entry or any(k.startswith("eval_") for k in entry):
                results.update(entry)  # the last train summary and the last evaluation win
        results.pop("step", None)
        results["global_step"] = state.global_step
        (out / ALL_RESULTS).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")

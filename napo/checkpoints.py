"""Which checkpoint a run resumes from, and how a checkpoint is known to be whole.

A trainer writes ``checkpoint-N/`` file by file (model, optimizer, scheduler, RNG states, trainer
state, the margin's state); a kill in the middle leaves a directory that looks like a checkpoint
but is not. :class:`CompleteMarkerCallback` writes ``napo_complete.json`` into the directory after
everything else (it is added after the trainer's own callbacks, so its ``on_save`` runs last),
atomically (temp file + rename). :func:`resolve_resume` turns ``--resume_from_checkpoint`` into
a directory: ``true`` / ``last`` is the newest *complete* checkpoint of ``output_dir`` (half-written
ones are skipped), a path must be complete, ``false`` / empty means a fresh start.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from transformers import TrainerCallback

from data_prep.errors import UserError

COMPLETE_MARKER = "napo_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LAST = {"true", "last", "yes", "1"}
_NONE = {"", "false", "no", "0", "none"}


class CheckpointError(UserError):
    """A one-line problem with the checkpoint to resume from."""


def write_json_atomic(path: str | os.PathLike, value) -> None:
    """Write JSON to ``path`` through a temp file, fsync and rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# Trainer attributes that are training state but that no upstream checkpoint file holds: TRL's
# SFTTrainer counts the tokens seen for its `num_tokens` metric in `_total_train_tokens`.
COUNTERS = ("_total_train_tokens",)


def mark_complete(directory: str | os.PathLike, step: int, counters: dict | None = None) -> None:
    write_json_atomic(Path(directory) / COMPLETE_MARKER, {"step": int(step), "counters": counters or {}})


def read_counters(directory: str | os.PathLike) -> dict:
    try:
        return dict(json.loads((Path(directory) / COMPLETE_MARKER).read_text()).get("counters", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def is_complete(directory: str | os.PathLike) -> bool:
    """True when the directory's save finished (the marker exists and names its step)."""
    marker = Path(directory) / COMPLETE_MARKER
    try:
        return isinstance(json.loads(marker.read_text()).get("step"), int)
    except (OSError, ValueError, AttributeError):
        return False


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, directory) of every ``checkpoint-N`` in output_dir, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return sorted(found)


def last_complete(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of output_dir, or None."""
    for _, path in reversed(checkpoints(output_dir)):
        if is_complete(path):
            return path
    return None


def resolve_resume(output_dir: str | os.PathLike, value: str | bool | None) -> str | None:
    """``--resume_from_checkpoint`` -> the checkpoint directory to resume from, or None.

    Raises CheckpointError (one line) when ``true`` finds no complete checkpoint or a given path
    is missing or incomplete.
    """
    if value is None or value is False:
        return None
    text = str(value).strip()
    if text.lower() in _NONE:
        return None
    if value is True or text.lower() in _LAST:
        path = last_complete(output_dir)
        if path is None:
            partial = [p.name for _, p in checkpoints(output_dir)]
            found = f" (incomplete: {', '.join(partial)})" if partial else ""
            raise CheckpointError(
                f"--resume_from_checkpoint true: no complete checkpoint in {output_dir}{found}; "
                "start without --resume_from_checkpoint"
            )
        return str(path)
    path = Path(text)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {text}: not a directory; pass a checkpoint-N directory or true")
    if not is_complete(path):
        last = last_complete(path.parent)
        hint = f"resume from {last} (or pass true)" if last else "start without --resume_from_checkpoint"
        raise CheckpointError(
            f"--resume_from_checkpoint {text}: incomplete checkpoint (no {COMPLETE_MARKER}; the save was "
            f"interrupted); {hint}"
        )
    return str(path)


class CompleteMarkerCallback(TrainerCallback):
    """Marks each checkpoint complete once every other callback's ``on_save`` has run, with the
    trainer's ``COUNTERS``; restores those counters at the start of a run resumed from ``resume_from``.

    Add it after the trainer is built (``trainer.add_callback``), so that it runs after the
    trainer's own callbacks (e.g. NAPOTrainer's margin state).
    """

    def __init__(self, trainer=None, resume_from: str | None = None):
        self.trainer, self.resume_from = trainer, resume_from

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is not None and self.resume_from:
            for name, value in read_counters(self.resume_from).items():
                if name in COUNTERS and hasattr(self.trainer, name):
                    setattr(self.trainer, name, value)

    def on_save(self, args, state, control, **kwargs):
        if self.trainer is not None and args.world_size > 1:
            # every rank writes its own RNG state into the checkpoint: mark it once all have
            self.trainer.accelerator.wait_for_everyone()
        if not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if directory.is_dir():
            counters = {name: getattr(self.trainer, name) for name in COUNTERS if hasattr(self.trainer, name)}
            mark_complete(directory, state.global_step, counters)

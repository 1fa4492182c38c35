"""Which checkpoint a run resumes from, how a checkpoint is known to be whole, and whose output_dir it is.

A trainer writes ``checkpoint-N/`` file by file (model, optimizer, scheduler, RNG states, trainer
state, the margin's state); a kill in the middle leaves a directory that looks like a checkpoint
but is not. :class:`CompleteMarkerCallback` writes ``napo_complete.json`` into the directory after
everything else (it is added after the trainer's own callbacks, so its ``on_save`` runs last),
atomically (temp file + rename). :func:`resolve_resume` turns ``--resume_from_checkpoint`` into
a directory: ``true`` / ``last`` is the newest *complete* checkpoint of ``output_dir`` (half-written
ones are skipped), a path must be complete, ``false`` / empty means a fresh start.

Finding checkpoints is transformers' (``trainer_utils.get_last_checkpoint``, ``sort_checkpoints``);
what it cannot say is whether the newest one is whole, hence the marker and :func:`last_complete`.

:func:`claim_output_dir` keeps two runs out of one directory: a new run where another run's files
are refuses to start (one line) unless it resumes or ``overwrite_output_dir`` is set, in which
case those files are removed first, so a killed run never leaves a mix of two runs behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback

from data_prep.errors import UserError

COMPLETE_MARKER = "napo_complete.json"
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
    from transformers.trainer_utils import _re_checkpoint, sort_checkpoints

    if not Path(output_dir).is_dir():
        return []
    found = [Path(p) for p in sort_checkpoints(str(output_dir))]
    return [(int(m.group(1)), p) for p in found if (m := _re_checkpoint.search(p.name))]


def last_complete(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of output_dir, or None. transformers' ``get_last_checkpoint``
    answers first; when its pick is half-written (a kill during the save), older ones are tried."""
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(output_dir).is_dir():
        return None
    newest = get_last_checkpoint(str(output_dir))
    if newest is not None and is_complete(newest):
        return Path(newest)
    for _, path in reversed(checkpoints(output_dir)):
        if is_complete(path):
            return path
    return None


# What a run of the LLM scripts leaves in its output_dir (weights, tokenizer, card, records, curves).
RUN_FILES = ("run.json", "napo_card.json", "README.md", "adapter_config.json", "adapter_model.safetensors",
             "model.safetensors", "model-*.safetensors", "model.safetensors.index.json", "config.json",
             "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "chat_template.jinja", "training_args.bin", "log_history.jsonl", "trainer_state.json",
             "*_results.json", "checkpoint-*", "ref", "runs")
# Any of these says "another run lives here" (a README.md or config.json alone may be the user's).
_RUN_SIGNS = ("run.json", "napo_card.json", "adapter_config.json", "trainer_state.json", "log_history.jsonl",
              "checkpoint-*")


def claim_output_dir(output_dir: str | os.PathLike, *, overwrite: bool, resuming: bool) -> list[Path]:
    """Check that a new run may write into ``output_dir``; returns the previous run's files to remove.

    Raises CheckpointError (one line) when another run's files are there and the run neither
    resumes nor has ``overwrite``. Removes nothing itself: the script removes the returned paths
    (:func:`clear_previous_run`) once the new run is ready to start.
    """
    root = Path(output_dir)
    if resuming or not root.is_dir():
        return []
    signs = sorted({p.name for pattern in _RUN_SIGNS for p in root.glob(pattern)})
    if not signs:
        return []
    if not overwrite:
        raise CheckpointError(
            f"output_dir {output_dir} holds another run ({', '.join(signs[:4])}{', ...' if len(signs) > 4 else ''}): "
            "choose a new output_dir, resume it with --resume_from_checkpoint true, or pass --overwrite_output_dir "
            "true to replace it"
        )
    return sorted({p for pattern in RUN_FILES for p in root.glob(pattern)})


def clear_previous_run(paths: list[Path]) -> None:
    """Remove the files and folders :func:`claim_output_dir` listed."""
    import shutil

    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


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

"""Training-state checkpoints of the recommender loop: resume a killed run exactly.

A checkpoint ``ROOT/epoch-N/`` is written after epoch N (and its validation) into a hidden
temp directory that is renamed into place when complete, so a kill during a save leaves the
previous checkpoint as the newest one, never a half-written ``epoch-N``:

    model.safetensors   the model's state
    best.safetensors    the best-so-far state (absent before the first improvement)
    optim.safetensors   Adam's per-parameter tensors (state.{i}.{name}) and the RNG states:
                        rng/order (the data-order generator), rng/sampler (negative sampling),
                        rng/torch (the global CPU generator: dropout)
    state.json          epoch, best, best_epoch, bad (evaluations without improvement), history,
                        Adam's param_groups and each state entry's non-tensor values

No pickles: tensors in safetensors, everything else in JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_prep.errors import UserError

_EPOCH = re.compile(r"^epoch-(\d+)$")


class RecCheckpointError(UserError):
    """A one-line problem with a recommender training checkpoint."""


def checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, directory) of every complete checkpoint under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _EPOCH.match(p.name)) and (p / "state.json").is_file()]
    return sorted(found)


def last_checkpoint(root: str | os.PathLike) -> Path | None:
    found = checkpoints(root)
    return found[-1][1] if found else None


def resolve(root: str | os.PathLike, value: str | None) -> Path | None:
    """``resume_from_checkpoint`` -> a checkpoint directory: ``true`` = the newest under root."""
    if value is None or str(value).strip().lower() in ("", "false", "no", "none", "0"):
        return None
    if str(value).strip().lower() in ("true", "last", "yes", "1"):
        path = last_checkpoint(root)
        if path is None:
            raise RecCheckpointError(f"resume_from_checkpoint true: no checkpoint in {root}; "
                                     "start without it (and set save_every to write some)")
        return path
    path = Path(value)
    if not (path / "state.json").is_file():
        raise RecCheckpointError(f"resume_from_checkpoint {value}: not a recommender checkpoint (no state.json); "
                                 f"pass true or one of {root}/epoch-N")
    return path


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save(root: str | os.PathLike, epoch: int, *, model, optimizer, generators: dict[str, torch.Generator | None],
         counters: dict, best_state: dict | None, keep: int = 2) -> Path:
    """Write ROOT/epoch-{epoch} atomically (temp dir + rename); keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"epoch-{epoch}", root / f".epoch-{epoch}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
    if best_state is not None:
        save_file(_tensors(best_state), str(tmp / "best.safetensors"))
    opt = optimizer.state_dict()
    tensors, entries = {}, {}
    for index, entry in opt["state"].items():
        entries[str(index)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                entries[str(index)][name] = value
    tensors["rng/torch"] = torch.get_rng_state()
    for name, gen in generators.items():
        if gen is not None:
            tensors[f"rng/{name}"] = gen.get_state()
    save_file(tensors, str(tmp / "optim.safetensors"))
    state = {"epoch": epoch, **counters, "param_groups": opt["param_groups"], "entries": entries}
    with open(tmp / "state.json", "w", encoding="utf-8") as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():  # a rerun over the same epoch: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: str | os.PathLike, *, model, optimizer, generators: dict[str, torch.Generator | None]) -> tuple[dict, dict | None]:
    """Restore model, optimizer and RNG states in place; returns (counters, best_state or None)."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        tensors = load_file(str(path / "optim.safetensors"))
        best = path / "best.safetensors"
        best_state = load_file(str(best)) if best.is_file() else None
    except (OSError, ValueError, RuntimeError) as err:
        raise RecCheckpointError(f"cannot resume from {path}: {' '.join(str(err).split())[:200]}; "
                                 "pick another checkpoint or start afresh") from err
    opt_state = {}
    for index, extra in state["entries"].items():
        entry = dict(extra)
        prefix = f"state.{index}."
        entry.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        opt_state[int(index)] = entry
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    for name, gen in generators.items():
        if gen is not None:
            gen.set_state(tensors[f"rng/{name}"])
    counters = {k: v for k, v in state.items() if k not in ("param_groups", "entries")}
    return counters, best_state

"""Auxiliary recommender outputs for NAPO (contract: docs/contracts.md section 2).

    AUX/meta.json            {"dataset_fingerprint": str, "model": str, "dim": int,
                              "rows": {"train": N, "valid": N, "test": N}}
    AUX/{split}.safetensors  user_vectors float32 [N, dim]   row i = row i of the split
                             candidate_scores float32 [N, C] aligned with the row's `candidates`

    AUX/items.safetensors    item_vectors float32 [num_items, dim]   optional: any item's score
                             for a user is <user_vector, item_vector>, so an item borrowed from
                             another user can be scored against THIS user's history

User vectors are the model's hidden state at the true last history position; candidate scores
are its raw logits for each candidate (= <user_vector, item_vector of the candidate>). Consumers join them to the dataset by row index, so
`load_aux` refuses outputs made from another dataset (fingerprint) or with another row count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from data_prep.errors import UserError


class AuxError(UserError):
    """Auxiliary outputs missing or not matching the dataset."""


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().contiguous()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))


def write_aux(out_dir: str | os.PathLike, split: str, user_vectors: Any, candidate_scores: Any, *,
              dataset_fingerprint: str, model: str) -> Path:
    """Write AUX/{split}.safetensors and add the split to AUX/meta.json.

    out_dir: the aux directory (e.g. OUT/aux). user_vectors [N, d], candidate_scores [N, C]
    (numpy or torch). A meta.json from another dataset, model or dim is an error.
    """
    aux = Path(out_dir)
    aux.mkdir(parents=True, exist_ok=True)
    vectors, scores = _as_tensor(user_vectors), _as_tensor(candidate_scores)
    if vectors.ndim != 2 or scores.ndim != 2 or vectors.shape[0] != scores.shape[0]:
        raise AuxError(f"user_vectors {tuple(vectors.shape)} and candidate_scores {tuple(scores.shape)} "
                       "must be [N, d] and [N, C] with the same N")
    meta_path = aux / "meta.json"
    meta = {"dataset_fingerprint": dataset_fingerprint, "model": model, "dim": int(vectors.shape[1]),
            "rows": {}}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for key in ("dataset_fingerprint", "model", "dim"):
            if old.get(key) != meta[key]:
                raise AuxError(f"{meta_path}: {key} is {old.get(key)!r}, this write has {meta[key]!r}; "
                               "write to an empty directory")
        meta["rows"] = old.get("rows", {})
    tmp = aux / f".{split}.safetensors.tmp"
    save_file({"user_vectors": vectors, "candidate_scores": scores}, str(tmp))
    os.replace(tmp, aux / f"{split}.safetensors")
    meta["rows"][split] = int(vectors.shape[0])
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return aux / f"{split}.safetensors"


def _expected_rows(meta: dict, split: str) -> int | None:
    """Row count of a split from a prepared dataset's meta.json (counts.splits.<split>.examples)."""
    try:
        value = meta["counts"]["splits"][split]["examples"]
    except (KeyError, TypeError):
        return None
    return int(value) if isinstance(value, int) else None


def load_aux(aux_dir: str | os.PathLike, split: str, meta: dict,
             num_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_vectors [N, d], candidate_scores [N, C]) of `split`, float32 tensors.

    meta: the prepared dataset's meta.json (its `fingerprint` must match the one recorded at
    write time). num_rows: the split's row count (defaults to meta["counts"][split] when
    present: counts.splits.<split>.examples). Raises AuxError with one line on any mismatch.
    """
    aux = Path(aux_dir)
    meta_path = aux / "meta.json"
    if not meta_path.exists():
        raise AuxError(f"{meta_path} not found; run recipes/recsys.py on this dataset first")
    aux_meta = json.loads(meta_path.read_text())
    fingerprint = meta.get("fingerprint")
    if aux_meta.get("dataset_fingerprint") != fingerprint:
        raise AuxError(f"{meta_path}: made for dataset fingerprint {aux_meta.get('dataset_fingerprint')!r}, "
                       f"not {fingerprint!r}; retrain the auxiliary model on this dataset")
    path = aux / f"{split}.safetensors"
    if split not in aux_meta.get("rows", {}) or not path.exists():
        raise AuxError(f"{path} not found; the auxiliary run did not write split {split!r}")
    try:
        tensors = load_file(str(path))
        vectors, scores = tensors["user_vectors"], tensors["candidate_scores"]
    except Exception as err:  # safetensors raises its own error type on a truncated/corrupt file
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise AuxError(f"{path}: unreadable ({reason}; truncated or corrupt); rewrite the aux outputs "
                       "with recipes/recsys.py") from None
    n = aux_meta["rows"][split]
    expected = num_rows if num_rows is not None else _expected_rows(meta, split)
    for what, got in (("meta.json rows", n), ("user_vectors", vectors.shape[0]),
                      ("candidate_scores", scores.shape[0])):
        if expected is not None and got != expected:
            raise AuxError(f"{path}: {what} has {got} rows but split {split!r} has {expected}; "
                           "retrain the auxiliary model on this dataset")
        if got != n:
            raise AuxError(f"{path}: {what} has {got} rows but meta.json says {n}; rewrite the aux outputs")
    if vectors.shape[1] != aux_meta.get("dim"):
        raise AuxError(f"{path}: user_vectors have dim {vectors.shape[1]}, meta.json says {aux_meta.get('dim')}")
    return vectors, scores


ITEMS_FILE = "items.safetensors"


def write_item_vectors(out_dir: str | os.PathLike, item_vectors: Any) -> Path:
    """Write AUX/items.safetensors: the auxiliary model's item vectors [num_items, dim]."""
    aux = Path(out_dir)
    aux.mkdir(parents=True, exist_ok=True)
    vectors = _as_tensor(item_vectors)
    tmp = aux / f".{ITEMS_FILE}.tmp"
    save_file({"item_vectors": vectors}, str(tmp))
    os.replace(tmp, aux / ITEMS_FILE)
    return aux / ITEMS_FILE


def load_item_vectors(aux_dir: str | os.PathLike, num_items: int | None = None) -> torch.Tensor:
    """item_vectors [num_items, dim] written beside the user vectors; one-line AuxError if absent."""
    aux = Path(aux_dir)
    path = aux / ITEMS_FILE
    if not path.is_file():
        raise AuxError(f"{path} not found: these aux outputs predate item vectors; rerun napo-recsys "
                       "(needed to score borrowed items against the user's own history)")
    meta = json.loads((aux / "meta.json").read_text()) if (aux / "meta.json").is_file() else {}
    try:
        vectors = load_file(str(path))["item_vectors"]
    except Exception as err:  # a truncated or foreign file: safetensors raises several types
        raise AuxError(f"{path}: cannot read ({str(err).splitlines()[0]}); rerun napo-recsys") from None
    if vectors.ndim != 2 or (meta.get("dim") is not None and vectors.shape[1] != meta["dim"]):
        raise AuxError(f"{path}: item_vectors {tuple(vectors.shape)} do not match dim {meta.get('dim')}")
    if num_items is not None and vectors.shape[0] < num_items:
        raise AuxError(f"{path}: {vectors.shape[0]} item vectors but the dataset has {num_items} items")
    return vectors

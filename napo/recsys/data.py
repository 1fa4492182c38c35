"""Id sequences for the id-based recommenders, built from a prepared dataset's splits.

Conventions used by every model in napo.recsys:
- Item ids are the dataset's dense ids 0..num_items-1. Inside padded sequences an item is stored
  as id + 1, so that 0 is the padding token ("shifted ids").
- Sequences are left-padded (right-aligned): the most recent history item sits in the last
  column. Models also accept right-padded input and re-align it (see `left_align`).
- One row of a split = one next-item example (history -> target), in the split's row order, so
  outputs computed here can be joined back to the dataset by row index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SeqSplit:
    """One split as arrays. seq: int64 [N, L] shifted ids, left-padded; target: int64 [N] ids;
    candidates: int64 [N, C] ids or None (full-ranking-only data)."""

    seq: np.ndarray
    target: np.ndarray
    candidates: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def target_index(self) -> np.ndarray:
        """Column of the target in `candidates`: int64 [N]."""
        if self.candidates is None:
            raise ValueError("this split has no candidate lists")
        match = self.candidates == self.target[:, None]
        if not match.any(axis=1).all():
            row = int(np.nonzero(~match.any(axis=1))[0][0])
            raise ValueError(f"row {row}: the target is not among its candidates")
        return match.argmax(axis=1)

    def take(self, keep) -> SeqSplit:
        """The rows at positions `keep` (e.g. napo.eval.runner.sample_rows), in that order."""
        keep = np.asarray(keep, dtype=np.int64)
        return SeqSplit(self.seq[keep], self.target[keep], None if self.candidates is None else self.candidates[keep])

    def histories(self) -> list[np.ndarray]:
        """Unshifted history ids per row (for exclusion masks)."""
        return [row[row > 0] - 1 for row in self.seq]


def pad_histories(histories: Iterable[Iterable[int]], max_len: int) -> np.ndarray:
    """Histories (oldest first, raw ids) -> int64 [N, max_len] shifted ids, left-padded.

    Longer histories keep their most recent `max_len` items.
    """
    rows = [np.asarray(list(h), dtype=np.int64)[-max_len:] if max_len else np.zeros(0, np.int64)
            for h in histories]
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for i, h in enumerate(rows):
        if h.size:
            if h.min() < 0:
                raise ValueError(f"row {i}: negative item id in history")
            out[i, max_len - h.size:] = h + 1
    return out


def split_from_rows(rows: Mapping[str, list] | object, max_len: int) -> SeqSplit:
    """Build a SeqSplit from columns `history`, `target` and optional `candidates`.

    `rows` may be a datasets.Dataset or a dict of lists (column -> values).
    """
    columns = rows.column_names if hasattr(rows, "column_names") else list(rows.keys())
    seq = pad_histories(rows["history"], max_len)
    target = np.asarray(rows["target"], dtype=np.int64)
    candidates = None
    if "candidates" in columns:
        cand = list(rows["candidates"])
        if cand and all(len(c) == len(cand[0]) for c in cand) and len(cand[0]) > 0:
            candidates = np.asarray(cand, dtype=np.int64)
    return SeqSplit(seq=seq, target=target, candidates=candidates)


def left_align(seq: torch.Tensor) -> torch.Tensor:
    """Re-align a padded batch [B, L] (0 = pad) so that every row ends with its last item.

    Left-padded rows are returned unchanged; right-padded rows (items first, then zeros) are
    rotated. Assumes no padding *inside* a row.
    """
    lengths = (seq > 0).sum(dim=1)  # [B]
    L = seq.shape[1]
    # a row is left-aligned when its last `length` columns are all items
    last_item = torch.where(seq > 0, torch.arange(L, device=seq.device), -1).amax(dim=1)
    shift = (L - 1 - last_item).clamp(min=0)
    shift = torch.where(lengths == 0, torch.zeros_like(shift), shift)
    if not bool(shift.any()):
        return seq
    idx = (torch.arange(L, device=seq.device)[None, :] - shift[:, None]) % L
    return torch.gather(seq, 1, idx)



def load_dataset_dir(path, max_len: int) -> tuple[dict[str, SeqSplit], int, np.ndarray, dict]:
    """Read a prepared dataset directory (docs/contracts.md section 1).

    Returns ({"train", "valid", "test"} -> SeqSplit, num_items, train_counts int64 [num_items],
    meta). Raises data_prep.prepared.PreparedDataError on a bad directory.
    """
    from data_prep.prepared import SPLITS, load_prepared, train_counts

    dd, items, meta = load_prepared(path, text=False)  # ids only: no prompt rendering
    counts = train_counts(items)
    num_items = len(counts)
    splits = {}
    for name in SPLITS:
        ds = dd[name].select_columns(["history", "target", "candidates"])
        splits[name] = split_from_rows(ds.to_dict(), max_len)
    return splits, num_items, counts, meta

"""Candidate lists: the target plus `num_candidates - 1` negatives not in the history.

All samplers take the examples of one split as flat arrays and return an int64 array
`[N, num_candidates]`. Every row holds distinct item ids, contains the target once, and no other
candidate occurs in the row's history.

Samplers
- `llara`: the LLaRA / S-DPO / NAPO protocol, bit-exact. Per example: `random.seed(target)`,
  `random.sample(pool, C - 1)` where pool = catalogue items not in the history and not the target,
  in id order; append the target; `random.seed(target)`; `random.shuffle(list)`.
- `uniform`: negatives uniform over the same pool (numpy, seeded).
- `popularity`: negatives with probability proportional to `train_count ** alpha` (numpy, seeded).
"""

from __future__ import annotations

import random

import numpy as np

from data_prep.errors import DataPrepError

SAMPLERS = ("llara", "uniform", "popularity")


def _excluded(hist_offsets: np.ndarray, hist_values: np.ndarray, target: np.ndarray,
              catalogue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sorted, de-duplicated catalogue positions that may not be negatives.

    Returns `ex [N, W]` (int64, padded with a huge value) and `n_ex [N]`, where W = longest
    history + 1. Positions index into `catalogue` (sorted item ids).
    """
    n = len(target)
    lengths = np.diff(hist_offsets)
    width = int(lengths.max(initial=0)) + 1
    big = np.iinfo(np.int64).max // 4
    ex = np.full((n, width), big, dtype=np.int64)
    ex[:, 0] = positions(catalogue, target)
    if len(hist_values):
        row = np.repeat(np.arange(n), lengths)
        col = np.arange(len(hist_values)) - np.repeat(hist_offsets[:-1], lengths) + 1
        ex[row, col] = positions(catalogue, hist_values)
    ex.sort(axis=1)
    # Duplicates (an item twice in the history, or the target in its own history) count once.
    dup = np.zeros_like(ex, dtype=bool)
    dup[:, 1:] = ex[:, 1:] == ex[:, :-1]
    ex[dup] = big
    ex.sort(axis=1)
    n_ex = (ex < big).sum(axis=1)
    return ex, n_ex


def positions(catalogue: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Index of each id in the sorted catalogue (ids must be in it)."""
    if len(catalogue) and catalogue[-1] - catalogue[0] == len(catalogue) - 1:
        return ids - catalogue[0]  # dense ids: no search needed
    return np.searchsorted(catalogue, ids)


def _pool_to_position(j: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """Map index `j [N, K]` into each row's pool (catalogue minus `ex`, in order) to positions.

    With excluded positions e_0 < e_1 < ... the pool skips each; the number of excluded positions
    before pool element j is #{i : e_i - i <= j}.
    """
    adj = ex - np.arange(ex.shape[1])  # [N, W], non-decreasing per row
    return j + (adj[:, None, :] <= j[:, :, None]).sum(axis=2)


def check_pool_size(n_items: int, n_ex: np.ndarray, num_candidates: int, split: str) -> None:
    pool = n_items - n_ex
    bad = np.flatnonzero(pool < num_candidates - 1)
    if len(bad):
        raise DataPrepError(
            f"{split} row {int(bad[0])}: only {int(pool[bad[0]])} items outside its history for "
            f"{num_candidates - 1} negatives ({n_items} items in the catalogue); "
            "lower --num-candidates or --max-history"
        )


class LlaraSampler:
    """The LLaRA protocol, exact, for a stream of example chunks.

    The indices `random.sample` draws depend only on the seed (the target) and the pool size, and
    the shuffle only on the target; so Python's `random` runs once per distinct
    (target, pool size) pair and once per distinct target, and everything else is numpy.
    Results are cached across chunks in sorted key arrays.
    """

    def __init__(self, catalogue: np.ndarray, num_candidates: int, max_history: int):
        self.catalogue = catalogue
        self.c = num_candidates
        self.k = num_candidates - 1
        self.width = max_history + 2  # n_excluded is in 1..max_history+1
        self.keys = np.zeros(0, dtype=np.int64)
        self.draws = np.zeros((0, self.k), dtype=np.int64)
        self.perm = np.zeros((len(catalogue), num_candidates), dtype=np.int16)
        self.has_perm = np.zeros(len(catalogue), dtype=bool)
        self.rng = random.Random()

    def _fill(self, keys: np.ndarray) -> None:
        new = keys[~np.isin(keys, self.keys)]
        if not len(new):
            return
        rows = np.empty((len(new), self.k), dtype=np.int64)
        n_items = len(self.catalogue)
        for r, key in enumerate(new.tolist()):
            tpos, n_ex = divmod(key, self.width)
            self.rng.seed(int(self.catalogue[tpos]))
            rows[r] = self.rng.sample(range(n_items - n_ex), self.k)
        keys_all = np.concatenate([self.keys, new])
        order = np.argsort(keys_all, kind="stable")
        self.keys = keys_all[order]
        self.draws = np.concatenate([self.draws, rows])[order]

    def _fill_perm(self, tpos: np.ndarray) -> None:
        for p in np.unique(tpos[~self.has_perm[tpos]]).tolist():
            order = list(range(self.c))
            self.rng.seed(int(self.catalogue[p]))
            self.rng.shuffle(order)
            self.perm[p] = order
            self.has_perm[p] = True

    def __call__(self, hist_offsets: np.ndarray, hist_values: np.ndarray, target: np.ndarray,
                 desc: str = "candidates") -> np.ndarray:
        """Candidates `[N, C]` for N examples (offsets may start anywhere)."""
        offs = hist_offsets - hist_offsets[0]
        ex, n_ex = _excluded(offs, hist_values[hist_offsets[0]:hist_offsets[-1]], target,
                             self.catalogue)
        check_pool_size(len(self.catalogue), n_ex, self.c, desc)
        if n_ex.max(initial=0) >= self.width:
            raise ValueError("a history is longer than max_history")
        tpos = positions(self.catalogue, target)
        keys = tpos * self.width + n_ex
        self._fill(np.unique(keys))
        self._fill_perm(tpos)
        idx = self.draws[np.searchsorted(self.keys, keys)]
        neg = self.catalogue[_pool_to_position(idx, ex)]
        unshuffled = np.concatenate([neg, target[:, None]], axis=1)
        return np.take_along_axis(unshuffled, self.perm[tpos].astype(np.int64), axis=1)


def _draw_distinct(rng: np.random.Generator, pool_size: np.ndarray, k: int,
                   weights_cdf: np.ndarray | None, ex: np.ndarray) -> np.ndarray:
    """Draw k distinct pool positions per row, redrawing only the clashing entries.

    Uniform when `weights_cdf` is None; otherwise positions are catalogue positions drawn from the
    cdf and rejected when excluded. Returns catalogue positions `[N, k]`.
    """
    n = len(pool_size)
    if weights_cdf is None:
        j = (rng.random((n, k)) * pool_size[:, None]).astype(np.int64)
        pos = _pool_to_position(j, ex)
    else:
        pos = np.searchsorted(weights_cdf, rng.random((n, k)) * weights_cdf[-1], side="right")
    for _ in range(1000):
        # Within a row keep the first occurrence of each position and redraw the later ones.
        order = np.argsort(pos, axis=1, kind="stable")
        srt = np.take_along_axis(pos, order, axis=1)
        dup_sorted = np.zeros_like(pos, dtype=bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        bad = np.zeros_like(pos, dtype=bool)
        np.put_along_axis(bad, order, dup_sorted, axis=1)
        if weights_cdf is not None:
            bad |= (pos[:, :, None] == ex[:, None, :]).any(axis=2)
        if not bad.any():
            return pos
        r, c = np.nonzero(bad)
        if weights_cdf is None:
            j = (rng.random(len(r)) * pool_size[r]).astype(np.int64)
            pos[r, c] = _pool_to_position(j[:, None], ex[r])[:, 0]
        else:
            pos[r, c] = np.searchsorted(weights_cdf, rng.random(len(r)) * weights_cdf[-1],
                                        side="right")
    raise DataPrepError(
        "popularity sampler: could not draw distinct negatives (too few items with a non-zero "
        "training count); use a smaller --popularity-alpha or --candidate-sampler uniform"
    )


class NumpySampler:
    """`uniform` (weights None) or `popularity` (weights [len(catalogue)] >= 0) negatives.

    One seeded `numpy.random.Generator` runs through the chunks in order, so a run is
    reproducible for a fixed chunk size. The target goes to a uniformly drawn slot.
    """

    def __init__(self, catalogue: np.ndarray, num_candidates: int, max_history: int,
                 seed, weights: np.ndarray | None = None):
        self.catalogue = catalogue
        self.c = num_candidates
        self.width = max_history + 2
        self.rng = np.random.default_rng(seed)
        self.cdf = None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            positive = int((weights > 0).sum())
            if positive < num_candidates + max_history:
                raise DataPrepError(
                    f"popularity sampler: only {positive} items have a non-zero weight, fewer "
                    "than --num-candidates + --max-history; use --candidate-sampler uniform"
                )
            self.cdf = np.cumsum(weights)

    def __call__(self, hist_offsets: np.ndarray, hist_values: np.ndarray, target: np.ndarray,
                 desc: str = "candidates") -> np.ndarray:
        k, n = self.c - 1, len(target)
        offs = hist_offsets - hist_offsets[0]
        ex, n_ex = _excluded(offs, hist_values[hist_offsets[0]:hist_offsets[-1]], target,
                             self.catalogue)
        check_pool_size(len(self.catalogue), n_ex, self.c, desc)
        pos = _draw_distinct(self.rng, len(self.catalogue) - n_ex, k, self.cdf, ex)
        rows = np.concatenate([self.catalogue[pos], target[:, None]], axis=1)
        slot = self.rng.integers(0, self.c, size=n)
        # Move the target (last column) to `slot`, keeping the negatives' order otherwise.
        order = np.broadcast_to(np.arange(self.c), rows.shape).copy()
        order = np.where(order < slot[:, None], order, order - 1)
        order[np.arange(n), slot] = k
        return np.take_along_axis(rows, order, axis=1)

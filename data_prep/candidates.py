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
from tqdm.auto import tqdm

from data_prep.errors import DataPrepError

SAMPLERS = ("llara", "uniform", "popularity")


def _excluded(hist_offsets: np.ndarray, hist_values: np.ndarray, target: np.ndarray,
              catalogue: np.ndarray, max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sorted, de-duplicated catalogue positions that may not be negatives.

    Returns `ex [N, W]` (int64, padded with a huge value) and `n_ex [N]`, where W = max
    history length + 1. Positions index into `catalogue` (sorted item ids).
    """
    n = len(target)
    lengths = np.diff(hist_offsets)
    width = int(lengths.max(initial=0)) + 1
    big = np.iinfo(np.int64).max // 4
    ex = np.full((n, width), big, dtype=np.int64)
    ex[:, 0] = np.searchsorted(catalogue, target)
    if len(hist_values):
        row = np.repeat(np.arange(n), lengths)
        col = np.arange(len(hist_values)) - np.repeat(hist_offsets[:-1], lengths) + 1
        ex[row, col] = np.searchsorted(catalogue, hist_values)
    ex.sort(axis=1)
    # Duplicates (an item twice in the history, or the target in its own history) count once.
    dup = np.zeros_like(ex, dtype=bool)
    dup[:, 1:] = ex[:, 1:] == ex[:, :-1]
    ex[dup] = big
    ex.sort(axis=1)
    n_ex = (ex < big).sum(axis=1)
    return ex, n_ex


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


def llara_candidates(hist_offsets, hist_values, target, catalogue, num_candidates: int,
                     max_history: int, chunk: int = 200_000, desc: str = "candidates",
                     quiet: bool = False) -> np.ndarray:
    """The LLaRA protocol, exact. Python's `random` is only called once per distinct
    (target, pool size) pair: the drawn pool indices depend on nothing else, so they are cached
    and mapped to item ids with numpy."""
    k = num_candidates - 1
    n = len(target)
    out = np.empty((n, num_candidates), dtype=np.int64)
    sample_cache: dict[tuple[int, int], list[int]] = {}
    shuffle_cache: dict[int, list[int]] = {}
    rng = random.Random()
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", leave=False,
                      disable=quiet):
        stop = min(start + chunk, n)
        offs = hist_offsets[start:stop + 1]
        ex, n_ex = _excluded(offs - offs[0], hist_values[offs[0]:offs[-1]], target[start:stop],
                             catalogue, max_history)
        pool_size = len(catalogue) - n_ex
        check_pool_size(len(catalogue), n_ex, num_candidates, desc)
        tgt = target[start:stop]
        idx = np.empty((stop - start, k), dtype=np.int64)
        perm = np.empty((stop - start, num_candidates), dtype=np.int64)
        # Unique (target, pool size) pairs: the only per-row Python work left.
        keys = np.stack([tgt, pool_size], axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        u_idx = np.empty((len(uniq), k), dtype=np.int64)
        u_perm = np.empty((len(uniq), num_candidates), dtype=np.int64)
        for u, (t, size) in enumerate(uniq.tolist()):
            got = sample_cache.get((t, size))
            if got is None:
                rng.seed(t)
                got = rng.sample(range(size), k)
                sample_cache[(t, size)] = got
            u_idx[u] = got
            p = shuffle_cache.get(t)
            if p is None:
                p = list(range(num_candidates))
                rng.seed(t)
                rng.shuffle(p)
                shuffle_cache[t] = p
            u_perm[u] = p
        idx[:] = u_idx[inverse]
        perm[:] = u_perm[inverse]
        neg = catalogue[_pool_to_position(idx, ex)]
        unshuffled = np.concatenate([neg, tgt[:, None]], axis=1)
        out[start:stop] = np.take_along_axis(unshuffled, perm, axis=1)
    return out


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


def numpy_candidates(hist_offsets, hist_values, target, catalogue, num_candidates: int,
                     max_history: int, seed: int, weights: np.ndarray | None = None,
                     chunk: int = 200_000, desc: str = "candidates", quiet: bool = False) -> np.ndarray:
    """`uniform` (weights None) or `popularity` (weights [len(catalogue)] >= 0) sampler.

    The target is put at a seeded random slot among the candidates.
    """
    k = num_candidates - 1
    n = len(target)
    rng = np.random.default_rng(seed)
    out = np.empty((n, num_candidates), dtype=np.int64)
    cdf = None
    if weights is not None:
        cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        if int((np.asarray(weights) > 0).sum()) < num_candidates + max_history:
            raise DataPrepError(
                f"popularity sampler: only {int((np.asarray(weights) > 0).sum())} items have a "
                f"non-zero weight, fewer than --num-candidates + --max-history; use "
                "--candidate-sampler uniform"
            )
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", leave=False,
                      disable=quiet):
        stop = min(start + chunk, n)
        offs = hist_offsets[start:stop + 1]
        ex, n_ex = _excluded(offs - offs[0], hist_values[offs[0]:offs[-1]], target[start:stop],
                             catalogue, max_history)
        check_pool_size(len(catalogue), n_ex, num_candidates, desc)
        pos = _draw_distinct(rng, len(catalogue) - n_ex, k, cdf, ex)
        neg = catalogue[pos]
        slot = rng.integers(0, num_candidates, size=stop - start)
        rows = np.concatenate([neg, target[start:stop, None]], axis=1)
        # Move the target (last column) to `slot`, keeping the negatives' order otherwise.
        order = np.broadcast_to(np.arange(num_candidates), rows.shape).copy()
        order = np.where(order < slot[:, None], order, order - 1)
        order[np.arange(stop - start), slot] = k
        out[start:stop] = np.take_along_axis(rows, order, axis=1)
    return out

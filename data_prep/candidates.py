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

import math
import random

import numpy as np

from data_prep.errors import DataPrepError

SAMPLERS = ("llara", "uniform", "popularity")


def _excluded(hist_offsets: np.ndarray, hist_values: np.ndarray, target: np.ndarray,
              catalogue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row sorted, de-duplicated catalogue positions that may not be negatives.

    Returns `ex [N, W]` (int32 for catalogues below 2**31 items, else int64; padded with the
    dtype's largest value) and `n_ex [N]`, where W = longest history + 1. Positions index into
    `catalogue` (sorted item ids).
    """
    n = len(target)
    lengths = np.diff(hist_offsets)
    width = int(lengths.max(initial=0)) + 1
    dtype = np.int32 if len(catalogue) < np.iinfo(np.int32).max else np.int64
    big = np.iinfo(dtype).max
    ex = np.full((n, width), big, dtype=dtype)
    ex[:, 0] = positions(catalogue, target)
    if len(hist_values):
        row = np.repeat(np.arange(n), lengths)
        col = np.arange(1, len(hist_values) + 1) - (hist_offsets[:-1] - hist_offsets[0])[row]
        ex[row, col] = positions(catalogue, hist_values)
    ex.sort(axis=1)
    # Duplicates (an item twice in the history, or the target in its own history) count once.
    dup = np.zeros_like(ex, dtype=bool)
    dup[:, 1:] = ex[:, 1:] == ex[:, :-1]
    if dup.any():
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
    before pool element j is #{i : e_i - i <= j}. Returns int64 positions.
    """
    top = int(j.max(initial=-1))
    small = top < np.iinfo(np.int32).max - ex.shape[1]  # int32 halves the memory traffic
    jj = j.astype(np.int32) if small else j.astype(np.int64)
    # Counted one [N, K] comparison per excluded column (cheaper than an [N, K, W] array), into
    # a byte counter; padding columns (every row past its exclusions) end the loop.
    count = np.zeros(j.shape, dtype=np.uint8 if ex.shape[1] < 256 else np.int32)
    hit = np.empty(j.shape, dtype=bool)
    for col in range(ex.shape[1]):
        a = ex[:, col].astype(np.int64) - col
        if not (a <= top).any():
            break
        np.less_equal(np.minimum(a, top + 1).astype(jj.dtype)[:, None], jj, out=hit)
        if count.dtype == np.uint8:
            count += hit.view(np.uint8)
        else:
            count += hit
    return jj.astype(np.int64) + count


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
    the shuffle only on the target; so both are made once per distinct (target, pool size) pair,
    by replaying `random` in numpy from each target's first Mersenne Twister words (`mt_words`,
    `replay_sample`, `replay_shuffle`; Python's `random` itself for pools small enough for
    `random.sample`'s other branch). Draws are cached across chunks in sorted key arrays, already
    in shuffled order; everything per row is numpy.
    """

    def __init__(self, catalogue: np.ndarray, num_candidates: int, max_history: int):
        self.catalogue = catalogue
        self.c = num_candidates
        self.k = num_candidates - 1
        self.width = max_history + 2  # n_excluded is in 1..max_history+1
        self.keys = np.zeros(0, dtype=np.int64)
        # Per key: the drawn pool indices already in shuffled order, -1 where the target goes.
        self.draws = np.zeros((0, self.c), dtype=np.int32 if len(catalogue) < 2**31 - 1 else np.int64)
        self.perm = np.zeros((len(catalogue), num_candidates), dtype=np.int16)
        self.has_perm = np.zeros(len(catalogue), dtype=bool)
        self.rng = random.Random()

    def _fill(self, keys: np.ndarray) -> None:
        new = keys[~np.isin(keys, self.keys)]
        if not len(new):
            return
        rows = np.empty((len(new), self.k), dtype=np.int64)
        n_items = len(self.catalogue)
        tpos, n_ex = np.divmod(new, self.width)
        pool = n_items - n_ex
        done = np.zeros(len(new), dtype=bool)
        # Pools larger than random.sample's set-size threshold take its rejection branch, which
        # numpy replays from the raw Mersenne Twister words (see mt_words / replay_sample).
        big = np.flatnonzero(pool > _sample_setsize(self.k))
        for a in range(0, len(big), _REPLAY_ROWS):
            part = big[a:a + _REPLAY_ROWS]
            seeds, inverse = np.unique(tpos[part], return_inverse=True)
            words = mt_words(self.rng, self.catalogue[seeds].tolist(), _words_for(self.k))
            got, ok = replay_sample(words[inverse], pool[part], self.k)
            rows[part[ok]] = got[ok]
            done[part[ok]] = True
        for r in np.flatnonzero(~done).tolist():  # small pools, or a stream too short: Python
            self.rng.seed(int(self.catalogue[tpos[r]]))
            rows[r] = self.rng.sample(range(int(pool[r])), self.k)
        # Apply each target's shuffle now, so a lookup gives the final order.
        self._fill_perm(tpos)
        unshuffled = np.concatenate([rows, np.full((len(new), 1), -1, dtype=np.int64)], axis=1)
        shuffled = np.take_along_axis(unshuffled, self.perm[tpos].astype(np.int64), axis=1)
        keys_all = np.concatenate([self.keys, new])
        order = np.argsort(keys_all, kind="stable")
        self.keys = keys_all[order]
        self.draws = np.concatenate([self.draws, shuffled.astype(self.draws.dtype)])[order]

    def _fill_perm(self, tpos: np.ndarray) -> None:
        todo = np.unique(tpos[~self.has_perm[tpos]])
        if not len(todo):
            return
        words = mt_words(self.rng, self.catalogue[todo].tolist(), _words_for(self.c))
        perm, ok = replay_shuffle(words, self.c)
        self.perm[todo[ok]] = perm[ok]
        for p in todo[~ok].tolist():  # a stream too short (rare): Python
            order = list(range(self.c))
            self.rng.seed(int(self.catalogue[p]))
            self.rng.shuffle(order)
            self.perm[p] = order
        self.has_perm[todo] = True

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
        idx = self.draws[np.searchsorted(self.keys, keys)]  # [N, C], -1 at the target's slot
        out = self.catalogue[_pool_to_position(idx, ex)]
        slot = idx < 0
        out[slot] = target  # row-major order: one True per row, rows in order
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


# --- Replaying Python's `random` in numpy -------------------------------------------------------
# After `random.seed(s)`, `getrandbits(k)` (k <= 32) is the next 32-bit Mersenne Twister word
# shifted right by 32 - k, and `_randbelow(n)` repeats `getrandbits(n.bit_length())` until the value
# is below n. `random.sample(range(n), k)` with n above a set-size threshold takes k such values,
# redrawing any already taken; `random.shuffle` swaps x[i] with x[randbelow(i + 1)] for
# i = len - 1 .. 1. Given the first words of each seed's stream (one `getrandbits(32 * m)` call),
# both are computed for many seeds at once. The tests check them against `random` itself.

_REPLAY_ROWS = 1 << 15  # keys replayed per batch (bounds the [rows, words] temporaries)


def _sample_setsize(k: int) -> int:
    """`random.sample` keeps a pool list (swap branch) when n <= this, a set otherwise."""
    setsize = 21
    if k > 5:
        setsize += 4 ** math.ceil(math.log(k * 3, 4))
    return setsize


def _words_for(k: int) -> int:
    """Stream words fetched per seed: k values at <= 2 words each on average, plus slack."""
    return 4 * k + 32


def mt_words(rng: random.Random, seeds: list[int], m: int) -> np.ndarray:
    """uint32 [len(seeds), m]: the first m words of `random.seed(s)`'s stream, per seed."""
    chunks = []
    for s in seeds:
        rng.seed(s)
        chunks.append(rng.getrandbits(32 * m).to_bytes(4 * m, "little"))
    return np.frombuffer(b"".join(chunks), dtype="<u4").reshape(len(seeds), m)


def _bit_length(n: np.ndarray) -> np.ndarray:
    bits = np.zeros(n.shape, dtype=np.int64)
    for b in range(64):
        bits += (n >> b) > 0
    return bits


def replay_sample(words: np.ndarray, n: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`random.sample(range(n_r), k)` per row (set branch: n_r above `_sample_setsize(k)`).

    Returns (values [R, k] int64, ok [R]): ok is False where the words ran out before k distinct
    values below n_r came up (the caller then asks `random` itself).
    """
    r_count, m = words.shape
    shift = 32 - _bit_length(n)
    vals = words.astype(np.int64) >> shift[:, None]
    accepted = vals < n[:, None]
    # Rejected words get distinct sentinels (>= n) so they never look like repeats.
    key = np.where(accepted, vals, n[:, None] + np.arange(m))
    order = np.argsort(key, axis=1, kind="stable")  # stable: the earliest repeat sorts first
    srt = np.take_along_axis(key, order, axis=1)
    first_sorted = np.ones((r_count, m), dtype=bool)
    first_sorted[:, 1:] = srt[:, 1:] != srt[:, :-1]
    keep = np.zeros((r_count, m), dtype=bool)
    np.put_along_axis(keep, order, first_sorted, axis=1)
    keep &= accepted
    ok = keep.sum(axis=1) >= k
    where = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # the first k kept, in stream order
    return np.take_along_axis(vals, where, axis=1), ok


def replay_shuffle(words: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The permutation `random.shuffle(list(range(c)))` makes, per row. Returns (perm [R, c],
    ok [R]); ok is False where the words ran out."""
    r_count, m = words.shape
    perm = np.broadcast_to(np.arange(c, dtype=np.int64), (r_count, c)).copy()
    ptr = np.zeros(r_count, dtype=np.int64)
    ok = np.ones(r_count, dtype=bool)
    rows = np.arange(r_count)
    w64 = words.astype(np.int64)
    for i in range(c - 1, 0, -1):
        shift = 32 - (i + 1).bit_length()
        j = np.zeros(r_count, dtype=np.int64)
        todo = rows
        while len(todo):
            ptr_t = ptr[todo]
            short = ptr_t >= m
            ok[todo[short]] = False
            todo, ptr_t = todo[~short], ptr_t[~short]
            val = w64[todo, ptr_t] >> shift
            ptr[todo] = ptr_t + 1
            good = val <= i
            j[todo[good]] = val[good]
            todo = todo[~good]
        a = perm[:, i].copy()
        perm[:, i] = perm[rows, j]
        perm[rows, j] = a
    return perm, ok

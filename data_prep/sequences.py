"""Per-user chronological sequences, sliding windows and train/valid/test splits.

Every interaction whose user has at least `min_history` earlier interactions becomes one example:
its item is the target and the (at most `max_history`) previous items are the history.
All of it is numpy over the sorted interaction arrays; no per-interaction Python loop.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.prepared import SPLITS
from data_prep.sources import Examples

SPLIT_METHODS = ("user", "loo", "time")


def sort_interactions(inter: pd.DataFrame, drop_duplicates: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (user, timestamp, item id): chronological, ties broken by item id.

    Returns user [T], item [T], timestamp [T] (int64). With drop_duplicates, exact duplicate
    (user, item, timestamp) rows - adjacent once sorted - are kept once.
    """
    user = inter["user_id"].to_numpy(np.int64)
    item = inter["item_id"].to_numpy(np.int64)
    ts = inter["timestamp"].to_numpy(np.int64)
    if len(user) == 0:
        return user, item, ts
    # One packed int64 key sorts ~3x faster than a 3-key lexsort; fall back when it won't fit.
    # (Ids are dense and non-negative here.)
    t0 = ts.min()
    t_rel = ts - t0
    bits = [int(x.max()).bit_length() for x in (user, t_rel, item)]
    if sum(bits) <= 63:
        key = (user << (bits[1] + bits[2])) | (t_rel << bits[2]) | item
        del t_rel
        # The key holds the whole row, so sorting the keys (faster than an argsort and three
        # gathers) and unpacking them gives the sorted arrays; equal keys are identical rows.
        key.sort()
        user = key >> (bits[1] + bits[2])
        ts = ((key >> bits[2]) & ((1 << bits[1]) - 1)) + t0
        item = key & ((1 << bits[2]) - 1)
        del key
    else:
        order = np.lexsort((item, ts, user))
        user, item, ts = user[order], item[order], ts[order]
    if drop_duplicates and len(user) > 1:
        keep = np.ones(len(user), dtype=bool)
        keep[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1]) | (item[1:] != item[:-1])
        if not keep.all():
            user, item, ts = user[keep], item[keep], ts[keep]
    return user, item, ts


GATHER_ROWS = 1 << 20  # examples whose histories are gathered at a time


def window_index(user: np.ndarray, min_history: int, max_history: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the sliding-window examples of sorted interactions are, without copying items.

    Returns pos [N] (index of each target in the sorted interactions), h_start [N] (index of
    its first history item; the history is [h_start, pos)), from_end [N] (how many
    interactions of the same user follow the target).
    """
    t = len(user)
    starts_mask = np.ones(t, dtype=bool)
    starts_mask[1:] = user[1:] != user[:-1]
    user_start = np.maximum.accumulate(np.where(starts_mask, np.arange(t), 0))
    ends_mask = np.ones(t, dtype=bool)
    ends_mask[:-1] = starts_mask[1:]
    user_end = np.minimum.accumulate(np.where(ends_mask, np.arange(t), t)[::-1])[::-1]
    rank = np.arange(t) - user_start  # number of earlier interactions of the user
    pos = np.flatnonzero(rank >= min_history)
    h_start = np.maximum(user_start[pos], pos - max_history)
    return pos, h_start, user_end[pos] - pos


def gather(user: np.ndarray, item: np.ndarray, pos: np.ndarray, h_start: np.ndarray) -> Examples:
    """Examples for the windows (pos, h_start) of sorted interactions."""
    lengths = pos - h_start
    offsets = np.zeros(len(pos) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    history = np.empty(int(offsets[-1]), dtype=item.dtype)
    # In row chunks: the gather index of all histories at once would be as large as the histories.
    for a in range(0, len(pos), GATHER_ROWS):
        b = min(a + GATHER_ROWS, len(pos))
        lo, hi = int(offsets[a]), int(offsets[b])
        idx = np.repeat(h_start[a:b] - offsets[a:b], lengths[a:b])
        idx += np.arange(lo, hi)
        history[lo:hi] = item[idx]
    return Examples(user[pos], item[pos], offsets, history)


def windows(user: np.ndarray, item: np.ndarray, min_history: int, max_history: int
            ) -> tuple[Examples, np.ndarray, np.ndarray]:
    """All sliding-window examples of sorted interactions: (examples, pos, from_end)."""
    pos, h_start, from_end = window_index(user, min_history, max_history)
    return gather(user, item, pos, h_start), pos, from_end


def split_labels(method: str, seed: int, *, n_users: int, user: np.ndarray, from_end: np.ndarray,
                 target_time: np.ndarray, all_times: np.ndarray,
                 ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """0/1/2 (train/valid/test) per example.

    - `user`: users are permuted with `numpy.random.default_rng(seed)`; the first 80% go to
      train, the next 10% to valid, the rest to test (all of a user's examples together).
    - `loo`: a user's last interaction is test, the second to last valid, the others train.
    - `time`: global cut-offs at the 80% / 90% quantiles of all interaction times; an example
      goes where its target's time falls.
    """
    if method == "user":
        perm = np.random.default_rng(seed).permutation(n_users)
        n_train = int(n_users * ratios[0])
        n_valid = int(n_users * ratios[1])
        which = np.empty(n_users, dtype=np.int8)
        which[perm[:n_train]] = 0
        which[perm[n_train:n_train + n_valid]] = 1
        which[perm[n_train + n_valid:]] = 2
        return which[user]
    if method == "loo":
        return np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0)).astype(np.int8)
    if method == "time":
        cut1, cut2 = np.quantile(all_times, [ratios[0], ratios[0] + ratios[1]], method="lower")
        return np.where(target_time <= cut1, 0, np.where(target_time <= cut2, 1, 2)).astype(np.int8)
    raise DataPrepError(f"unknown --split '{method}'; choose one of: {', '.join(SPLIT_METHODS)}")


def split_examples(ex: Examples, method: str, seed: int, *, n_users: int, from_end: np.ndarray,
                   target_time: np.ndarray, all_times: np.ndarray) -> dict[str, Examples]:
    """Examples per split (see `split_labels`); row order inside a split is (user, time)."""
    label = split_labels(method, seed, n_users=n_users, user=ex.user_id, from_end=from_end,
                         target_time=target_time, all_times=all_times)
    return {name: ex.take(np.flatnonzero(label == i)) for i, name in enumerate(SPLITS)}


def split_windows(user: np.ndarray, item: np.ndarray, ts: np.ndarray, method: str, seed: int,
                  min_history: int, max_history: int) -> dict[str, Examples]:
    """Sorted interactions -> examples per split, gathering each history once (user ids, targets
    and histories as int32 when the ids fit)."""
    n_users = int(user.max()) + 1 if len(user) else 0
    pos, h_start, from_end = window_index(user, min_history, max_history)
    label = split_labels(method, seed, n_users=n_users, user=user[pos], from_end=from_end,
                         target_time=ts[pos], all_times=ts)
    del from_end
    # Ids that fit are gathered as int32: the histories are the largest arrays of a run.
    if len(user) and max(int(user.max()), int(item.max())) < np.iinfo(np.int32).max:
        user, item = user.astype(np.int32), item.astype(np.int32)
    out = {}
    for i, name in enumerate(SPLITS):
        rows = np.flatnonzero(label == i)
        out[name] = gather(user, item, pos[rows], h_start[rows])
    return out


def clip_presplit(ex: Examples, min_history: int, max_history: int) -> Examples:
    """Presplit examples: drop rows with fewer than `min_history` items, keep the last
    `max_history` items of longer histories."""
    lengths = np.diff(ex.hist_offsets)
    ex = ex.take(np.flatnonzero(lengths >= min_history))
    lengths = np.diff(ex.hist_offsets)
    if len(lengths) == 0 or lengths.max() <= max_history:
        return ex
    new_len = np.minimum(lengths, max_history)
    offsets = np.zeros(len(ex) + 1, dtype=np.int64)
    np.cumsum(new_len, out=offsets[1:])
    start = ex.hist_offsets[1:] - new_len
    gather = np.repeat(start - offsets[:-1], new_len) + np.arange(offsets[-1])
    return Examples(ex.user_id, ex.target, offsets, ex.hist_values[gather])


def prefix_examples(ex: Examples, min_history: int, max_history: int) -> Examples:
    """Presplit rows, one per sequence, -> one row per prefix of each sequence.

    Row r stands for the sequence `history_r + [target_r]` = i1 .. in; it becomes the rows
    (i1 .. i(k-1) -> ik) for every k whose history has at least `min_history` items, each
    history cut to its last `max_history` items: the sliding windows of `windows`, with the
    sequence in place of the user. Rows keep their sequence's user id and come in sequence
    order, then position order; the last row of a sequence is its `clip_presplit` row.
    """
    lo, hi = int(ex.hist_offsets[0]), int(ex.hist_offsets[-1])
    hist = ex.hist_values[lo:hi]
    lengths = np.diff(ex.hist_offsets) + 1  # history + target
    seq = np.repeat(np.arange(len(ex), dtype=np.int64), lengths)
    item = np.empty(int(lengths.sum()), dtype=np.result_type(hist.dtype, ex.target.dtype))
    is_target = np.zeros(len(item), dtype=bool)
    is_target[np.cumsum(lengths) - 1] = True
    item[is_target] = ex.target
    item[~is_target] = hist
    rows, _, _ = windows(seq, item, min_history, max_history)
    return Examples(ex.user_id[rows.user_id], rows.target, rows.hist_offsets, rows.hist_values)


def train_counts(user: np.ndarray, item: np.ndarray, ts: np.ndarray, method: str, seed: int,
                 n_users: int, catalogue_size: int, ratios=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Interactions per item that belong to training data under `method` ([n_items] int64)."""
    if method == "user":
        perm = np.random.default_rng(seed).permutation(n_users)
        is_train = np.zeros(n_users, dtype=bool)
        is_train[perm[: int(n_users * ratios[0])]] = True
        keep = is_train[user]
    elif method == "loo":
        t = len(user)
        last = np.ones(t, dtype=bool)
        last[:-1] = user[1:] != user[:-1]
        second = np.zeros(t, dtype=bool)
        second[:-1] = last[1:] & (user[:-1] == user[1:])
        keep = ~(last | second)
    else:
        cut1 = np.quantile(ts, ratios[0], method="lower")
        keep = ts <= cut1
    return np.bincount(item[keep], minlength=catalogue_size).astype(np.int64)

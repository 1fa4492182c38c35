"""Sequences, sliding windows and splits on hand-made logs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_prep.sequences import (
    clip_presplit,
    sort_interactions,
    split_examples,
    train_counts,
    windows,
)
from data_prep.sources import Examples


def _hist(ex, i):
    return ex.hist_values[ex.hist_offsets[i]:ex.hist_offsets[i + 1]].tolist()


def test_sort_breaks_time_ties_by_item_id():
    inter = pd.DataFrame({"user_id": [1, 0, 0, 0], "item_id": [5, 9, 3, 7], "timestamp": [1, 2, 2, 1]})
    user, item, ts = sort_interactions(inter)
    assert user.tolist() == [0, 0, 0, 1]
    assert item.tolist() == [7, 3, 9, 5]
    assert ts.tolist() == [1, 2, 2, 1]


def test_windows_known_answer():
    # user 0: items 10..15 (6 interactions), user 1: 20, 21 (too short for min_history 2)
    user = np.array([0] * 6 + [1] * 2)
    item = np.array([10, 11, 12, 13, 14, 15, 20, 21])
    ex, pos, from_end = windows(user, item, min_history=2, max_history=3)
    assert ex.target.tolist() == [12, 13, 14, 15]
    assert [_hist(ex, i) for i in range(4)] == [[10, 11], [10, 11, 12], [11, 12, 13], [12, 13, 14]]
    assert pos.tolist() == [2, 3, 4, 5]
    assert from_end.tolist() == [3, 2, 1, 0]
    assert ex.user_id.tolist() == [0, 0, 0, 0]


def test_user_split_is_disjoint_and_8_1_1():
    n_users = 50
    user = np.repeat(np.arange(n_users), 5)
    item = np.tile(np.arange(5), n_users)
    ex, pos, from_end = windows(user, item, 1, 10)
    parts = split_examples(ex, "user", 7, n_users=n_users, from_end=from_end,
                           target_time=pos, all_times=np.arange(len(user)))
    users = {s: set(p.user_id.tolist()) for s, p in parts.items()}
    assert len(users["train"]) == 40 and len(users["valid"]) == 5 and len(users["test"]) == 5
    assert not (users["train"] & users["valid"]) and not (users["train"] & users["test"])
    assert not (users["valid"] & users["test"])
    assert sum(len(p) for p in parts.values()) == len(ex)
    again = split_examples(ex, "user", 7, n_users=n_users, from_end=from_end,
                           target_time=pos, all_times=np.arange(len(user)))
    assert all(np.array_equal(again[s].user_id, parts[s].user_id) for s in parts)


def test_loo_and_time_splits():
    user = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    item = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9])
    ts = np.array([10, 20, 30, 40, 50, 15, 25, 35, 45])
    ex, pos, from_end = windows(user, item, 1, 10)
    loo = split_examples(ex, "loo", 0, n_users=2, from_end=from_end, target_time=ts[pos], all_times=ts)
    assert loo["test"].target.tolist() == [5, 9]
    assert loo["valid"].target.tolist() == [4, 8]
    assert loo["train"].target.tolist() == [2, 3, 7]
    assert _hist(loo["test"], 0) == [1, 2, 3, 4]
    # 9 times; 80% quantile ("lower") = 7th smallest = 40, 90% = 8th = 45
    tim = split_examples(ex, "time", 0, n_users=2, from_end=from_end, target_time=ts[pos], all_times=ts)
    assert tim["train"].target.tolist() == [2, 3, 4, 7, 8]
    assert tim["valid"].target.tolist() == [9]
    assert tim["test"].target.tolist() == [5]


def test_train_counts_per_split_method():
    user = np.array([0, 0, 0, 1, 1, 1])
    item = np.array([0, 1, 2, 0, 2, 3])
    ts = np.arange(6)
    assert train_counts(user, item, ts, "loo", 0, 2, 5).tolist() == [2, 0, 0, 0, 0]
    # 80% "lower" quantile of times 0..5 is 4: the first five interactions are training data
    assert train_counts(user, item, ts, "time", 0, 2, 5).tolist() == [2, 1, 2, 0, 0]


def test_clip_presplit():
    ex = Examples(np.array([0, 0, 1]), np.array([5, 6, 7]), np.array([0, 1, 5, 12]),
                  np.arange(12))
    out = clip_presplit(ex, 2, 3)
    assert out.target.tolist() == [6, 7]
    assert [_hist(out, i) for i in range(2)] == [[2, 3, 4], [9, 10, 11]]


def test_packed_sort_equals_lexsort():
    rng = np.random.default_rng(0)
    for ts_high in (1_000, 2**62):  # packed key fits / falls back to lexsort
        inter = pd.DataFrame({"user_id": rng.integers(0, 50, 5000), "item_id": rng.integers(0, 300, 5000),
                              "timestamp": rng.integers(0, ts_high, 5000)})
        user, item, ts = sort_interactions(inter)
        order = np.lexsort((inter["item_id"], inter["timestamp"], inter["user_id"]))
        assert user.tolist() == inter["user_id"].to_numpy()[order].tolist()
        assert item.tolist() == inter["item_id"].to_numpy()[order].tolist()
        assert ts.tolist() == inter["timestamp"].to_numpy()[order].tolist()


def test_split_windows_equals_windows_then_split():
    from data_prep.sequences import split_windows

    rng = np.random.default_rng(4)
    inter = pd.DataFrame({"user_id": rng.integers(0, 30, 600), "item_id": rng.integers(0, 80, 600),
                          "timestamp": rng.integers(0, 10_000, 600)})
    user, item, ts = sort_interactions(inter)
    for method in ("user", "loo", "time"):
        fast = split_windows(user, item, ts, method, 3, 2, 5)
        ex, pos, from_end = windows(user, item, 2, 5)
        slow = split_examples(ex, method, 3, n_users=30, from_end=from_end, target_time=ts[pos], all_times=ts)
        for s in fast:
            for field in ("user_id", "target", "hist_offsets", "hist_values"):
                assert np.array_equal(getattr(fast[s], field), getattr(slow[s], field))

"""Candidate samplers: the LLaRA protocol against a literal re-implementation, and invariants."""

from __future__ import annotations

import random

import numpy as np
import pytest

from data_prep.candidates import LlaraSampler, NumpySampler, _excluded, _pool_to_position
from data_prep.errors import DataPrepError


def _flat(histories):
    offsets = np.zeros(len(histories) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(h) for h in histories])
    values = np.array([i for h in histories for i in h], dtype=np.int64)
    return offsets, values


def _literal_llara(history, target, catalogue, k):
    """The papers' loop, written out as they describe it."""
    random.seed(target)
    pool = [i for i in catalogue if i not in history and i != target]
    cands = random.sample(pool, k) + [target]
    random.seed(target)
    random.shuffle(cands)
    return cands


def _random_examples(rng, n, catalogue, max_h=10):
    hist, tgt = [], []
    for _ in range(n):
        h = rng.choice(catalogue, size=int(rng.integers(0, max_h + 1)), replace=True).tolist()
        t = int(rng.choice(catalogue))
        if rng.random() < 0.2 and h:  # the target may also occur in its own history
            t = h[0]
        hist.append(h)
        tgt.append(t)
    return hist, np.array(tgt, dtype=np.int64)


@pytest.mark.parametrize("n_items,gaps", [(30, False), (500, False), (300, True)])
def test_llara_matches_literal_protocol(n_items, gaps):
    rng = np.random.default_rng(1)
    catalogue = np.arange(n_items, dtype=np.int64) * (3 if gaps else 1) + (7 if gaps else 0)
    hist, tgt = _random_examples(rng, 400, catalogue)
    offsets, values = _flat(hist)
    sampler = LlaraSampler(catalogue, 20, 10)
    # in chunks, as build() draws them (the sampler's cache carries over between chunks)
    got = np.concatenate([sampler(offsets[a:b + 1], values, tgt[a:b]) for a, b in ((0, 97), (97, 300), (300, 400))])
    want = [_literal_llara(h, int(t), catalogue.tolist(), 19) for h, t in zip(hist, tgt, strict=True)]
    assert got.tolist() == want


def test_pool_to_position_equals_brute_force():
    rng = np.random.default_rng(2)
    n = 50
    hist, tgt = _random_examples(rng, 200, np.arange(n))
    offsets, values = _flat(hist)
    ex, n_ex = _excluded(offsets, values, tgt, np.arange(n))
    for r in range(200):
        pool = [i for i in range(n) if i not in hist[r] and i != tgt[r]]
        assert n_ex[r] == n - len(pool)
        j = np.arange(len(pool))[None, :]
        assert _pool_to_position(j, ex[r:r + 1])[0].tolist() == pool


def _check_rows(cands, hist, tgt, c):
    for row, h, t in zip(cands.tolist(), hist, tgt.tolist(), strict=True):
        assert len(row) == c and len(set(row)) == c
        assert row.count(t) == 1
        assert not (set(row) - {t}) & set(h)


@pytest.mark.parametrize("weights", [None, "pop"])
def test_numpy_samplers_invariants_and_seed(weights):
    rng = np.random.default_rng(3)
    catalogue = np.arange(40, dtype=np.int64)
    hist, tgt = _random_examples(rng, 500, catalogue)
    offsets, values = _flat(hist)
    w = None if weights is None else (np.arange(40) % 5).astype(float)  # 8 items weigh 0
    a = NumpySampler(catalogue, 12, 10, seed=5, weights=w)(offsets, values, tgt)
    b = NumpySampler(catalogue, 12, 10, seed=5, weights=w)(offsets, values, tgt)
    _check_rows(a, hist, tgt, 12)
    assert np.array_equal(a, b)
    # The target lands in every slot (not always last).
    slots = np.argmax(a == tgt[:, None], axis=1)
    assert len(np.unique(slots)) == 12
    if w is not None:
        negatives = a[a != tgt[:, None]]
        assert not np.isin(negatives, np.flatnonzero(w == 0)).any()


def test_popularity_sampler_follows_weights():
    # No history, a large catalogue and 2 negatives: draws are nearly independent, so the
    # frequency of each item is close to its weight share.
    catalogue = np.arange(200, dtype=np.int64)
    w = np.where(catalogue < 100, 1.0, 3.0)
    n = 20000
    tgt = np.full(n, 0, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    c = NumpySampler(catalogue, 3, 10, seed=0, weights=w)(offsets, np.zeros(0, np.int64), tgt)
    neg = c[c != 0]
    share_heavy = np.isin(neg, np.arange(100, 200)).mean()
    assert abs(share_heavy - 300 / 399) < 0.01


def test_pool_too_small_is_an_error():
    catalogue = np.arange(12, dtype=np.int64)
    offsets, values = _flat([list(range(5))])
    with pytest.raises(DataPrepError, match="only 6 items outside its history"):
        LlaraSampler(catalogue, 10, 10)(offsets, values, np.array([11]))


def test_replayed_random_equals_python_random():
    """The numpy replay of random.sample / random.shuffle from raw Mersenne Twister words gives
    Python's own results, around powers of two too; rows whose words run out are flagged."""
    from data_prep.candidates import _sample_setsize, mt_words, replay_sample, replay_shuffle

    rng = random.Random()
    seeds = [0, 1, 7, 2**31 + 5, 2**40 + 3, *range(100, 160)]
    for k in (1, 5, 19, 40):
        sizes = [_sample_setsize(k) + 1, 512, 513, 1023, 1024, 1025, 3000, 2**20 + 1]
        for m in (k + 2, 4 * k + 32):  # a short stream makes some rows fall back
            words = mt_words(rng, seeds, m)
            for n in sizes:
                got, ok = replay_sample(words, np.full(len(seeds), n), k)
                for s, row, good in zip(seeds, got.tolist(), ok.tolist(), strict=True):
                    random.seed(s)
                    want = random.sample(range(n), k)
                    if good:
                        assert row == want, (k, m, n, s)
                if m > k + 2:
                    assert ok.all()
    for c in (2, 3, 20, 33):
        words = mt_words(rng, seeds, 4 * c + 32)
        perm, ok = replay_shuffle(words, c)
        assert ok.all()
        for s, row in zip(seeds, perm.tolist(), strict=True):
            want = list(range(c))
            random.seed(s)
            random.shuffle(want)
            assert row == want
    _, ok = replay_shuffle(mt_words(rng, seeds, 3), 20)
    assert not ok.all()


def test_llara_with_short_streams_falls_back_to_python(monkeypatch):
    """Rows whose replay runs out of words are drawn by `random` itself: same lists."""
    import data_prep.candidates as cand

    monkeypatch.setattr(cand, "_words_for", lambda k: k + 3)
    rng = np.random.default_rng(5)
    catalogue = np.arange(600, dtype=np.int64)
    hist, tgt = _random_examples(rng, 150, catalogue)
    offsets, values = _flat(hist)
    got = cand.LlaraSampler(catalogue, 20, 10)(offsets, values, tgt)
    want = [_literal_llara(h, int(t), catalogue.tolist(), 19) for h, t in zip(hist, tgt, strict=True)]
    assert got.tolist() == want

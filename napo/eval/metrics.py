"""The one definition of every ranking metric in the toolkit (pure numpy; torch tensors accepted).

Conventions (see docs and PAPERS.md):
- Higher score = better.
- Ties are pessimistic: the target's 1-based rank is 1 + the number of *other* candidates whose
  score is >= the target's score. A model that gives every candidate the same score therefore
  ranks the target last, never first.
- NaN scores are an error (a silent NaN would compare False and flatter the model).
- hr@k = 1[rank <= k]; ndcg@k = 1[rank <= k] / log2(rank + 1) (one relevant item, so IDCG = 1);
  mrr = mean(1 / rank). k larger than the number of candidates is allowed (every rank counts).

Popularity bands (Prakash et al. 2024): items sorted by training count (descending, ties by
smaller id first); head = the most popular items that together hold the first third of training
interactions, mid the next third, tail the rest, and unseen items (count 0) are tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HEAD, MID, TAIL = 0, 1, 2
BAND_NAMES = ("head", "mid", "tail")
DEFAULT_KS = (1, 5, 10, 20)
FULL_KS = (1, 5, 10, 20, 50)  # full-catalogue ranking (`full/...` keys), recommenders and LLMs alike


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (any device/dtype) or nested list."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, C], got shape {scores.shape}")
    if np.isnan(scores).any():
        rows = np.unique(np.nonzero(np.isnan(scores))[0])
        raise ValueError(
            f"{name} contain NaN in {len(rows)} row(s) (first row {int(rows[0])}); "
            "fix the model or its inputs: NaN cannot be ranked"
        )
    return scores


def target_ranks(scores: Any, target_index: Any) -> np.ndarray:
    """1-based pessimistic rank of the target in each row.

    scores: [N, C] float, higher is better. target_index: [N] int in [0, C).
    Returns int64 [N]: 1 + #{j != t : scores[j] >= scores[t]}.
    """
    s = _check_scores(_to_numpy(scores))
    t = _to_numpy(target_index).astype(np.int64).reshape(-1)
    n, c = s.shape
    if t.shape[0] != n:
        raise ValueError(f"target_index has {t.shape[0]} rows but scores have {n}")
    if n and (t.min() < 0 or t.max() >= c):
        raise ValueError(f"target_index must lie in [0, {c}), got range [{t.min()}, {t.max()}]")
    target_score = s[np.arange(n), t][:, None]  # [N, 1]
    # counts the target itself once (score >= own score), which supplies the "+1"
    return (s >= target_score).sum(axis=1).astype(np.int64)


def metrics_from_ranks(ranks: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """hr@k, ndcg@k for each k and mrr from 1-based ranks [N].

    A rank of 0 or below is invalid; use np.inf (or any value > every k) for "not ranked at all"
    (e.g. an invalid generated answer): it counts as a miss and contributes 0 to mrr.
    """
    r = _to_numpy(ranks).astype(np.float64).reshape(-1)
    if np.isnan(r).any() or (r < 1).any():
        raise ValueError("ranks must be >= 1 (use inf for 'not ranked'), got NaN or < 1")
    out: dict[str, float] = {}
    if r.size == 0:
        for k in ks:
            out[f"hr@{k}"] = float("nan")
            out[f"ndcg@{k}"] = float("nan")
        out["mrr"] = float("nan")
        return out
    with np.errstate(divide="ignore"):
        gain = 1.0 / np.log2(r + 1.0)  # inf rank -> 0
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        hit = r <= k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
    out["mrr"] = float((1.0 / r).mean())
    return out


def ranking_metrics(
    scores: Any, target_index: Any, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Candidate-list metrics: scores [N, C] (higher better), target_index [N] -> hr@k, ndcg@k, mrr."""
    return metrics_from_ranks(target_ranks(scores, target_index), ks)


def _exclusion_mask(exclude: Any, n: int, num_items: int) -> np.ndarray | None:
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray) or hasattr(exclude, "detach"):
        m = _to_numpy(exclude)
        if m.dtype == bool:
            if m.shape != (n, num_items):
                raise ValueError(f"exclude mask must be [{n}, {num_items}], got {m.shape}")
            return m
    # a list of id lists (ragged): one list per row
    rows = list(exclude)
    if len(rows) != n:
        raise ValueError(f"exclude has {len(rows)} rows but scores have {n}")
    m = np.zeros((n, num_items), dtype=bool)
    for i, ids in enumerate(rows):
        ids = np.asarray(_to_numpy(ids), dtype=np.int64).reshape(-1)
        if ids.size:
            if ids.min() < 0 or ids.max() >= num_items:
                raise ValueError(f"exclude row {i} has an item id outside [0, {num_items})")
            m[i, ids] = True
    return m


def full_ranks(scores: Any, targets: Any, exclude: Any = None) -> np.ndarray:
    """1-based pessimistic ranks of `targets` [N] over the whole catalogue.

    scores: [N, num_items]; exclude: None, a bool mask [N, num_items] or a list of N id lists
    (e.g. the history). Excluded items are removed from the ranking, except the target itself
    (a target that also occurs in the history is still ranked).
    """
    s = _check_scores(_to_numpy(scores))
    t = _to_numpy(targets).astype(np.int64).reshape(-1)
    n, num_items = s.shape
    if t.shape[0] != n:
        raise ValueError(f"targets has {t.shape[0]} rows but scores have {n}")
    if n and (t.min() < 0 or t.max() >= num_items):
        raise ValueError(f"targets must lie in [0, {num_items})")
    mask = _exclusion_mask(exclude, n, num_items)
    target_score = s[np.arange(n), t][:, None]
    ahead = s >= target_score  # includes the target itself -> the "+1"
    if mask is not None:
        keep = ~mask
        keep[np.arange(n), t] = True
        ahead &= keep
    return ahead.sum(axis=1).astype(np.int64)


def top_items(scores: Any, r: int, exclude: Any = None) -> np.ndarray:
    """Item ids of the `r` best scores of each row, best first: scores [N, num_items] -> [N, r].

    exclude: as in `full_ranks` (history lists or a bool mask); excluded items are never listed.
    Ties keep the order of np.argsort (stable) after np.argpartition, as the recommenders do.
    """
    s = np.array(_check_scores(_to_numpy(scores)), dtype=np.float64)
    n, num_items = s.shape
    mask = _exclusion_mask(exclude, n, num_items)
    if mask is not None:
        s[mask] = -np.inf
    r = min(r, num_items)
    top = np.argpartition(-s, r - 1, axis=1)[:, :r]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def full_ranking_metrics(
    scores: Any, targets: Any, exclude: Any = None, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Full-catalogue hr@k (= Recall@k with one target), ndcg@k, mrr. See `full_ranks`."""
    return metrics_from_ranks(full_ranks(scores, targets, exclude), ks)


def ranked_candidates(scores: Any, candidates: Any, target_index: Any | None = None) -> np.ndarray:
    """Candidate ids sorted best first: scores [N, C], candidates [N, C] ids -> [N, C] ids.

    With `target_index`, ties put the target after every candidate tied with it, so that
    position of the target + 1 equals `target_ranks` (pessimistic ties). Other ties keep
    candidate order.
    """
    s = _check_scores(_to_numpy(scores))
    cand = _to_numpy(candidates).astype(np.int64)
    if cand.shape != s.shape:
        raise ValueError(f"candidates shape {cand.shape} != scores shape {s.shape}")
    is_target = np.zeros(s.shape, dtype=np.int8)
    if target_index is not None:
        t = _to_numpy(target_index).astype(np.int64).reshape(-1)
        is_target[np.arange(s.shape[0]), t] = 1
    # np.lexsort sorts by the last key first: score descending, then target last, then position
    pos = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    order = np.lexsort((pos, is_target, -s), axis=1)
    return np.take_along_axis(cand, order, axis=1)


def gini(values: Any) -> float:
    """Gini coefficient of non-negative values [n]: 0 = perfectly equal, (n-1)/n = all in one."""
    x = np.sort(_to_numpy(values).astype(np.float64).reshape(-1))
    if x.size == 0:
        return 0.0
    if (x < 0).any():
        raise ValueError("gini needs non-negative values")
    total = x.sum()
    if total == 0:
        return 0.0
    n = x.size
    i = np.arange(1, n + 1)
    return float((2.0 * (i * x).sum()) / (n * total) - (n + 1.0) / n)


def popularity_bands(train_counts: Any) -> np.ndarray:
    """Band of every item: int8 [num_items], 0 head, 1 mid, 2 tail.

    Items sorted by count (descending, ties: smaller id first); an item belongs to the band in
    which the cumulative mass *before* it falls: head while that mass is < 1/3 of all training
    interactions, mid while < 2/3, tail afterwards. Items with count 0 are always tail.
    """
    counts = _to_numpy(train_counts).astype(np.float64).reshape(-1)
    if (counts < 0).any():
        raise ValueError("train_counts must be non-negative")
    bands = np.full(counts.shape[0], TAIL, dtype=np.int8)
    total = counts.sum()
    if total == 0:
        return bands
    order = np.lexsort((np.arange(counts.size), -counts))  # count desc, id asc
    before = np.concatenate([[0.0], np.cumsum(counts[order])[:-1]])
    # compare 3 * mass with the total instead of mass / total with 1/3: exact for integer counts
    sorted_bands = np.where(3 * before < total, HEAD, np.where(3 * before < 2 * total, MID, TAIL))
    bands[order] = sorted_bands.astype(np.int8)
    bands[counts == 0] = TAIL
    return bands


def popularity_report(
    ranked_items: Any, targets: Any, train_counts: Any, ks: Sequence[int] = (1, 10)
) -> dict[str, float]:
    """Popularity-bias report of ranked recommendation lists.

    ranked_items: [N, R] item ids, best first (for the candidate protocol use
    `ranked_candidates(..., target_index)` so ties are pessimistic); targets: [N] item ids;
    train_counts: [num_items] training interaction counts. For each k:
      pop/hr@k/{band}, pop/ndcg@k/{band}: over the targets in that band (NaN if none);
      pop/balance@k: 1 - Gini of the band HRs (bands with targets only);
      pop/avg_popularity@k: mean training count of the top-k items;
      pop/coverage@k: share of the catalogue that appears in some top-k list;
      pop/gini@k: Gini of how often each catalogue item appears in the top-k lists;
      pop/tail_share@k: share of top-k slots filled by tail items.
    Also pop/targets/{band}: the share of targets in each band.
    """
    ranked = _to_numpy(ranked_items).astype(np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_items must be [N, R], got shape {ranked.shape}")
    t = _to_numpy(targets).astype(np.int64).reshape(-1)
    counts = _to_numpy(train_counts).astype(np.float64).reshape(-1)
    n, r = ranked.shape
    if t.shape[0] != n:
        raise ValueError(f"targets has {t.shape[0]} rows but ranked_items has {n}")
    num_items = counts.shape[0]
    if n and (ranked.max() >= num_items or t.max() >= num_items or ranked.min() < 0 or t.min() < 0):
        raise ValueError(f"item ids must lie in [0, {num_items}) (len(train_counts))")
    bands = popularity_bands(counts)
    target_band = bands[t]
    # 1-based position of the target in the list; inf when absent
    match = ranked == t[:, None]
    ranks = np.where(match.any(axis=1), match.argmax(axis=1) + 1.0, np.inf)
    out: dict[str, float] = {}
    for b, name in enumerate(BAND_NAMES):
        out[f"pop/targets/{name}"] = float((target_band == b).mean()) if n else float("nan")
    for k in ks:
        per = metrics_from_ranks(ranks, [k]) if n else {}
        band_hrs = []
        for b, name in enumerate(BAND_NAMES):
            sel = target_band == b
            if sel.any():
                m = metrics_from_ranks(ranks[sel], [k])
                out[f"pop/hr@{k}/{name}"] = m[f"hr@{k}"]
                out[f"pop/ndcg@{k}/{name}"] = m[f"ndcg@{k}"]
                band_hrs.append(m[f"hr@{k}"])
            else:
                out[f"pop/hr@{k}/{name}"] = float("nan")
                out[f"pop/ndcg@{k}/{name}"] = float("nan")
        out[f"pop/hr@{k}"] = per.get(f"hr@{k}", float("nan"))
        out[f"pop/balance@{k}"] = 1.0 - gini(band_hrs) if band_hrs else float("nan")
        top = ranked[:, : min(k, r)]
        exposure = np.bincount(top.reshape(-1), minlength=num_items)
        out[f"pop/avg_popularity@{k}"] = float(counts[top].mean()) if top.size else float("nan")
        out[f"pop/coverage@{k}"] = float((exposure > 0).mean())
        out[f"pop/gini@{k}"] = gini(exposure)
        out[f"pop/tail_share@{k}"] = float((bands[top] == TAIL).mean()) if top.size else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# Several relevant items per user (the CF protocol: a user's held-out item set)


def _ragged_rows(lists: Any, n: int, name: str) -> list[np.ndarray]:
    rows = list(lists)
    if len(rows) != n:
        raise ValueError(f"{name} has {len(rows)} rows but scores have {n}")
    return [np.asarray(_to_numpy(r), dtype=np.int64).reshape(-1) for r in rows]


def set_metrics_per_user(
    scores: Any, targets: Any, exclude: Any = None, ks: Sequence[int] = (20,)
) -> dict[str, np.ndarray]:
    """Full-catalogue recall@k and ndcg@k of each user's relevant set: arrays [N] per key.

    scores: [N, num_items], higher better. targets: N id lists (each non-empty, no duplicates).
    exclude: None or N id lists (e.g. training items; at test also validation items) removed
    from the ranking; a target that is also excluded is still ranked.

    Pessimistic ties: the 1-based rank of target t is
        1 + #{non-target, non-excluded j : s_j >= s_t} + #{targets ranked before t},
    targets ordered by score (ties between two targets do not change DCG). Then, with T_u the
    targets and r_t the ranks,
        recall@k = #{t : r_t <= k} / |T_u|,
        ndcg@k   = sum_{t : r_t <= k} 1 / log2(r_t + 1)  /  sum_{r=1}^{min(k, |T_u|)} 1 / log2(r + 1).
    """
    s = _check_scores(_to_numpy(scores))
    n, num_items = s.shape
    tgt = _ragged_rows(targets, n, "targets")
    exc = _ragged_rows(exclude, n, "exclude") if exclude is not None else [np.zeros(0, np.int64)] * n
    sizes = np.array([len(t) for t in tgt], dtype=np.int64)
    if n and sizes.min() < 1:
        raise ValueError(f"row {int(np.argmin(sizes))} has no target; keep only users with targets")
    for i, t in enumerate(tgt):
        if t.size and (t.min() < 0 or t.max() >= num_items):
            raise ValueError(f"targets row {i} has an item id outside [0, {num_items})")
    out = {f"{m}@{k}": np.zeros(n) for k in ks for m in ("recall", "ndcg")}
    if n == 0:
        return out
    # Rows in chunks so that the [rows, max targets, num_items] comparison stays ~16M booleans.
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and (stop + 1 - start) * int(sizes[start:stop + 1].max()) * num_items <= 16_000_000:
            stop += 1
        m, tmax = stop - start, int(sizes[start:stop].max())
        pad = np.zeros((m, tmax), np.int64)
        valid_t = np.zeros((m, tmax), bool)
        other = np.ones((m, num_items), bool)  # non-target, non-excluded
        for r in range(m):
            t, e = tgt[start + r], exc[start + r]
            pad[r, : t.size], valid_t[r, : t.size] = t, True
            other[r, e] = False
            other[r, t] = False
        st = np.take_along_axis(s[start:stop], pad, 1)  # [m, tmax]
        ahead = ((s[start:stop, None, :] >= st[:, :, None]) & other[:, None, :]).sum(-1)  # [m, tmax]
        st_sorted = np.where(valid_t, st, -np.inf)
        order = np.argsort(-st_sorted, axis=1, kind="stable")  # targets best first, padding last
        ranks = np.take_along_axis(ahead, order, 1) + 1 + np.arange(tmax)[None, :]  # [m, tmax]
        ranks = np.where(np.take_along_axis(valid_t, order, 1), ranks, np.iinfo(np.int64).max)
        gain = np.where(ranks < np.iinfo(np.int64).max, 1.0 / np.log2(np.minimum(ranks, 1 << 40) + 1.0), 0.0)
        size = sizes[start:stop]
        for k in ks:
            if k < 1:
                raise ValueError(f"k must be >= 1, got {k}")
            hit = ranks <= k
            ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[np.minimum(size, k) - 1]
            out[f"recall@{k}"][start:stop] = hit.sum(1) / size
            out[f"ndcg@{k}"][start:stop] = np.where(hit, gain, 0.0).sum(1) / ideal
        start = stop
    return out


def set_ranking_metrics(
    scores: Any, targets: Any, exclude: Any = None, ks: Sequence[int] = (20,)
) -> dict[str, float]:
    """recall@k, ndcg@k averaged over users (rows); see `set_metrics_per_user`."""
    per = set_metrics_per_user(scores, targets, exclude, ks)
    return {k: float(v.mean()) if v.size else float("nan") for k, v in per.items()}

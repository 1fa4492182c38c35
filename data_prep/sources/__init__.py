"""Raw data sources. Each turns its input into the same two tables.

- interactions: `user_id` int64 (dense 0..U-1), `item_id` int64, `timestamp` int64 (seconds)
- items: `item_id` int64, `title` str (unique), sorted by item_id; the candidate catalogue

Sources whose input is already windowed and split (`lastfm-llara`, `seq-txt`) give `examples`
per split instead of interactions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError


@dataclass
class Examples:
    """Examples of one split as flat arrays (N examples, M history entries in total).

    user_id [N] int64, target [N] int64, hist_offsets [N + 1] int64 (history of row i is
    hist_values[hist_offsets[i]:hist_offsets[i + 1]], oldest first), hist_values [M] int64.
    (`sequences.split_windows` gives user_id, target and hist_values as int32 when the ids fit;
    the output columns are int64 either way.)
    """

    user_id: np.ndarray
    target: np.ndarray
    hist_offsets: np.ndarray
    hist_values: np.ndarray

    def __len__(self) -> int:
        return len(self.target)

    def take(self, rows: np.ndarray) -> Examples:
        """The examples at `rows` (sorted or not), histories included."""
        lengths = np.diff(self.hist_offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = self.hist_offsets[:-1][rows]
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Examples(self.user_id[rows], self.target[rows], offsets, self.hist_values[gather])


@dataclass
class SourceData:
    domain: str
    items: pd.DataFrame
    interactions: pd.DataFrame | None = None
    examples: dict[str, Examples] | None = None
    # Training interactions per item for presplit sources (interaction sources derive it).
    train_counts: np.ndarray | None = None
    checksums: dict[str, dict] = field(default_factory=dict)
    # Tables saved next to the dataset (e.g. original id -> dense id maps), name -> DataFrame.
    extra_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    # Drop exact duplicate (user, item, timestamp) rows (logging duplicates) when sorting.
    drop_duplicates: bool = False


DOMAINS = ("movie", "music", "book", "game", "generic")


def _loaders():
    from data_prep.sources import interactions, lastfm, llara, movielens, seqtxt

    return {
        "ml-100k": movielens.load_ml100k,
        "ml-1m": movielens.load_ml1m,
        "lastfm": lastfm.load_hetrec_lastfm,
        "lastfm-llara": llara.load_llara,
        "seq-txt": seqtxt.load_seq_txt,
        "interactions": interactions.load_interactions,
    }


def load_source(args: argparse.Namespace) -> SourceData:
    loaders = _loaders()
    if args.dataset not in loaders:
        raise DataPrepError(
            f"unknown dataset '{args.dataset}'; choose one of: {', '.join(loaders)} "
            "(use 'interactions' with --interactions/--items for your own log)"
        )
    return loaders[args.dataset](args)


def unique_titles(items: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Make titles unique: the 2nd, 3rd, ... item (by id) with a title gets " [2]", " [3]", ...

    Prompts and generation matching identify items by title, so two items must never share one.
    Returns the new table and the number of titles changed.
    """
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    titles = items["title"].astype(str)
    rank = titles.groupby(titles, sort=False).cumcount().to_numpy()
    if not rank.any():
        return items.assign(title=titles), 0
    taken = set(titles)
    new = titles.to_numpy(dtype=object).copy()
    for i in np.flatnonzero(rank):
        n = int(rank[i]) + 1
        cand = f"{new[i]} [{n}]"
        while cand in taken:  # never collide with an existing title
            n += 1
            cand = f"{new[i]} [{n}]"
        taken.add(cand)
        new[i] = cand
    return items.assign(title=new), int((rank > 0).sum())


def densify(inter: pd.DataFrame, items: pd.DataFrame, *, items_name: str,
            where: Callable[[int], str]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """Map raw user/item ids (int or str) to dense int64 ids in sorted raw-id order.

    `inter` has raw `user_id, item_id, timestamp`; `items` raw `item_id, title` (no duplicate
    ids). The catalogue becomes the items that occur in `inter`; every one of them needs a title.
    Returns (interactions, items, {"users": map, "items": map}).
    """
    used = pd.Index(pd.unique(inter["item_id"]))
    known = pd.Index(items["item_id"])
    missing = used.difference(known)
    if len(missing):
        first = missing[0]
        row = int(np.flatnonzero((inter["item_id"] == first).to_numpy())[0])
        raise DataPrepError(
            f"{items_name}: no title for item_id '{first}' used in {where(row)} "
            f"({len(missing)} items without a title); add them to the items file"
        )
    item_raw = _sorted_ids(used)
    user_raw = _sorted_ids(pd.Index(pd.unique(inter["user_id"])))
    item_idx = pd.Index(item_raw)
    out = pd.DataFrame({
        "user_id": pd.Index(user_raw).get_indexer(inter["user_id"]).astype(np.int64),
        "item_id": item_idx.get_indexer(inter["item_id"]).astype(np.int64),
        "timestamp": inter["timestamp"].to_numpy(dtype=np.int64),
    })
    titles = items.set_index("item_id")["title"].reindex(item_raw).to_numpy()
    new_items = pd.DataFrame({"item_id": np.arange(len(item_raw), dtype=np.int64), "title": titles})
    maps = {
        "users": pd.DataFrame({"user_id": np.arange(len(user_raw), dtype=np.int64),
                               "original_id": [str(u) for u in user_raw]}),
        "items": pd.DataFrame({"item_id": np.arange(len(item_raw), dtype=np.int64),
                               "original_id": [str(i) for i in item_raw]}),
    }
    return out, new_items, maps


def _sorted_ids(ids: pd.Index) -> list:
    """Raw ids sorted numerically when they are integers, else as strings."""
    if pd.api.types.is_integer_dtype(ids.dtype):
        return np.sort(ids.to_numpy(np.int64)).tolist()
    return sorted(ids.astype(str).tolist())

"""`interactions`: a user's own log (CSV/TSV/Parquet/JSONL) plus an items file.

Interactions need columns user_id, item_id, timestamp (rating optional, for `--min-rating`);
items need item_id, title. Ids may be strings or integers; both are mapped to dense int64 ids and
the maps are saved next to the dataset (`id_map_users.csv`, `id_map_items.csv`).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.fetch import file_digest
from data_prep.sources import SourceData, densify
from data_prep.sources.tables import (
    check_ids,
    line_of,
    normalize_ids,
    parse_timestamps,
    read_table,
    require_file,
)


def load_interactions(args: argparse.Namespace) -> SourceData:
    if not args.interactions or not args.items:
        raise DataPrepError("--dataset interactions needs --interactions FILE and --items FILE")
    inter_path = require_file(args.interactions, "--interactions")
    items_path = require_file(args.items, "--items")
    inter, ikind = read_table(inter_path, ("user_id", "item_id", "timestamp"), ("rating",))
    items, tkind = read_table(items_path, ("item_id", "title"))
    for col in ("user_id", "item_id"):
        check_ids(inter, col, inter_path, ikind)
    check_ids(items, "item_id", items_path, tkind)
    inter["timestamp"] = parse_timestamps(inter["timestamp"], inter_path, ikind)
    inter["_row"] = np.arange(len(inter))
    if args.min_rating is not None:
        if "rating" not in inter:
            raise DataPrepError(f"{inter_path}: --min-rating needs a 'rating' column; add it or drop the flag")
        rating = pd.to_numeric(pd.Series(inter["rating"]), errors="coerce")
        if rating.isna().any():
            row = int(np.flatnonzero(rating.isna().to_numpy())[0])
            raise DataPrepError(f"{inter_path}, {line_of(ikind, row)}, column rating: not a number; fix or drop the row")
        inter = inter[(rating >= args.min_rating).to_numpy()]
        if inter.empty:
            raise DataPrepError(f"{inter_path}: no interaction has rating >= {args.min_rating}; lower --min-rating")
    inter["user_id"], = normalize_ids(inter["user_id"])
    inter["item_id"], items["item_id"] = normalize_ids(inter["item_id"], items["item_id"])
    items = dedupe_items(items, items_path, tkind)
    checksums = {
        inter_path.name: {"sha256": file_digest(inter_path, "sha256"), "origin": "user"},
        items_path.name: {"sha256": file_digest(items_path, "sha256"), "origin": "user"},
    }
    out, new_items, maps = densify(
        inter, items, items_name=str(items_path),
        where=lambda row: f"{inter_path} {line_of(ikind, int(inter['_row'].iloc[row]))}",
    )
    return SourceData(
        domain=args.domain or "generic", items=new_items, interactions=out, checksums=checksums,
        extra_tables={"id_map_users": maps["users"], "id_map_items": maps["items"]},
        drop_duplicates=True,  # a user's log: the same (user, item, timestamp) twice is one interaction
    )


def dedupe_items(items: pd.DataFrame, path, kind: str) -> pd.DataFrame:
    """Drop exact duplicate rows; the same id with two titles is an error. Empty titles are
    dropped (a used item without a title is reported later, with the interaction line)."""
    items = items.assign(title=items["title"].astype(str).str.strip(), _row=np.arange(len(items)))
    items = items[items["title"] != ""].reset_index(drop=True)
    first = ~items.duplicated(["item_id", "title"])
    uniq = items[first.to_numpy()]
    clash = uniq["item_id"].duplicated(keep=False).to_numpy()
    if clash.any():
        rows = np.flatnonzero(items["item_id"].isin(uniq["item_id"][clash]).to_numpy())
        a, b = rows[0], next(r for r in rows[1:] if items["item_id"].iloc[r] == items["item_id"].iloc[rows[0]])
        raise DataPrepError(
            f"{path}, {line_of(kind, int(items['_row'].iloc[a]))} and "
            f"{line_of(kind, int(items['_row'].iloc[b]))}: item_id "
            f"'{items['item_id'].iloc[a]}' has two titles ('{items['title'].iloc[a]}' vs "
            f"'{items['title'].iloc[b]}'); keep one title per id"
        )
    return uniq.drop(columns="_row").reset_index(drop=True)

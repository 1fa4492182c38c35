"""`interactions`: a user's own log (CSV/TSV/Parquet/JSONL) plus an items file.

Interactions need columns user_id, item_id, timestamp (rating optional, for `--min-rating`);
items need item_id, title. Ids may be strings or integers; both are mapped to dense int64 ids and
the maps are saved next to the dataset (`id_map_users.csv`, `id_map_items.csv`).

The log is read in chunks (`tables.read_chunks`) and held as integer arrays only: per row a user
code, an item code and a timestamp, so logs larger than memory can be prepared. The result is the
one a whole-file read gives (tested byte for byte with tiny chunks).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pyarrow as pa

from data_prep.errors import DataPrepError
from data_prep.fetch import file_digest
from data_prep.sources import SourceData, _sorted_ids
from data_prep.sources.tables import (
    ColumnCodes,
    TypedReadFailed,
    check_ids,
    column_values,
    csv_typed,
    line_of,
    normalize_ids,
    read_chunks,
    read_table,
    require_file,
    timestamps_chunk,
)


def load_interactions(args: argparse.Namespace) -> SourceData:
    if not args.interactions or not args.items:
        raise DataPrepError("--dataset interactions needs --interactions FILE and --items FILE")
    inter_path = require_file(args.interactions, "--interactions")
    items_path = require_file(args.items, "--items")
    try:
        # CSV columns whose first block is all integers are parsed as int64 (fast); if a later
        # value is not an integer, the file is read again with those columns as text.
        ikind, keep, codes = _read_log(inter_path, args.min_rating, ("user_id", "item_id", "timestamp"), True)
    except TypedReadFailed:
        ikind, keep, codes = _read_log(inter_path, args.min_rating, (), False)
    users, items_col, times, kept = codes
    items, tkind = read_table(items_path, ("item_id", "title"))
    ucodes, uvalues = users.finish()
    icodes, ivalues = items_col.finish()
    ts = np.concatenate(times)
    del times, codes
    # The distinct ids, typed as a whole-file read types the column, then checked as before.
    uniq = pd.DataFrame({"user_id": _typed(uvalues, ikind)})
    uniq_items = pd.DataFrame({"item_id": _typed(ivalues, ikind)})
    check_ids(uniq, "user_id", inter_path, ikind, codes=ucodes)
    check_ids(uniq_items, "item_id", inter_path, ikind, codes=icodes)
    check_ids(items, "item_id", items_path, tkind)
    rows = None
    if kept:
        mask = np.concatenate(kept)
        if not mask.any():
            raise DataPrepError(f"{inter_path}: no interaction has rating >= {args.min_rating}; lower --min-rating")
        rows = np.flatnonzero(mask)
        ucodes, icodes, ts = ucodes[rows], icodes[rows], ts[rows]
    (user_vals,) = normalize_ids(uniq["user_id"])
    item_vals, items["item_id"] = normalize_ids(uniq_items["item_id"], items["item_id"])
    items = dedupe_items(items, items_path, tkind)
    checksums = {
        inter_path.name: {"sha256": file_digest(inter_path, "sha256"), "origin": "user"},
        items_path.name: {"sha256": file_digest(items_path, "sha256"), "origin": "user"},
    }
    out, new_items, maps = densify_codes(
        user_vals, ucodes, item_vals, icodes, ts, items, items_name=str(items_path),
        where=lambda row: f"{inter_path} {line_of(ikind, int(row if rows is None else rows[row]))}",
    )
    return SourceData(
        domain=args.domain or "generic", items=new_items, interactions=out, checksums=checksums,
        extra_tables={"id_map_users": maps["users"], "id_map_items": maps["items"]},
        drop_duplicates=True,  # a user's log: the same (user, item, timestamp) twice is one interaction
    )


def _read_log(path, min_rating, int_columns: tuple[str, ...], first_pass: bool):
    """Stream the log: (kind, columns, (user codes, item codes, timestamps per chunk, rating
    masks per chunk)). Errors name the file's own lines."""
    kind, keep, chunks = read_chunks(path, ("user_id", "item_id", "timestamp"), ("rating",),
                                     int_columns=int_columns, check_utf8=first_pass)
    if min_rating is not None and "rating" not in keep:
        raise DataPrepError(f"{path}: --min-rating needs a 'rating' column; add it or drop the flag")
    users = ColumnCodes(path, "user_id", text=kind == "csv")
    items = ColumnCodes(path, "item_id", text=kind == "csv")
    times, kept, ts_state = [], [], {}
    row0 = 0
    for table in chunks:
        users.add(table["user_id"])
        items.add(table["item_id"])
        times.append(timestamps_chunk(table["timestamp"].combine_chunks(), path, kind, row0, ts_state))
        if min_rating is not None:
            kept.append(_rating_mask(table["rating"], min_rating, path, kind, row0))
        row0 += table.num_rows
    return kind, keep, (users, items, times, kept)


def _typed(values, kind: str) -> pd.Series:
    """Distinct raw values of an id column -> pandas values, typed as in a whole-file read."""
    if kind == "csv" and pa.types.is_string(values.type):
        values = csv_typed(values)
    return column_values(values)


def _rating_mask(col, min_rating: float, path, kind: str, row0: int) -> np.ndarray:
    values = column_values(col.combine_chunks())
    if not pd.api.types.is_numeric_dtype(values.dtype):
        values = values.astype(str).str.strip()
    rating = pd.to_numeric(values, errors="coerce")
    if rating.isna().any():
        row = int(np.flatnonzero(rating.isna().to_numpy())[0])
        raise DataPrepError(f"{path}, {line_of(kind, row0 + row)}, column rating: not a number; fix or drop the row")
    return (rating >= min_rating).to_numpy()


def densify_codes(user_vals: pd.Series, ucodes: np.ndarray, item_vals: pd.Series, icodes: np.ndarray,
                  ts: np.ndarray, items: pd.DataFrame, *, items_name: str, where
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """`sources.densify` for coded columns: row r has user `user_vals[ucodes[r]]` and item
    `item_vals[icodes[r]]` (normalized raw ids). Same dense ids, tables and errors."""
    item_used = np.bincount(icodes, minlength=len(item_vals)) > 0
    user_used = np.bincount(ucodes, minlength=len(user_vals)) > 0
    used = pd.Index(pd.unique(item_vals[item_used]))
    known = pd.Index(items["item_id"])
    missing = used.difference(known)
    if len(missing):
        first = missing[0]
        bad = (item_vals == first).to_numpy()
        row = int(np.flatnonzero(bad[icodes])[0])
        raise DataPrepError(
            f"{items_name}: no title for item_id '{first}' used in {where(row)} "
            f"({len(missing)} items without a title); add them to the items file"
        )
    item_raw = _sorted_ids(used)
    user_raw = _sorted_ids(pd.Index(pd.unique(user_vals[user_used])))
    user_lut = pd.Index(user_raw).get_indexer(user_vals).astype(np.int64)
    item_lut = pd.Index(item_raw).get_indexer(item_vals).astype(np.int64)
    # copy=False: three separate int64 columns, no consolidated 2-D copy of the log
    out = pd.DataFrame({"user_id": user_lut[ucodes], "item_id": item_lut[icodes], "timestamp": ts}, copy=False)
    titles = items.set_index("item_id")["title"].reindex(item_raw).to_numpy()
    new_items = pd.DataFrame({"item_id": np.arange(len(item_raw), dtype=np.int64), "title": titles})
    maps = {
        "users": pd.DataFrame({"user_id": np.arange(len(user_raw), dtype=np.int64),
                               "original_id": [str(u) for u in user_raw]}),
        "items": pd.DataFrame({"item_id": np.arange(len(item_raw), dtype=np.int64),
                               "original_id": [str(i) for i in item_raw]}),
    }
    return out, new_items, maps


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

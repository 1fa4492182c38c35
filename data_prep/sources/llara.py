"""`lastfm-llara --input-dir D`: LastFM as preprocessed by the LLaRA / S-DPO / NAPO papers.

D holds `items.tsv` (item_id, title) and `{train,valid,test}.jsonl` with one example per line,
`{"history": [ids, oldest first], "target": id}`, already windowed and split by user. A user's
examples are consecutive and the first has an empty history, which is how users are numbered.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from data_prep.errors import DataPrepError
from data_prep.fetch import file_digest
from data_prep.prepared import SPLITS
from data_prep.sources import Examples, SourceData, unique_titles
from data_prep.sources.interactions import dedupe_items
from data_prep.sources.tables import check_ids, check_utf8, normalize_ids, read_table, require_file


def load_llara(args: argparse.Namespace) -> SourceData:
    if not args.input_dir:
        raise DataPrepError("--dataset lastfm-llara needs --input-dir D (items.tsv, train/valid/test.jsonl)")
    root = Path(args.input_dir)
    if not root.is_dir():
        raise DataPrepError(f"{root}: directory not found; check --input-dir")
    items_path = require_file(root / "items.tsv", "--input-dir")
    items, kind = read_table(items_path, ("item_id", "title"))
    check_ids(items, "item_id", items_path, kind)
    (items["item_id"],) = normalize_ids(items["item_id"])
    if items["item_id"].dtype != np.int64:
        raise DataPrepError(f"{items_path}: item_id must be integers; found '{items['item_id'].iloc[0]}'")
    items = dedupe_items(items, items_path, kind)
    items, renamed = unique_titles(items)
    catalogue = set(items["item_id"].tolist())
    checksums = {"items.tsv": {"sha256": file_digest(items_path, "sha256"), "origin": "input-dir"}}
    examples: dict[str, Examples] = {}
    next_user = 0
    counts = np.zeros(int(items["item_id"].max()) + 1, dtype=np.int64)
    for split in SPLITS:
        path = require_file(root / f"{split}.jsonl", "--input-dir")
        check_utf8(path.read_bytes(), str(path))
        checksums[path.name] = {"sha256": file_digest(path, "sha256"), "origin": "input-dir"}
        try:
            table = pajson.read_json(path)
        except pa.ArrowInvalid as err:
            raise DataPrepError(f"{path}: cannot parse ({str(err).splitlines()[0]}); one JSON object per line") from None
        for col in ("history", "target"):
            if col not in table.column_names:
                raise DataPrepError(f"{path}: missing field '{col}' (found: {', '.join(table.column_names)})")
        hist = table["history"].combine_chunks()
        if isinstance(hist, pa.NullArray):  # every history empty
            hist = pa.array([[]] * len(hist), type=pa.list_(pa.int64()))
        hist = hist.cast(pa.list_(pa.int64()))
        target_col = table["target"]
        if target_col.null_count:
            row = int(np.flatnonzero(target_col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataPrepError(f"{path}, line {row + 1}, field target: empty id; fix or drop the line")
        target = target_col.to_numpy().astype(np.int64)
        offsets = hist.offsets.to_numpy().astype(np.int64)
        values = hist.values.to_numpy(zero_copy_only=False).astype(np.int64)
        for name, ids, rows in (("target", target, np.arange(len(target))),
                                ("history", values, np.searchsorted(offsets, np.arange(len(values)), side="right") - 1)):
            unknown = ~np.isin(ids, list(catalogue))
            if unknown.any():
                i = int(np.flatnonzero(unknown)[0])
                raise DataPrepError(
                    f"{items_path}: no title for item_id '{ids[i]}' used in {path} line "
                    f"{rows[i] + 1} ({name}); add it to items.tsv"
                )
        new_user = np.diff(offsets) == 0
        new_user[0] = True
        user = np.cumsum(new_user) - 1 + next_user
        next_user = int(user.max(initial=next_user - 1)) + 1
        if split == "train":
            # Every interaction of a training user is a target exactly once.
            np.add.at(counts, target, 1)
        examples[split] = Examples(user.astype(np.int64), target, offsets - offsets[0], values)
    return SourceData(domain=args.domain or "music", items=items, examples=examples,
                      train_counts=counts[items["item_id"].to_numpy()], checksums=checksums,
                      notes={"titles_made_unique": renamed,
                             "split": "as given by the input files (--split is not used)"})

"""`seq-txt --input-dir D`: id-only sequences, already split (the PreferDiff release format).

D holds `{train,valid,test}_data.txt`: one user per line, item ids separated by spaces, the last
id is the target and the ones before it the history. There are no titles, so an item's title is
"item <id>". Each line is one user (numbered train first, then valid, then test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.fetch import file_digest
from data_prep.prepared import SPLITS
from data_prep.sources import Examples, SourceData
from data_prep.sources.tables import check_utf8, require_file


def _parse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns (offsets [L + 1], ids [T]) of the L lines' id lists."""
    data = path.read_bytes()
    check_utf8(data, str(path))
    lines = data.decode("utf-8").splitlines()
    lengths = np.fromiter((len(line.split()) for line in lines), dtype=np.int64, count=len(lines))
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise DataPrepError(f"{path}, line {int(empty[0]) + 1}: empty line; each line needs at least one item id")
    tokens = pd.Series(" ".join(lines).split())
    ids = pd.to_numeric(tokens, errors="coerce")
    if ids.isna().any() or (ids < 0).any():
        pos = int(np.flatnonzero((ids.isna() | (ids < 0)).to_numpy())[0])
        line = int(np.searchsorted(np.cumsum(lengths), pos, side="right"))
        raise DataPrepError(
            f"{path}, line {line + 1}: '{tokens.iloc[pos]}' is not an item id; ids are "
            "non-negative integers separated by spaces"
        )
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, ids.to_numpy(dtype=np.int64)


def load_seq_txt(args: argparse.Namespace) -> SourceData:
    if not args.input_dir:
        raise DataPrepError("--dataset seq-txt needs --input-dir D ({train,valid,test}_data.txt)")
    root = Path(args.input_dir)
    if not root.is_dir():
        raise DataPrepError(f"{root}: directory not found; check --input-dir")
    parsed, checksums = {}, {}
    for split in SPLITS:
        path = require_file(root / f"{split}_data.txt", "--input-dir")
        parsed[split] = _parse(path)
        checksums[path.name] = {"sha256": file_digest(path, "sha256"), "origin": "input-dir"}
    all_ids = np.unique(np.concatenate([ids for _, ids in parsed.values()]))
    items = pd.DataFrame({"item_id": all_ids, "title": [f"item {i}" for i in all_ids.tolist()]})
    counts = np.zeros(int(all_ids.max()) + 1, dtype=np.int64)
    examples, next_user = {}, 0
    for split in SPLITS:
        offsets, ids = parsed[split]
        n = len(offsets) - 1
        target = ids[offsets[1:] - 1]
        lengths = np.diff(offsets) - 1
        h_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=h_off[1:])
        keep = np.ones(len(ids), dtype=bool)
        keep[offsets[1:] - 1] = False
        if split == "train":
            np.add.at(counts, ids, 1)
        examples[split] = Examples(np.arange(next_user, next_user + n, dtype=np.int64), target,
                                   h_off, ids[keep])
        next_user += n
    return SourceData(domain=args.domain or "generic", items=items, examples=examples,
                      train_counts=counts[all_ids], checksums=checksums,
                      notes={"split": "as given by the input files (--split is not used)"})

"""Streaming output in the `datasets.save_to_disk` layout, one chunk of rows at a time.

Writing chunks as they are made keeps memory flat for large logs (a 10M-row split holds
gigabytes of prompt text). The files are the ones `DatasetDict.save_to_disk` writes, so
`datasets.load_from_disk` reads them: per split `data-00000-of-00001.arrow`, `state.json`,
`dataset_info.json`, and `dataset_dict.json` at the top.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from data_prep.prepared import COLUMNS
from data_prep.render import ID_SCHEMA_DISK

_TYPES = {
    "user_id": datasets.Value("int64"),
    "history": datasets.List(datasets.Value("int64")),
    "target": datasets.Value("int64"),
    "candidates": datasets.List(datasets.Value("int64")),
    "prompt": datasets.Value("string"),
    "chosen": datasets.Value("string"),
    "rejected": datasets.List(datasets.Value("string")),
}
FEATURES = datasets.Features({name: _TYPES[name] for name in COLUMNS})  # the contract's order
# --storage ids: the id columns only (the text is rendered on load, data_prep/render.py)
ID_FEATURES = datasets.Features.from_arrow_schema(ID_SCHEMA_DISK)
DATA_FILE = "data-00000-of-00001.arrow"


class SplitWriter:
    """Append Arrow tables of one split; `close(fingerprint)` writes the metadata files."""

    def __init__(self, folder: Path, split: str, storage: str = "text"):
        self.folder = folder
        self.split = split
        self.features = ID_FEATURES if storage == "ids" else FEATURES
        folder.mkdir(parents=True, exist_ok=True)
        self.writer = ArrowWriter(features=self.features, path=str(folder / DATA_FILE),
                                  embed_local_files=False)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self.features is ID_FEATURES:
            table = table.cast(ID_SCHEMA_DISK)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self, fingerprint: str) -> None:
        self.writer.finalize()
        self.writer.close()
        state = {
            "_data_files": [{"filename": DATA_FILE}],
            "_fingerprint": fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": self.split,
        }
        (self.folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(datasets.DatasetInfo(features=self.features))
        info = {key: info[key] for key in sorted(info)}
        (self.folder / "dataset_info.json").write_text(json.dumps(info, indent=2))


def write_dataset_dict_json(folder: Path, splits: list[str]) -> None:
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": splits}))


def items_jsonl(item_ids, titles, train_counts) -> bytes:
    """The bytes of items.jsonl: one `{"item_id", "title", "train_count"}` line per catalogue item."""
    return "".join(
        json.dumps({"item_id": int(item_id), "title": title, "train_count": int(count)}, ensure_ascii=False) + "\n"
        for item_id, title, count in zip(item_ids, titles, train_counts, strict=True)
    ).encode("utf-8")


def write_items(folder: Path, item_ids, titles, train_counts) -> None:
    """items.jsonl (see items_jsonl)."""
    (folder / "items.jsonl").write_bytes(items_jsonl(item_ids, titles, train_counts))


def templates_json(texts: list[str]) -> bytes:
    """The bytes of templates.json (the template texts, in choice order)."""
    return (json.dumps({"texts": list(texts)}, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def write_meta(folder: Path, meta: dict) -> None:
    """meta.json (sorted keys, the fingerprint already inside)."""
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

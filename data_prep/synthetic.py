"""A small synthetic prepared dataset (docs/contracts.md format) for tests and smoke runs.

Users and items are random, but the target follows a learnable rule (the candidate right after
the last history item in id order, wrapping around), so a tiny model can show that training
moves the likelihood towards the target. Not a benchmark: real data comes from ``data_prep``.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa

from data_prep.build import atomic_dir
from data_prep.prepared import COLUMNS, FORMAT_VERSION, SPLITS, fingerprint
from data_prep.prompts import PLACEHOLDERS, item_token
from data_prep.writer import FEATURES, SplitWriter, write_dataset_dict_json, write_items, write_meta

_WORDS = (
    "Star", "Wars", "Toy", "Story", "Heat", "Casino", "Fargo", "Babe", "Love", "Night",
    "Day", "Blue", "Red", "Man", "Golden", "River", "City", "Dream", "Ghost", "Island",
)


def synthetic_prepared(
    output_dir: str | Path,
    *,
    num_items: int = 60,
    rows: tuple[int, int, int] = (64, 16, 16),
    num_candidates: int = 20,
    history_length: int = 5,
    item_format: str = "title",
    item_placeholders: bool = False,
    seed: int = 0,
) -> Path:
    """Write a prepared directory (the data_prep writer, meta.json and fingerprint) to DIR; return DIR.

    ``item_placeholders``: title prompts with LLaRA's placeholders after each title (as
    ``python -m data_prep --item-placeholders``)."""
    rng = random.Random(seed)
    titles = [f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} ({1950 + i})" for i in range(num_items)]

    def name(i: int) -> str:
        return item_token(i) if item_format == "token" else titles[i]

    def shown(i: int, kind: str) -> str:
        return f"{name(i)} {PLACEHOLDERS[kind]}" if item_placeholders else name(i)

    splits: dict[str, list[dict]] = {}
    user = 0
    for split, count in zip(SPLITS, rows, strict=True):
        records = []
        for _ in range(count):
            history = rng.sample(range(num_items), history_length)
            target = (history[-1] + 1) % num_items
            while target in history:
                target = (target + 1) % num_items
            pool = [i for i in range(num_items) if i not in history and i != target]
            candidates = rng.sample(pool, num_candidates - 1) + [target]
            rng.shuffle(candidates)
            prompt = (
                "This user has watched " + ", ".join(shown(i, "history") for i in history)
                + ". Which of these would they watch next? " + ", ".join(shown(i, "candidates") for i in candidates)
                + ". Answer:"
            )
            records.append({
                "user_id": user, "history": history, "target": target, "candidates": candidates,
                "prompt": prompt, "chosen": name(target),
                "rejected": [name(c) for c in candidates if c != target],
            })
            user += 1
        splits[split] = records
    train_counts = [0] * num_items
    for row in splits["train"]:
        for i in row["history"] + [row["target"]]:
            train_counts[i] += 1
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": "synthetic",
        "domain": "movie",
        "num_candidates": num_candidates,
        "item_format": item_format,
        **({"item_placeholders": True} if item_placeholders else {}),
        "columns": list(COLUMNS),
        "args": {"num_items": num_items, "rows": list(rows), "seed": seed},
        "counts": {"items": num_items, "splits": {s: {"examples": len(r)} for s, r in splits.items()}},
        "sources": {},
        "package_version": "synthetic",
    }
    meta["fingerprint"] = fingerprint(meta)
    out = Path(output_dir)
    with atomic_dir(out) as tmp:
        for split, records in splits.items():
            writer = SplitWriter(tmp / split, split)
            writer.write(pa.Table.from_pylist(records, schema=FEATURES.arrow_schema))
            writer.close(hashlib.sha256(f"{meta['fingerprint']}/{split}".encode()).hexdigest()[:16])
        write_dataset_dict_json(tmp, list(SPLITS))
        write_items(tmp, range(num_items), titles, train_counts)
        write_meta(tmp, meta)
    return out

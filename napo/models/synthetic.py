"""A small synthetic prepared dataset (docs/contracts.md format) for tests and smoke runs.

Users and items are random, but the target follows a learnable rule (the candidate right after
the last history item in id order, wrapping around), so a tiny model can show that training
moves the likelihood towards the target. Not a benchmark: real data comes from ``data_prep``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

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
    seed: int = 0,
) -> Path:
    """Write DIR/{dataset_dict.json, train/, valid/, test/, items.jsonl, meta.json}; return DIR."""
    from datasets import Dataset, DatasetDict

    from napo.models.tiny import item_token

    rng = random.Random(seed)
    titles = [f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} ({1950 + i})" for i in range(num_items)]

    def name(i: int) -> str:
        return item_token(i) if item_format == "token" else titles[i]

    splits: dict[str, Any] = {}
    user = 0
    for split, count in zip(("train", "valid", "test"), rows, strict=True):
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
                "This user has watched " + ", ".join(name(i) for i in history)
                + ". Which of these would they watch next? " + ", ".join(name(i) for i in candidates)
                + ". Answer:"
            )
            records.append({
                "user_id": user, "history": history, "target": target, "candidates": candidates,
                "prompt": prompt, "chosen": name(target),
                "rejected": [name(c) for c in candidates if c != target],
            })
            user += 1
        splits[split] = Dataset.from_list(records)
    out = Path(output_dir)
    DatasetDict(splits).save_to_disk(str(out))
    train_counts = [0] * num_items
    for row in splits["train"]:
        for i in row["history"] + [row["target"]]:
            train_counts[i] += 1
    with open(out / "items.jsonl", "w", encoding="utf-8") as handle:
        for i, title in enumerate(titles):
            handle.write(json.dumps({"item_id": i, "title": title, "train_count": train_counts[i]}) + "\n")
    meta = {
        "format_version": 1,
        "dataset": "synthetic",
        "domain": "movie",
        "num_candidates": num_candidates,
        "item_format": item_format,
        "args": {"num_items": num_items, "rows": list(rows), "seed": seed},
        "counts": {
            "items": num_items,
            "splits": {name_: {"examples": len(ds)} for name_, ds in splits.items()},
        },
        "sources": {},
        "package_version": "synthetic",
    }
    meta["fingerprint"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out

"""The collaborative-filtering (CF) protocol: user-item sets split per user, 80/10/10.

`python -m data_prep --dataset ml-100k --protocol cf --output-dir DIR` (any source) writes

    DIR/train.csv, DIR/valid.csv, DIR/test.csv   columns user_id, item_id (int64)
    DIR/items.jsonl                              item_id, title, train_count
    DIR/meta.json                                how it was made; `protocol: "cf"`; fingerprint

Split rules (per user, after removing duplicate (user, item) pairs; order is irrelevant here):
- the user's n items are shuffled with `numpy.random.default_rng([seed, 7])` (one permutation key
  per interaction, drawn once for the whole log, so the split does not depend on user order);
- n_test = max(1, round_half_up(0.1 n)), n_valid = max(1, round_half_up(0.1 n)), the rest is
  train; users with n < 3 are train-only (they add to the graph, not to evaluation);
- so a 5-item user (Amazon 5-core) gets 3/1/1 (60/20/20): the effective ratio of light users is
  not 80/10/10, and meta.json records the realised shares.

Presplit sequence sources (seq-txt, lastfm-llara) are read as sets: every line's history and
target are one user's items (the files' own user split is ignored; each line is a user).
Timestamps are not used. Everything is written to a temporary sibling of DIR and renamed at the
end (`build.atomic_dir`), like the sequential protocol.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.prepared import SPLITS, PreparedDataError, fingerprint, read_meta
from data_prep.sources import SourceData, load_source

FORMAT_VERSION = 1
PROTOCOL = "cf"
RATIOS = (0.8, 0.1, 0.1)
MIN_SPLIT_USER = 3  # fewer items: train-only
# The arguments that change a CF directory; the sequential ones (history, candidates, templates)
# do not apply and stay out of meta.json.
CF_ARGS = ("dataset", "input_dir", "interactions", "items", "min_rating", "seed", "protocol")


def user_item_pairs(src: SourceData) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs of a source, sorted by (user, item): user [T], item [T] int64."""
    if src.interactions is not None:
        user = src.interactions["user_id"].to_numpy(np.int64)
        item = src.interactions["item_id"].to_numpy(np.int64)
    else:  # presplit sequences: every line (example) is one user's item set
        users, items = [], []
        next_user = 0
        for split in SPLITS:
            ex = src.examples[split]
            raw_users, lengths = np.unique(ex.user_id, return_inverse=True)[0], np.diff(ex.hist_offsets)
            dense = np.searchsorted(raw_users, ex.user_id) + next_user
            users += [np.repeat(dense, lengths), dense]
            items += [ex.hist_values, ex.target]
            next_user += len(raw_users)
        user, item = np.concatenate(users), np.concatenate(items)
    pairs = np.unique(np.stack([user, item], axis=1), axis=0)  # sorted by (user, item)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def split_labels(user: np.ndarray, seed: int) -> np.ndarray:
    """0/1/2 (train/valid/test) per pair; `user` [T] sorted. See the module docstring."""
    t = len(user)
    if t == 0:
        return np.zeros(0, np.int8)
    key = np.random.default_rng([seed, 7]).random(t)
    order = np.lexsort((key, user))  # shuffled within each user
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    sizes = np.diff(np.r_[starts, t])
    n = np.repeat(sizes, sizes)  # [T] size of the pair's user (user is sorted, so is order's)
    pos = np.arange(t) - np.repeat(starts, sizes)  # position inside the shuffled user
    n_test = np.maximum(1, _round_half_up(RATIOS[2] * n))
    n_valid = np.maximum(1, _round_half_up(RATIOS[1] * n))
    lab = np.where(pos < n_test, 2, np.where(pos < n_test + n_valid, 1, 0)).astype(np.int8)
    lab[n < MIN_SPLIT_USER] = 0
    out = np.empty(t, np.int8)
    out[order] = lab
    return out


def build_cf(args: argparse.Namespace) -> dict:
    """Run the CF protocol; returns meta (also written to DIR/meta.json)."""
    from data_prep.build import atomic_dir, check_output_dir, package_version

    if getattr(args, "train_prefixes", False):
        raise DataPrepError("--train-prefixes makes sequential rows (history -> next item); --protocol cf "
                            "splits each user's item set and has no positions, so drop the flag")
    out = check_output_dir(args)
    src = load_source(args)
    items = src.items.sort_values("item_id").reset_index(drop=True)
    user, item = user_item_pairs(src)
    if len(user) == 0:
        raise DataPrepError(f"{args.dataset}: no interactions left; check the input and --min-rating")
    label = split_labels(user, args.seed)
    num_items = int(items["item_id"].max()) + 1
    counts = np.bincount(item[label == 0], minlength=num_items)
    split_info = {}
    for i, name in enumerate(SPLITS):
        sel = label == i
        split_info[name] = {"interactions": int(sel.sum()), "users": int(len(np.unique(user[sel]))),
                            "share": round(float(sel.mean()), 4)}
    if split_info["test"]["interactions"] == 0:
        raise DataPrepError(f"{args.dataset}: no user has {MIN_SPLIT_USER}+ items, so the test split is empty")
    sizes = np.bincount(user)
    meta = {
        "format_version": FORMAT_VERSION,
        "protocol": PROTOCOL,
        "dataset": args.dataset,
        "args": {k: getattr(args, k, None) for k in CF_ARGS},
        "counts": {"users": int(user.max()) + 1, "items": int(len(items)),
                   "interactions": int(len(user)), "splits": split_info,
                   "train_only_users": int((sizes[sizes > 0] < MIN_SPLIT_USER).sum())},
        "split_rule": "per user: shuffle (numpy default_rng([seed, 7])), n_test = n_valid = "
                      "max(1, round_half_up(0.1 n)), rest train; users with n < 3 train-only",
        "sources": src.checksums,
        "notes": {**src.notes, "duplicates_removed": True, "timestamps": "not used"},
        "package_version": package_version(),
    }
    meta["fingerprint"] = fingerprint(meta)
    with atomic_dir(out) as tmp:
        for i, name in enumerate(SPLITS):
            sel = label == i
            pd.DataFrame({"user_id": user[sel], "item_id": item[sel]}).to_csv(tmp / f"{name}.csv", index=False)
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for item_id, title in zip(items["item_id"].tolist(), items["title"].tolist(), strict=True):
                f.write(json.dumps({"item_id": item_id, "title": title,
                                    "train_count": int(counts[item_id])}, ensure_ascii=False) + "\n")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def is_cf_directory(path: str | Path) -> bool:
    """Whether a prepared directory holds the CF protocol (meta.json `protocol: cf`)."""
    meta = read_meta(Path(path), "run `python -m data_prep --dataset NAME --output-dir DIR` first")
    return meta.get("protocol") == PROTOCOL


def summary_table(meta: dict) -> str:
    c = meta["counts"]
    lines = [f"{meta['dataset']} (cf): {c['users']:,} users, {c['items']:,} items, "
             f"{c['interactions']:,} interactions, {c['train_only_users']:,} train-only users",
             f"{'split':<6} {'users':>8} {'interactions':>13} {'share':>7}"]
    for name in SPLITS:
        s = c["splits"][name]
        lines.append(f"{name:<6} {s['users']:>8,} {s['interactions']:>13,} {s['share']:>7.3f}")
    return "\n".join(lines)


def load_cf(path: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], pd.DataFrame, dict]:
    """Read DIR written by `--protocol cf`.

    Returns ({split: (user [T] int64, item [T] int64)}, items DataFrame (item_id, title,
    train_count), meta). Raises `PreparedDataError` (one line) on a missing or edited directory.
    """
    root = Path(path)
    hint = "run `python -m data_prep --dataset NAME --protocol cf --output-dir DIR` first"
    meta = read_meta(root, hint)
    if meta.get("protocol") != PROTOCOL:
        raise PreparedDataError(f"{root}: a sequential (candidate-list) dataset, not the CF protocol; {hint}")
    if meta.get("format_version") != FORMAT_VERSION or fingerprint(meta) != meta.get("fingerprint"):
        raise PreparedDataError(f"{root}/meta.json: fingerprint or format_version mismatch (edited?); prepare the data again")
    splits = {}
    for name in SPLITS:
        f = root / f"{name}.csv"
        if not f.is_file():
            raise PreparedDataError(f"{f}: missing; prepare the data again")
        df = pd.read_csv(f, dtype={"user_id": "int64", "item_id": "int64"})
        if len(df) != meta["counts"]["splits"][name]["interactions"]:
            raise PreparedDataError(f"{f}: {len(df)} rows but meta.json says "
                                    f"{meta['counts']['splits'][name]['interactions']}; prepare the data again")
        splits[name] = (df["user_id"].to_numpy(), df["item_id"].to_numpy())
    items = pd.read_json(root / "items.jsonl", lines=True,
                         dtype={"item_id": "int64", "title": "str", "train_count": "int64"})
    return splits, items, meta

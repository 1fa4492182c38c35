"""Property-based tests (hypothesis) of data_prep on random logs: for every row of every split,
candidates are distinct, contain the target, exclude the history and have the configured width;
history + target is a contiguous, chronological window of the user's log (so nothing from a later
split leaks in); user and item ids round-trip through the saved id maps."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from data_prep.__main__ import main
from data_prep.prepared import load_prepared


@st.composite
def logs(draw):
    """(interactions, items, num_candidates, max_history, split): each user has distinct items at
    distinct times; ids are strings or integers, catalogue large enough for the candidate width."""
    num_candidates = draw(st.integers(2, 6))
    max_history = draw(st.integers(1, 4))
    num_items = draw(st.integers(num_candidates + max_history + 1, 30))
    string_ids = draw(st.booleans())
    rows = []
    for user in range(draw(st.integers(5, 12))):
        length = draw(st.integers(1, min(num_items, 10)))
        items = draw(st.lists(st.integers(0, num_items - 1), min_size=length, max_size=length, unique=True))
        times = draw(st.lists(st.integers(0, 10**9), min_size=length, max_size=length, unique=True))
        for item, t in zip(items, times, strict=True):
            rows.append((f"user {user}" if string_ids else user * 7 + 100, f"i{item}" if string_ids else item, t))
    rows = draw(st.permutations(rows))  # file order must not matter
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    ids = [f"i{i}" if string_ids else i for i in range(num_items)]
    items = pd.DataFrame({"item_id": ids, "title": [f"Title {i}" for i in range(num_items)]})
    return inter, items, num_candidates, max_history, draw(st.sampled_from(["loo", "user"]))


def prepare(folder: Path, inter, items, num_candidates, max_history, split):
    inter.to_csv(folder / "inter.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    rc = main(["--dataset", "interactions", "--interactions", str(folder / "inter.csv"), "--items",
               str(folder / "items.csv"), "--output-dir", str(folder / "out"), "--num-candidates",
               str(num_candidates), "--min-history", "1", "--max-history", str(max_history), "--split", split,
               "--candidate-sampler", "uniform", "--quiet"])
    return rc


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs())
def test_every_row_keeps_the_contract(log):
    inter, items, num_candidates, max_history, split = log
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rc = prepare(folder, inter, items, num_candidates, max_history, split)
        event(f"exit {rc}")
        if rc == 2:  # too little data for a split: a clear refusal, and nothing written
            assert not (folder / "out").exists()
            return
        assert rc == 0
        dd, saved_items, meta = load_prepared(folder / "out")
        out = folder / "out"
        user_map = pd.read_csv(out / "id_map_users.csv", dtype={"original_id": str})
        item_map = pd.read_csv(out / "id_map_items.csv", dtype={"original_id": str})
        to_user = dict(zip(user_map["user_id"], user_map["original_id"], strict=True))
        to_item = dict(zip(item_map["item_id"], item_map["original_id"], strict=True))
        # ids round-trip: the maps are bijections over the log's ids, titles follow the item
        assert sorted(to_user.values()) == sorted(inter["user_id"].astype(str).unique())
        assert set(to_item.values()) <= set(items["item_id"].astype(str))
        title_of = dict(zip(items["item_id"].astype(str), items["title"], strict=True))
        assert all(title_of[to_item[i]] == t for i, t in zip(saved_items["item_id"], saved_items["title"], strict=True))
        # each user's log in time order, in original ids
        ordered = inter.sort_values("timestamp")
        seqs = {str(u): [str(i) for i in g["item_id"]] for u, g in ordered.groupby("user_id", sort=False)}
        positions = {}
        for name in ("train", "valid", "test"):
            for row in dd[name]:
                cands, hist, target = row["candidates"], row["history"], row["target"]
                assert len(cands) == num_candidates == meta["num_candidates"]
                assert len(set(cands)) == num_candidates and target in cands
                assert not set(cands) & set(hist)
                assert 1 <= len(hist) <= max_history
                seq = seqs[to_user[row["user_id"]]]
                window = [to_item[i] for i in [*hist, target]]
                j = seq.index(window[-1])  # items are distinct per user: one position
                assert seq[j - len(hist): j + 1] == window  # contiguous, oldest first, ends at the target
                positions.setdefault(row["user_id"], {}).setdefault(name, []).append(j)
        for by_split in positions.values():
            if split == "loo":  # train targets before the valid target before the test target
                order = [p for name in ("train", "valid", "test") for p in sorted(by_split.get(name, []))]
                assert order == sorted(order) and len(set(order)) == len(order)
            else:  # split by user: a user belongs to one split
                assert len(by_split) == 1

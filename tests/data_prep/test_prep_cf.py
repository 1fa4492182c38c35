"""The CF protocol (--protocol cf): per-user 80/10/10 split of user-item sets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_prep.__main__ import main
from data_prep.cf import load_cf, split_labels
from data_prep.prepared import PreparedDataError


def _log(tmp_path, sizes, n_items=40, dup=False):
    rng = np.random.default_rng(1)
    rows = []
    for u, k in enumerate(sizes):
        for j, it in enumerate(rng.choice(n_items, k, replace=False)):
            rows.append((u, int(it), 1000 + j))
    if dup:
        rows.append(rows[0][:2] + (5000,))  # a repeated (user, item) pair
    ip, tp = tmp_path / "inter.csv", tmp_path / "items.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(ip, index=False)
    pd.DataFrame({"item_id": range(n_items), "title": [f"Film {i}" for i in range(n_items)]}).to_csv(tp, index=False)
    return ip, tp


def _prep(ip, tp, out, *extra):
    return main(["--dataset", "interactions", "--interactions", str(ip), "--items", str(tp),
                 "--protocol", "cf", "--output-dir", str(out), "--quiet", *map(str, extra)])


def test_split_rules_per_user(tmp_path):
    sizes = [2, 3, 5, 10, 20, 25, 1]
    ip, tp = _log(tmp_path, sizes, dup=True)
    assert _prep(ip, tp, tmp_path / "cf") == 0
    splits, items, meta = load_cf(tmp_path / "cf")
    per = {name: pd.Series(u).value_counts().to_dict() for name, (u, _) in splits.items()}
    # n < 3 train-only; n_test = n_valid = max(1, round_half_up(0.1 n)); the rest train
    want = {0: (2, 0, 0), 1: (1, 1, 1), 2: (3, 1, 1), 3: (8, 1, 1), 4: (16, 2, 2), 5: (19, 3, 3), 6: (1, 0, 0)}
    for u, (tr, va, te) in want.items():
        assert (per["train"].get(u, 0), per["valid"].get(u, 0), per["test"].get(u, 0)) == (tr, va, te), u
    pairs = [set(zip(*map(np.ndarray.tolist, splits[s]), strict=True)) for s in ("train", "valid", "test")]
    assert not (pairs[0] & pairs[1]) and not (pairs[0] & pairs[2]) and not (pairs[1] & pairs[2])
    assert sum(map(len, pairs)) == sum(sizes)  # the duplicate pair was merged
    assert meta["counts"]["train_only_users"] == 2
    counts = np.bincount(splits["train"][1], minlength=len(items))
    assert items["train_count"].tolist() == counts.tolist()


def test_deterministic_and_seeded(tmp_path):
    ip, tp = _log(tmp_path, [12] * 10)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert _prep(ip, tp, tmp_path / name, "--seed", seed) == 0
    fp = {n: json.loads((tmp_path / n / "meta.json").read_text())["fingerprint"] for n in "abc"}
    assert fp["a"] == fp["b"] != fp["c"]
    assert (tmp_path / "a" / "test.csv").read_bytes() == (tmp_path / "b" / "test.csv").read_bytes()
    assert (tmp_path / "a" / "test.csv").read_bytes() != (tmp_path / "c" / "test.csv").read_bytes()


def test_split_labels_do_not_depend_on_other_users():
    user = np.repeat(np.arange(3), [4, 10, 6])
    lab = split_labels(user, 0)
    assert [(lab[user == u] == s).sum() for u in range(3) for s in (0, 1, 2)] == [2, 1, 1, 8, 1, 1, 4, 1, 1]


def test_reader_rejects_edited_and_sequential_dirs(tmp_path):
    ip, tp = _log(tmp_path, [12] * 10)
    assert _prep(ip, tp, tmp_path / "cf") == 0
    meta_path = tmp_path / "cf" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["counts"]["users"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match="fingerprint"):
        load_cf(tmp_path / "cf")
    assert main(["--dataset", "interactions", "--interactions", str(ip), "--items", str(tp),
                 "--output-dir", str(tmp_path / "seq"), "--quiet", "--num-candidates", "5"]) == 0
    with pytest.raises(PreparedDataError, match="not the CF protocol"):
        load_cf(tmp_path / "seq")


def test_unknown_protocol_is_one_line_error(tmp_path, capsys):
    ip, tp = _log(tmp_path, [12] * 4)
    rc = main(["--dataset", "interactions", "--interactions", str(ip), "--items", str(tp),
               "--protocol", "graph", "--output-dir", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unknown --protocol 'graph'" in err and "\n" not in err


def test_seq_txt_lines_become_item_sets(tmp_path):
    d = tmp_path / "seq"
    d.mkdir()
    (d / "train_data.txt").write_text("1 2 3 4 5\n2 3 4 6 7 8\n")
    (d / "valid_data.txt").write_text("5 6 7 1 1\n")
    (d / "test_data.txt").write_text("8 7 6 5 4 3 2\n")
    assert main(["--dataset", "seq-txt", "--input-dir", str(d), "--protocol", "cf",
                 "--output-dir", str(tmp_path / "cf"), "--quiet"]) == 0
    splits, items, meta = load_cf(tmp_path / "cf")
    user = np.concatenate([splits[s][0] for s in ("train", "valid", "test")])
    assert np.bincount(user).tolist() == [5, 6, 4, 7]  # line 3 repeats item 1 once

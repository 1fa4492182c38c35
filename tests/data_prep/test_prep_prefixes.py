"""--train-prefixes: every position of a seq-txt training line becomes a training row."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.__main__ import main
from data_prep.prepared import COLUMNS, load_prepared
from data_prep.sequences import prefix_examples
from data_prep.sources import Examples

TRAIN = "1 2 3 4 5\n6 7 8 9\n10 11 12 13 14 15 16 17\n"
VALID = "3 4 5 6 7\n"
TEST = "7 8 9 10 11 12\n1 2\n"
# --min-history 2 --max-history 4, written out by hand: (user, history, target).
EXPANDED = [
    (0, [1, 2], 3), (0, [1, 2, 3], 4), (0, [1, 2, 3, 4], 5),
    (1, [6, 7], 8), (1, [6, 7, 8], 9),
    (2, [10, 11], 12), (2, [10, 11, 12], 13), (2, [10, 11, 12, 13], 14), (2, [11, 12, 13, 14], 15),
    (2, [12, 13, 14, 15], 16), (2, [13, 14, 15, 16], 17),
]


@pytest.fixture
def seq_dir(tmp_path):
    d = tmp_path / "seq"
    d.mkdir()
    for name, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (d / f"{name}_data.txt").write_text(text)
    return d


def _build(seq_dir, out, *extra):
    args = ["--dataset", "seq-txt", "--input-dir", seq_dir, "--output-dir", out, "--num-candidates", 5,
            "--min-history", 2, "--max-history", 4, *extra, "--quiet"]
    assert main([str(a) for a in args]) == 0
    return load_prepared(out)


def _rows(ds):
    return list(zip(ds["user_id"], ds["history"], ds["target"], strict=True))


def test_known_expanded_rows(seq_dir, tmp_path):
    dd, _, meta = _build(seq_dir, tmp_path / "p", "--train-prefixes", "--item-format", "token")
    plain, _, _ = _build(seq_dir, tmp_path / "plain", "--item-format", "token")
    assert [(u, list(h), t) for u, h, t in _rows(dd["train"])] == EXPANDED
    assert meta["counts"]["splits"]["train"]["examples"] == len(EXPANDED) == 11
    # Each row has its own valid candidate list: 5 distinct items, the target once, none from the history.
    for row in dd["train"]:
        cands = row["candidates"]
        assert len(set(cands)) == 5 and row["target"] in cands and not set(cands) & set(row["history"])
        assert row["chosen"] == f"<item_{row['target']}>"
    # The last row of each line is the row the plain build makes (llara draws depend on target
    # and pool size only, so its candidates are the same too; the prompt template is drawn per
    # row position, so it may differ).
    last = [i for i in range(len(EXPANDED)) if i + 1 == len(EXPANDED) or EXPANDED[i + 1][0] != EXPANDED[i][0]]
    same = ["user_id", "history", "target", "candidates", "chosen", "rejected"]
    assert dd["train"].select(last).select_columns(same).to_dict() == plain["train"].select_columns(same).to_dict()


@pytest.mark.parametrize("extra", [
    ("--item-format", "token"),
    ("--item-format", "token", "--prompt-style", "history", "--storage", "text", "--candidate-sampler", "uniform"),
    ("--candidate-sampler", "popularity", "--storage", "ids"),
])
def test_valid_and_test_unchanged(seq_dir, tmp_path, extra):
    dd, items, meta = _build(seq_dir, tmp_path / "p", "--train-prefixes", *extra)
    plain, plain_items, plain_meta = _build(seq_dir, tmp_path / "plain", *extra)
    for split in ("valid", "test"):
        assert dd[split].column_names == plain[split].column_names == list(COLUMNS)
        assert dd[split].to_dict() == plain[split].to_dict()  # rows, candidates, prompts: all equal
        assert meta["counts"]["splits"][split] == plain_meta["counts"]["splits"][split]
    assert items.equals(plain_items)  # train counts: every id on the training lines either way
    assert dd["train"].num_rows == 11 and plain["train"].num_rows == 3


def test_deterministic(seq_dir, tmp_path):
    extra = ("--train-prefixes", "--candidate-sampler", "uniform", "--item-format", "token")
    a, _, meta_a = _build(seq_dir, tmp_path / "a", *extra)
    b, _, meta_b = _build(seq_dir, tmp_path / "b", *extra)
    assert meta_a == meta_b
    for split in a:
        assert a[split].to_dict() == b[split].to_dict()
    # another seed draws other training candidates from the same rows
    c, _, _ = _build(seq_dir, tmp_path / "c", *extra, "--seed", "7")
    assert _rows(c["train"]) == _rows(a["train"]) and c["train"]["candidates"] != a["train"]["candidates"]


def test_meta_and_fingerprint(seq_dir, tmp_path):
    from napo.cards import dataset_facts

    _, _, meta = _build(seq_dir, tmp_path / "p", "--train-prefixes")
    _, _, plain = _build(seq_dir, tmp_path / "plain")
    assert meta["train_prefixes"] is True and meta["args"]["train_prefixes"] is True
    # off: absent, so directories prepared before the flag keep their fingerprint
    assert "train_prefixes" not in plain and "train_prefixes" not in plain["args"]
    assert meta["fingerprint"] != plain["fingerprint"]
    assert dataset_facts("d", meta)["train_rows"] == "one per prefix of each training sequence"
    assert "train_rows" not in dataset_facts("d", plain)


def _naive_prefixes(seqs, min_history, max_history):
    out = []
    for user, seq in seqs:
        for k in range(len(seq)):
            if k >= min_history:
                out.append((user, seq[max(0, k - max_history):k], seq[k]))
    return out


@pytest.mark.parametrize("min_history,max_history", [(0, 1), (0, 3), (1, 1), (2, 4), (3, 10), (6, 6)])
def test_prefix_examples_match_a_loop(min_history, max_history):
    rng = np.random.default_rng(0)
    seqs = [(int(u), rng.integers(0, 50, size=int(rng.integers(1, 12))).tolist())
            for u in rng.permutation(40)[:25]]  # user ids not in row order; a length-1 line
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) - 1 for _, s in seqs], out=offsets[1:])
    ex = Examples(np.array([u for u, _ in seqs], dtype=np.int64), np.array([s[-1] for _, s in seqs], dtype=np.int64),
                  offsets, np.array([i for _, s in seqs for i in s[:-1]], dtype=np.int64))
    got = prefix_examples(ex, min_history, max_history)
    rows = [(int(got.user_id[i]), got.hist_values[got.hist_offsets[i]:got.hist_offsets[i + 1]].tolist(),
             int(got.target[i])) for i in range(len(got))]
    assert rows == _naive_prefixes(seqs, min_history, max_history)


@pytest.mark.parametrize("args,needle", [
    (["--dataset", "interactions", "--interactions", "{inter}", "--items", "{items}", "--split", "loo"],
     "--train-prefixes expands the one-row-per-user training lines of --dataset seq-txt; --dataset interactions"),
    (["--dataset", "seq-txt", "--input-dir", "{seq}", "--protocol", "cf"],
     "--train-prefixes makes sequential rows (history -> next item); --protocol cf"),
])
def test_refused_where_rows_are_not_per_user(tmp_path, log_files, seq_dir, capsys, args, needle):
    inter, items = log_files
    args = [a.format(inter=inter, items=items, seq=seq_dir) for a in args]
    rc = main([*args, "--train-prefixes", "--output-dir", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o").exists()


def test_amazon_beauty_prefixes(shared_data, tmp_path):
    src = shared_data / "amazon-seq" / "Beauty"
    common = ["--dataset", "seq-txt", "--input-dir", src, "--item-format", "token", "--quiet"]
    assert main([str(a) for a in [*common, "--train-prefixes", "--output-dir", tmp_path / "p"]]) == 0
    assert main([str(a) for a in [*common, "--output-dir", tmp_path / "plain"]]) == 0
    dd, _, _ = load_prepared(tmp_path / "p", text=False)
    plain, _, _ = load_prepared(tmp_path / "plain", text=False)
    lengths = np.array([len(x.split()) for x in (src / "train_data.txt").read_text().splitlines()])
    assert dd["train"].num_rows == int(np.maximum(lengths - 3, 0).sum())  # default --min-history 3
    for split in ("valid", "test"):
        assert dd[split].to_dict() == plain[split].to_dict()

"""The interactions log is read in chunks: with tiny chunks forced, every output file is
byte-identical to the single-chunk read, for CSV, TSV, Parquet and JSONL; errors in a later chunk
name the file's own line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_prep.__main__ import main
from data_prep.sources import tables


def _log(string_items: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A log with string user ids (some padded with spaces), repeated rows, ties in time and a
    rating column; item ids are integers or text."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(30):
        for _ in range(int(rng.integers(2, 12))):
            rows.append((f"u{u}" if u % 7 else f" u{u} ", int(rng.integers(0, 40)),
                         int(rng.integers(0, 50)) * 60, float(rng.integers(1, 6))))
    rows += rows[:15]  # logging duplicates
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame({"item_id": np.arange(40), "title": [f"Film {i}" for i in range(40)]})
    if string_items:
        inter["item_id"] = "B" + inter["item_id"].astype(str)
        items["item_id"] = "B" + items["item_id"].astype(str)
    return inter, items


def _write(inter: pd.DataFrame, path):
    if path.suffix == ".parquet":
        inter.to_parquet(path)
    elif path.suffix == ".jsonl":
        inter.to_json(path, orient="records", lines=True)
    else:
        inter.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")


def _run(tmp_path, inter_path, items_path, out, *extra):
    args = ["--dataset", "interactions", "--interactions", inter_path, "--items", items_path,
            "--output-dir", out, "--num-candidates", 5, "--max-history", 4, "--quiet", *extra]
    assert main([str(a) for a in args]) == 0
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json"}  # run.json records the output path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
@pytest.mark.parametrize("ids", ["int_items", "text_items", "ints_then_text"])
def test_chunked_read_is_byte_identical(tmp_path, monkeypatch, suffix, ids):
    inter, items = _log(ids == "text_items")
    if ids == "ints_then_text":  # CSV: the first block reads as integers, a later one does not
        inter["user_id"] = [u.strip()[1:] if i < 100 else u for i, u in enumerate(inter["user_id"])]
        if suffix in (".csv", ".tsv"):  # "007" is the integer 7 in a CSV column of integers
            inter["item_id"] = [f"{i:03d}" if r % 3 == 0 else str(i) for r, i in enumerate(inter["item_id"])]
    ip, tp = tmp_path / f"inter{suffix}", tmp_path / "items.csv"
    _write(inter, ip)
    items.to_csv(tp, index=False)
    for extra in ((), ("--min-rating", 3, "--split", "loo")):
        whole = _run(tmp_path, ip, tp, tmp_path / "whole", "--overwrite", *extra)
        with monkeypatch.context() as m:
            m.setattr(tables, "READ_CHUNK_BYTES", 64)  # a few lines per chunk
            m.setattr(tables, "READ_CHUNK_ROWS", 3)
            chunked = _run(tmp_path, ip, tp, tmp_path / "chunked", "--overwrite", *extra)
        assert chunked.keys() == whole.keys() and "train/data-00000-of-00001.arrow" in whole
        for name in whole:
            assert chunked[name] == whole[name], name
        meta = json.loads(whole["meta.json"])
        if ids != "ints_then_text":  # (there the repeated rows' user ids changed form)
            assert meta["notes"].get("duplicate_rows_dropped", 0) > 0
        assert json.loads(chunked["meta.json"])["fingerprint"] == meta["fingerprint"]


def test_formats_give_the_same_dataset(tmp_path):
    """The same log as CSV, Parquet and JSONL: the same splits, items and id maps."""
    inter, items = _log(string_items=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    outs = []
    for suffix in (".csv", ".parquet", ".jsonl"):
        ip = tmp_path / f"inter{suffix}"
        _write(inter, ip)
        files = _run(tmp_path, ip, tmp_path / "items.csv", tmp_path / f"out{suffix}")
        # meta.json names the input file and so does every fingerprint (state.json) made from it
        outs.append({k: v for k, v in files.items() if k != "meta.json" and not k.endswith("state.json")})
    assert outs[0] == outs[1] == outs[2]


def test_error_in_a_later_chunk_names_the_file_line(tmp_path, monkeypatch, capsys):
    inter, items = _log(string_items=False)
    inter["timestamp"] = inter["timestamp"].astype(str)
    inter.loc[40, "timestamp"] = "soon"
    ip, tp = tmp_path / "inter.csv", tmp_path / "items.csv"
    _write(inter, ip)
    items.to_csv(tp, index=False)
    monkeypatch.setattr(tables, "READ_CHUNK_BYTES", 64)
    out = tmp_path / "o"
    assert main(["--dataset", "interactions", "--interactions", str(ip), "--items", str(tp),
                 "--output-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"data_prep: error: {ip}, line 42, column timestamp: cannot parse 'soon' as a time; "
                   "use Unix seconds or ISO 8601 dates (2024-01-31T12:00:00)"]
    assert not out.exists()


def test_jsonl_numbers_then_text_in_later_chunk(tmp_path, monkeypatch, capsys):
    """A whole-file JSONL read fails when a column changes from numbers to text; chunked too."""
    ip, tp = tmp_path / "inter.jsonl", tmp_path / "items.csv"
    lines = [json.dumps({"user_id": 1, "item_id": i, "timestamp": i}) for i in range(1, 6)]
    lines += [json.dumps({"user_id": "x", "item_id": i, "timestamp": 10 + i}) for i in range(1, 6)]
    ip.write_text("\n".join(lines) + "\n")
    tp.write_text("item_id,title\n1,A\n2,B\n3,C\n4,D\n5,E\n")
    monkeypatch.setattr(tables, "READ_CHUNK_BYTES", 64)
    out = tmp_path / "o"
    assert main(["--dataset", "interactions", "--interactions", str(ip), "--items", str(tp),
                 "--output-dir", str(out), "--num-candidates", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot parse (column user_id mixes number and text values)" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("line", [2, 61])
def test_non_utf8_byte_in_a_later_chunk(tmp_path, monkeypatch, capsys, suffix, line):
    inter, items = _log(string_items=False)
    ip, tp = tmp_path / f"inter{suffix}", tmp_path / "items.csv"
    _write(inter, ip)
    items.to_csv(tp, index=False)
    lines = ip.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"u", b"\xe9", 1)
    ip.write_bytes(b"\n".join(lines))
    monkeypatch.setattr(tables, "READ_CHUNK_BYTES", 64)
    out = tmp_path / "o"
    assert main(["--dataset", "interactions", "--interactions", str(ip), "--items", str(tp),
                 "--output-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    col = lines[line - 1].index(b"\xe9") + 1
    assert len(err) == 1 and f"{ip}, line {line}, column {col}: byte 0xe9 is not UTF-8" in err[0], err
    assert not out.exists()

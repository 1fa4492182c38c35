"""Odd and broken inputs beyond test_prep_bad_input.py: valid-but-odd ones succeed (with the
behaviour asserted), broken ones exit 2 with one line and leave no output directory.

Also covered elsewhere: non-UTF-8 bytes in titles (test_non_utf8_bytes), an items file missing ids
the log uses (test_items_missing_titles_for_used_items), a catalogue smaller than the candidate
count (test_fewer_items_than_candidates), meta.json edited (test_load_prepared_errors)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from data_prep.__main__ import main
from data_prep.prepared import PreparedDataError, load_prepared

ITEMS = "item_id,title\n1,A\n2,B\n3,C\n4,D\n5,E\n"
GOOD = "user_id,item_id,timestamp\n" + "".join(f"u{u},{i},{10 * i}\n" for u in (1, 2) for i in (1, 2, 3, 4, 5))


def _args(tmp_path, inter, items=ITEMS):
    ip, tp = tmp_path / "inter.csv", tmp_path / "items.csv"
    ip.write_text(inter)
    tp.write_text(items)
    return ["--dataset", "interactions", "--interactions", str(ip), "--items", str(tp), "--num-candidates", "3",
            "--min-history", "1", "--max-history", "2", "--split", "loo", "--quiet"]


def _fail(tmp_path, capsys, inter, items=ITEMS):
    out = tmp_path / "o"
    assert main([*_args(tmp_path, inter, items), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("data_prep: error: "), err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["inter.csv", "items.csv"]
    return err[0]


def _ok(tmp_path, inter, items=ITEMS, name="o"):
    out = tmp_path / name
    assert main([*_args(tmp_path, inter, items), "--output-dir", str(out)]) == 0
    return out, *load_prepared(out)


def test_empty_file(tmp_path, capsys):
    err = _fail(tmp_path, capsys, "")
    assert "inter.csv: the file is empty; it needs a header (user_id, item_id, timestamp)" in err
    err = _fail(tmp_path, capsys, GOOD, "")
    assert "items.csv: the file is empty; it needs a header (item_id, title)" in err


def test_header_only(tmp_path, capsys):
    err = _fail(tmp_path, capsys, "user_id,item_id,timestamp\n")
    assert "inter.csv: no rows (only a header); the file needs at least one row" in err
    assert "items.csv: no rows (only a header)" in _fail(tmp_path, capsys, GOOD, "item_id,title\n")


def test_column_of_the_wrong_type(tmp_path, capsys):
    err = _fail(tmp_path, capsys, GOOD.replace("u1,3,", "u1,3.5,").replace(",5,", ",5.0,"))
    assert "inter.csv, line 4, column item_id: id 3.5 is not an integer; ids must be integers or text" in err
    err = _fail(tmp_path, capsys, GOOD.replace(",30\n", ",true\n", 1))
    assert "line 4, column timestamp: cannot parse 'true' as a time" in err


def test_integral_float_ids_are_integers(tmp_path):
    _, dd, _, _ = _ok(tmp_path, GOOD.replace(",5,", ",5.0,"), name="floats")
    _, ref, _, _ = _ok(tmp_path, GOOD, name="plain")
    assert dd["test"][:] == ref["test"][:]


def test_timestamps_in_mixed_formats(tmp_path, capsys):
    dates_then_number = GOOD.replace("u1,1,10", "u1,1,2024-01-01T10:00:00", 1).replace(",10\n", ",2024-01-01\n")
    err = _fail(tmp_path, capsys, dates_then_number)
    assert "inter.csv, line 3, column timestamp: '20' is a number but line 2 is a date; use one time format" in err
    number_then_date = GOOD.replace("u1,3,30", "u1,3,2024-01-03")
    err = _fail(tmp_path, capsys, number_then_date)
    assert "line 4, column timestamp: '2024-01-03' is a date but line 2 is a number (Unix seconds)" in err


def test_ids_with_whitespace_are_the_same_ids(tmp_path):
    spaced = GOOD.replace("u1,2,", " u1 ,2,").replace(",4,", ", 4 ,")
    out, dd, items, _ = _ok(tmp_path, spaced, ITEMS.replace("4,D", " 4,D"), name="spaced")
    _, ref, ref_items, _ = _ok(tmp_path, GOOD, name="plain")
    assert pd.read_csv(out / "id_map_users.csv")["original_id"].tolist() == ["u1", "u2"]
    assert items.equals(ref_items)
    for split in dd:
        assert dd[split]["history"] == ref[split]["history"] and dd[split]["target"] == ref[split]["target"]


def test_duplicated_rows_are_dropped_once(tmp_path):
    out, dd, _, meta = _ok(tmp_path, GOOD + "u1,2,20\nu2,5,50\n", name="dups")
    _, ref, _, ref_meta = _ok(tmp_path, GOOD, name="plain")
    assert meta["notes"] == {"duplicate_rows_dropped": 2} and meta["counts"]["interactions"] == 10
    for split in dd:
        assert dd[split][:] == ref[split][:]
    # the same item at another time is a real re-interaction and stays
    _, again, _, meta = _ok(tmp_path, GOOD + "u1,2,60\n", name="again")
    assert "duplicate_rows_dropped" not in meta["notes"] and meta["counts"]["interactions"] == 11


def test_a_user_with_one_interaction_yields_no_example(tmp_path):
    _, dd, _, meta = _ok(tmp_path, GOOD + "u3,1,5\n")
    assert meta["counts"]["users"] == 3
    assert all(set(dd[s]["user_id"]) == {0, 1} for s in dd)  # u3 (id 2) has nothing to predict from


def test_prepared_directory_edited_after_writing(tmp_path):
    out, *_ = _ok(tmp_path, GOOD)
    items = out / "items.jsonl"
    items.write_text(items.read_text().replace('"title": "C"', '"title": "Z"'))
    with pytest.raises(PreparedDataError) as err:
        load_prepared(out)
    assert "items.jsonl: edited after writing (sha256 differs" in str(err.value)
    meta = json.loads((out / "meta.json").read_text())
    meta["files"]["items.jsonl"]["sha256"] = "0" * 64  # editing meta.json to match breaks its fingerprint
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match="fingerprint does not match its content"):
        load_prepared(out)


def test_edited_prepared_directory_stops_a_script_with_one_line(tmp_path, capsys):
    from napo.scripts import recsys

    out, *_ = _ok(tmp_path, GOOD)
    (out / "items.jsonl").write_text((out / "items.jsonl").read_text().replace('"B"', '"Q"'))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        recsys.main(["--dataset_dir", str(out), "--output_dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "edited after writing" in err[0]
    assert not (tmp_path / "run").exists()

"""Every bad input gives exit code 2, one line on stderr that names the place, and no output."""

from __future__ import annotations

import pandas as pd
import pytest

from data_prep.__main__ import main


def _fail(capsys, out, *args):
    rc = main([*map(str, args), "--output-dir", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("data_prep: error: ")
    assert not out.exists()
    return err


def _write(tmp_path, inter_text, items_text="item_id,title\n1,A\n2,B\n3,C\n4,D\n5,E\n"):
    ip, tp = tmp_path / "inter.csv", tmp_path / "items.csv"
    ip.write_text(inter_text) if isinstance(inter_text, str) else ip.write_bytes(inter_text)
    tp.write_text(items_text) if isinstance(items_text, str) else tp.write_bytes(items_text)
    return ["--dataset", "interactions", "--interactions", ip, "--items", tp,
            "--num-candidates", 3, "--min-history", 1, "--max-history", 2]


GOOD = "user_id,item_id,timestamp\n" + "".join(f"u{u},{i},{10 * i}\n" for u in (1, 2) for i in (1, 2, 3, 4, 5))


def test_missing_file(tmp_path, capsys):
    err = _fail(capsys, tmp_path / "o", "--dataset", "interactions", "--interactions",
                tmp_path / "nope.csv", "--items", tmp_path / "nope2.csv")
    assert "nope.csv: file not found; check --interactions" in err


def test_missing_input_dir(tmp_path, capsys):
    err = _fail(capsys, tmp_path / "o", "--dataset", "lastfm-llara", "--input-dir", tmp_path / "nodir")
    assert "nodir: directory not found" in err


def test_unknown_dataset(tmp_path, capsys):
    err = _fail(capsys, tmp_path / "o", "--dataset", "ml-100m")
    assert "unknown dataset 'ml-100m'" in err and "ml-100k" in err


def test_missing_column(tmp_path, capsys):
    args = _write(tmp_path, "user_id,item_id,time\nu1,1,5\n")
    err = _fail(capsys, tmp_path / "o", *args)
    assert "inter.csv: missing column 'timestamp' (found: user_id, item_id, time)" in err


def test_empty_ids(tmp_path, capsys):
    args = _write(tmp_path, GOOD + ",3,99\n")
    err = _fail(capsys, tmp_path / "o", *args)
    assert "inter.csv, line 12, column user_id: empty id" in err


def test_unparseable_timestamp(tmp_path, capsys):
    args = _write(tmp_path, GOOD.replace("u2,3,30", "u2,3,yesterday"))
    err = _fail(capsys, tmp_path / "o", *args)
    assert "inter.csv, line 9, column timestamp: cannot parse 'yesterday'" in err


def test_iso_dates_are_accepted(tmp_path, capsys):
    text = "user_id,item_id,timestamp\n" + "".join(
        f"u{u},{i},2024-01-0{i}T10:00:00\n" for u in (1, 2) for i in (1, 2, 3, 4, 5))
    args = _write(tmp_path, text)
    assert main([*map(str, args), "--output-dir", str(tmp_path / "o"), "--quiet", "--split", "loo"]) == 0


def test_items_missing_titles_for_used_items(tmp_path, capsys):
    args = _write(tmp_path, GOOD + "u3,9,5\n")
    err = _fail(capsys, tmp_path / "o", *args)
    assert "items.csv: no title for item_id '9' used in" in err and "inter.csv line 12" in err
    # An empty title counts as missing.
    args = _write(tmp_path, GOOD, "item_id,title\n1,A\n2,\n3,C\n4,D\n5,E\n")
    err = _fail(capsys, tmp_path / "o", *args)
    assert "no title for item_id '2'" in err


def test_duplicate_item_ids_with_different_titles(tmp_path, capsys):
    args = _write(tmp_path, GOOD, "item_id,title\n1,A\n2,B\n3,C\n2,B\n4,D\n5,E\n3,Sea\n")
    err = _fail(capsys, tmp_path / "o", *args)
    assert "items.csv, line 4 and line 8: item_id '3' has two titles ('C' vs 'Sea')" in err


def test_non_utf8_bytes(tmp_path, capsys):
    items = "item_id,title\n1,A\n2,B\n3,Caf\xe9\n4,D\n5,E\n".encode("latin-1")
    args = _write(tmp_path, GOOD, items)
    err = _fail(capsys, tmp_path / "o", *args)
    assert "items.csv, line 4, column 6: byte 0xe9 is not UTF-8" in err


def test_fewer_items_than_candidates(tmp_path, capsys):
    args = _write(tmp_path, GOOD)
    err = _fail(capsys, tmp_path / "o", *args, "--num-candidates", 6)
    assert "only 5 items but --num-candidates 6" in err


def test_output_dir_exists(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    args = _write(tmp_path, GOOD)
    rc = main([*map(str, args), "--output-dir", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "output directory exists; choose another --output-dir or pass --overwrite" in err
    assert list(out.iterdir()) == []


def test_checksum_mismatch_on_download(tmp_path, capsys, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "movielens").mkdir(parents=True)
    (mirror / "movielens" / "ml-100k.zip").write_bytes(b"not the real archive")
    monkeypatch.setenv("NAPO_GROUPLENS_MIRROR", mirror.as_uri())
    err = _fail(capsys, tmp_path / "o", "--dataset", "ml-100k")
    assert "ml-100k.zip: checksum mismatch (md5" in err and "expected 0e33842e24a9c977be4e0107933c0723" in err


def test_bad_numbers_in_seq_txt(tmp_path, capsys):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}_data.txt").write_text("1 2 3 4\n5 6 7 8\n")
    (tmp_path / "valid_data.txt").write_text("1 2 3 4\n5 x 7 8\n")
    err = _fail(capsys, tmp_path / "o", "--dataset", "seq-txt", "--input-dir", tmp_path)
    assert "valid_data.txt, line 2: 'x' is not an item id" in err


@pytest.mark.parametrize("flags,match", [
    (["--num-candidates", "1"], "need at least 2"),
    (["--min-history", "5", "--max-history", "2"], "min-history <= max-history"),
    (["--candidate-sampler", "hard"], "unknown --candidate-sampler 'hard'"),
    (["--item-format", "emoji"], "unknown --item-format 'emoji'"),
    (["--split", "random"], "unknown --split 'random'"),
    (["--popularity-alpha", "-1"], "must be >= 0"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
])
def test_bad_options(tmp_path, capsys, flags, match):
    args = _write(tmp_path, GOOD)
    assert match in _fail(capsys, tmp_path / "o", *args, *flags)


def test_min_rating_needs_rating_column(tmp_path, capsys):
    args = _write(tmp_path, GOOD)
    err = _fail(capsys, tmp_path / "o", *args, "--min-rating", "4")
    assert "--min-rating needs a 'rating' column" in err


def test_good_input_passes(tmp_path):
    args = _write(tmp_path, GOOD)
    assert main([*map(str, args), "--output-dir", str(tmp_path / "o"), "--quiet", "--split", "loo"]) == 0
    assert pd.read_csv(tmp_path / "o" / "id_map_users.csv")["original_id"].tolist() == ["u1", "u2"]

"""Sources: the papers' LastFM files, id-only sequences, MovieLens and HetRec archives."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest

from data_prep.__main__ import main
from data_prep.errors import DataPrepError
from data_prep.fetch import DownloadFailed, download
from data_prep.prepared import load_prepared
from data_prep.sources import movielens, unique_titles


def _run(*args):
    return main([*map(str, args), "--quiet"])


@pytest.mark.slow
def test_lastfm_llara_reproduces_released_candidates(shared_data, tmp_path):
    src = shared_data / "lastfm"
    out = tmp_path / "lastfm"
    assert _run("--dataset", "lastfm-llara", "--input-dir", src, "--output-dir", out) == 0
    dd, items, meta = load_prepared(out)
    assert [dd[s].num_rows for s in ("train", "valid", "test")] == [47872, 2767, 2495]
    title = dict(zip(items["item_id"], items["title"], strict=True))
    for split in ("valid", "test"):
        ref = json.loads((src / f"candidates-{split}.json").read_text())
        ds = dd[split]
        assert [[title[i] for i in row] for row in ds["candidates"]] == [r["itemList"] for r in ref]
        assert [title[t] for t in ds["target"]] == [r["trueSelection"] for r in ref]
        assert ["::".join(title[i] for i in h) for h in ds["history"]] == [r["historyList"] for r in ref]
        assert ds["chosen"] == [r["trueSelection"] for r in ref]
    # Users are disjoint across the released files and numbered in file order.
    users = {s: set(dd[s]["user_id"]) for s in ("train", "valid", "test")}
    assert max(users["train"]) < min(users["valid"]) and max(users["valid"]) < min(users["test"])
    assert meta["domain"] == "music" and meta["counts"]["users"] == 1220


def test_seq_txt_synthetic(tmp_path):
    d = tmp_path / "seq"
    d.mkdir()
    (d / "train_data.txt").write_text("1 2 3 4 5\n6 7 8 9\n10 11 12 13 14 15 16 17 18 19 20 21 22 23\n")
    (d / "valid_data.txt").write_text("3 4 5 6\n")
    (d / "test_data.txt").write_text("7 8 9 10 11\n1 2\n")
    out = tmp_path / "out"
    assert _run("--dataset", "seq-txt", "--input-dir", d, "--output-dir", out, "--num-candidates", 5,
                "--item-format", "token") == 0
    dd, items, meta = load_prepared(out)
    assert dd["train"]["target"] == [5, 9, 23]
    assert dd["train"]["history"][2] == list(range(12, 22 + 1))[-10:]
    assert dd["test"]["target"] == [11]  # "1 2" has one history item < --min-history 3
    assert dd["train"]["user_id"] == [0, 1, 2] and dd["valid"]["user_id"] == [3]
    assert items["title"].tolist()[:2] == ["item 1", "item 2"]
    # Training counts: every id on the training lines.
    assert dict(zip(items["item_id"], items["train_count"], strict=True))[9] == 1
    assert dict(zip(items["item_id"], items["train_count"], strict=True))[3] == 1
    assert dd["train"][0]["chosen"] == "<item_5>"
    assert meta["item_format"] == "token"


def test_seq_txt_amazon_beauty(shared_data, tmp_path):
    src = shared_data / "amazon-seq" / "Beauty"
    out = tmp_path / "beauty"
    assert _run("--dataset", "seq-txt", "--input-dir", src, "--output-dir", out,
                "--candidate-sampler", "uniform") == 0
    dd, items, meta = load_prepared(out)
    lines = {s: (src / f"{s}_data.txt").read_text().splitlines() for s in ("train", "valid", "test")}
    for s in ("train", "valid", "test"):
        assert dd[s].num_rows == sum(len(x.split()) >= 4 for x in lines[s])
    first = [int(x) for x in lines["test"][0].split()]
    assert dd["test"][0]["target"] == first[-1]
    assert dd["test"][0]["history"] == first[:-1][-10:]


def test_unique_titles_is_deterministic():
    import pandas as pd

    items = pd.DataFrame({"item_id": [5, 2, 9, 7], "title": ["X", "X", "X [2]", "X"]})
    out, n = unique_titles(items)
    assert out["item_id"].tolist() == [2, 5, 7, 9]
    assert out["title"].tolist() == ["X", "X [3]", "X [4]", "X [2]"]
    assert n == 2 and out["title"].is_unique


def _fake_recbole_wheel(cache, monkeypatch):
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{(u + i) % 5 + 1}\t{1000 + 10 * i + u}\n" for u in range(1, 11) for i in range(1, 31)
    )
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\tMovie {i % 27}\t{1990 + (i % 2 if i > 26 else 0)}\tDrama\n" for i in range(1, 31)
    )
    files = {name: text.encode() for name, text in zip(movielens.RECBOLE_FILES, (inter, item), strict=True)}
    monkeypatch.setattr(movielens, "RECBOLE_FILES",
                        {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache / "wheels" / movielens.RECBOLE_WHEEL, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_ml100k_falls_back_to_recbole_copy(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPO_CACHE", str(cache))
    # An unreachable GroupLens (a missing local mirror) fails at once and falls back.
    monkeypatch.setenv("NAPO_GROUPLENS_MIRROR", (tmp_path / "offline").as_uri())
    _fake_recbole_wheel(cache, monkeypatch)
    out = tmp_path / "ml"
    assert _run("--dataset", "ml-100k", "--output-dir", out, "--num-candidates", 5, "--split", "loo") == 0
    dd, items, meta = load_prepared(out)
    titles = items["title"].tolist()
    # "Title (Year)"; items 1 and 28 share "Movie 1 (1990)" -> the later id gets " [2]";
    # 27 is "Movie 0 (1991)" and distinct from 0's... ids start at 1 so "Movie 0" appears once.
    assert titles[0] == "Movie 1 (1990)"
    assert titles[27] == "Movie 1 (1990) [2]"
    assert items["title"].is_unique
    assert meta["sources"]["ml-100k.item"]["origin"] == "recbole==1.2.1"
    assert meta["domain"] == "movie" and meta["counts"]["interactions"] == 300


def test_ml100k_recbole_checksum_mismatch(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPO_CACHE", str(cache))
    monkeypatch.setenv("NAPO_GROUPLENS_MIRROR", (tmp_path / "offline").as_uri())
    _fake_recbole_wheel(cache, monkeypatch)
    name = next(iter(movielens.RECBOLE_FILES))
    monkeypatch.setitem(movielens.RECBOLE_FILES, name, "0" * 64)
    rc = main(["--dataset", "ml-100k", "--output-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and not (tmp_path / "o").exists()


def test_download_cache_and_checksums(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPO_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    md5 = hashlib.md5(b"hello").hexdigest()
    got = download(src.as_uri(), "f.bin", md5=md5)
    assert got.read_bytes() == b"hello"
    src.unlink()  # now served from the cache
    assert download(src.as_uri(), "f.bin", md5=md5) == got
    with pytest.raises(DownloadFailed):
        download(src.as_uri(), "g.bin", md5=md5)
    src.write_bytes(b"other")
    with pytest.raises(DataPrepError, match="checksum mismatch"):
        download(src.as_uri(), "h.bin", sha256=hashlib.sha256(b"hello").hexdigest())
    assert not (tmp_path / "cache" / "h.bin").exists()


def _zip(path, files):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest(), hashlib.sha256(buf.getvalue()).hexdigest()


def test_ml1m_from_archive(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    ratings = "".join(f"{u}::{i}::{i % 5 + 1}::{100 + i}\n" for u in range(1, 11) for i in range(1, 26))
    movies = "".join(f"{i}::Film {i} (19{i + 50})::Drama\n" for i in range(1, 26))
    md5, _ = _zip(mirror / "movielens" / "ml-1m.zip",
                  {"ml-1m/ratings.dat": ratings.encode("latin-1"), "ml-1m/movies.dat": movies.encode("latin-1")})
    monkeypatch.setenv("NAPO_GROUPLENS_MIRROR", mirror.as_uri())
    monkeypatch.setattr(movielens, "ML1M_MD5", md5)
    out = tmp_path / "o"
    assert _run("--dataset", "ml-1m", "--output-dir", out, "--num-candidates", 5, "--split", "loo",
                "--min-rating", 3) == 0
    dd, items, meta = load_prepared(out)
    # Item 1 has only ratings of 2: below --min-rating, so it leaves the catalogue.
    assert items["title"].tolist()[0] == "Film 2 (1952)"
    assert meta["counts"]["interactions"] == 10 * sum(1 for i in range(1, 26) if i % 5 + 1 >= 3)


def test_ml1m_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPO_GROUPLENS_MIRROR", (tmp_path / "offline").as_uri())
    assert main(["--dataset", "ml-1m", "--output-dir", str(tmp_path / "o")]) == 2
    assert "ml-1m: cannot download from GroupLens" in capsys.readouterr().err


def test_hetrec_lastfm_from_archive(tmp_path, monkeypatch):
    from data_prep.sources import lastfm

    mirror = tmp_path / "mirror"
    tags = "userID\tartistID\ttagID\ttimestamp\n" + "".join(
        f"{u}\t{a}\t{t}\t{(1000 + 10 * a + t) * 1000}\n" for u in range(1, 9) for a in range(1, 21) for t in (1, 2)
    )
    artists = "id\tname\turl\tpictureURL\n" + "".join(f"{a}\tBand {a}\thttp://x\thttp://y\n" for a in range(1, 21))
    _, sha = _zip(mirror / "hetrec2011" / "hetrec2011-lastfm-2k.zip",
                  {"user_taggedartists-timestamps.dat": tags.encode(), "artists.dat": artists.encode()})
    monkeypatch.setenv("NAPO_GROUPLENS_MIRROR", mirror.as_uri())
    monkeypatch.setattr(lastfm, "HETREC_LASTFM_SHA256", sha)
    out = tmp_path / "o"
    assert _run("--dataset", "lastfm", "--output-dir", out, "--num-candidates", 5, "--split", "loo") == 0
    dd, items, meta = load_prepared(out)
    # One interaction per (user, artist): the first tag.
    assert meta["counts"]["interactions"] == 8 * 20 and meta["domain"] == "music"
    assert dd["test"]["target"] == [19] * 8  # artists are tagged in id order


def test_ml100k_from_grouplens_archive(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    data = "".join(f"{u}\t{i}\t{(u * i) % 5 + 1}\t{880000000 + 100 * i + u}\n"
                   for u in range(1, 11) for i in range(1, 26))
    # u.item is Latin-1 and "|"-separated; two items share a title, as in the real file.
    item = "".join(f"{i}|{'Café' if i == 3 else 'Film'} {i if i != 7 else 6} (1995)|01-Jan-1995||http://x|0|1\n"
                   for i in range(1, 26))
    md5, _ = _zip(mirror / "movielens" / "ml-100k.zip",
                  {"ml-100k/u.data": data.encode(), "ml-100k/u.item": item.encode("latin-1")})
    monkeypatch.setenv("NAPO_GROUPLENS_MIRROR", mirror.as_uri())
    monkeypatch.setattr(movielens, "ML100K_MD5", md5)
    out = tmp_path / "o"
    assert _run("--dataset", "ml-100k", "--output-dir", out, "--num-candidates", 5, "--split", "loo") == 0
    dd, items, meta = load_prepared(out)
    titles = items["title"].tolist()
    assert titles[2] == "Café 3 (1995)"
    assert titles[5] == "Film 6 (1995)" and titles[6] == "Film 6 (1995) [2]"
    assert meta["sources"] == {"ml-100k.zip": {"md5": md5, "origin": "grouplens"}}

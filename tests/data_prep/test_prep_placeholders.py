"""--item-placeholders: LLaRA's placeholder after every title, rendered identically on load."""

from __future__ import annotations

from data_prep.__main__ import main
from data_prep.prepared import load_prepared
from data_prep.prompts import PLACEHOLDERS


def _run(*args):
    return main([*map(str, args), "--quiet"])


def test_each_title_is_followed_by_its_placeholder(tmp_path, log_files):
    inter, titles = log_files
    common = ["--dataset", "interactions", "--interactions", inter, "--items", titles, "--num-candidates", 6]
    assert _run(*common, "--item-placeholders", "--output-dir", tmp_path / "ids") == 0
    assert _run(*common, "--item-placeholders", "--storage", "text", "--output-dir", tmp_path / "text") == 0
    assert _run(*common, "--output-dir", tmp_path / "plain") == 0
    dd, items, meta = load_prepared(tmp_path / "ids")
    text, _, _ = load_prepared(tmp_path / "text")
    plain, _, plain_meta = load_prepared(tmp_path / "plain")
    name = dict(zip(items["item_id"], items["title"], strict=True))
    assert meta["item_placeholders"] is True and meta["args"]["item_placeholders"] is True
    for split in dd:
        assert dd[split]["prompt"] == text[split]["prompt"]  # rendered on load == written as text
        for row, base in zip(dd[split], plain[split], strict=True):
            prompt = row["prompt"]
            assert prompt.count(PLACEHOLDERS["history"]) == len(row["history"])
            assert prompt.count(PLACEHOLDERS["candidates"]) == len(row["candidates"])
            expected = [f'"{name[i]}" {PLACEHOLDERS["history"]}' for i in row["history"]]
            expected += [f'"{name[i]}" {PLACEHOLDERS["candidates"]}' for i in row["candidates"]]
            cursor = 0
            for piece in expected:  # in order: history first, then the candidate list
                cursor = prompt.index(piece, cursor) + len(piece)
            stripped = prompt.replace(" " + PLACEHOLDERS["history"], "").replace(" " + PLACEHOLDERS["candidates"], "")
            assert stripped == base["prompt"] and row["chosen"] == base["chosen"]
    # off by default, and then absent from meta: directories prepared before the option keep their fingerprint
    assert "item_placeholders" not in plain_meta and "item_placeholders" not in plain_meta["args"]
    assert plain_meta["fingerprint"] != meta["fingerprint"]


def test_placeholders_need_titles(tmp_path, log_files, capsys):
    inter, titles = log_files
    rc = _run("--dataset", "interactions", "--interactions", inter, "--items", titles, "--item-format", "token",
              "--item-placeholders", "--output-dir", tmp_path / "o")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--item-placeholders goes after titles" in err[0]
    assert not (tmp_path / "o").exists()

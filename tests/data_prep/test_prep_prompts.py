"""Templates and prompt rendering."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data_prep.errors import DataPrepError
from data_prep.prompts import (
    TEMPLATE_DIR,
    display_names,
    item_token,
    join_lists,
    load_templates,
    render,
)


def test_item_token():
    assert item_token(0) == "<item_0>"
    assert item_token(np.int64(42)) == "<item_42>"


@pytest.mark.parametrize("domain", ["movie", "music", "book", "game", "generic"])
def test_shipped_templates_have_several_paraphrases(domain):
    t = load_templates(domain)
    assert len(t.texts) >= 3
    assert all("{history}" in x and "{candidates}" in x for x in t.texts)
    assert t.path == f"data_prep/templates/{domain}.txt"
    assert (TEMPLATE_DIR / f"{domain}.txt").is_file()


def test_template_file_parsing_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# comment\nA {history}\nB {candidates} ({num_candidates})\n---\n\n---\nC {candidates} {history}\n")
    t = load_templates("movie", str(f))
    assert t.texts == ["A {history}\nB {candidates} ({num_candidates})", "C {candidates} {history}"]
    f.write_text("Only {history} here\n")
    with pytest.raises(DataPrepError, match=r"line 1: missing \{candidates\}"):
        load_templates("movie", str(f))
    f.write_text("{history} {candidates}\n---\n{history} {candidates} {user}\n")
    with pytest.raises(DataPrepError, match=r"line 3: unknown placeholder \{user\}"):
        load_templates("movie", str(f))
    with pytest.raises(DataPrepError, match="file not found; check --template"):
        load_templates("movie", str(tmp_path / "nope.txt"))


def test_render_known_answer():
    titles = pa.array(["Alpha", "Beta", "Gamma, The", "Delta"])
    names = display_names(titles, "title")
    hist = pa.ListArray.from_arrays(pa.array([0, 2, 2]), pa.array([0, 1]))  # rows: [0, 1], []
    cands = pa.ListArray.from_arrays(pa.array([0, 2, 4]), pa.array([2, 3, 3, 0]))
    templates = ["H: {history} | C: {candidates} ({num_candidates})", "{candidates}/{history}"]
    out = render(templates, np.array([1, 0]), join_lists(hist, names), join_lists(cands, names), 2)
    assert out.to_pylist() == [
        '"Gamma, The", "Delta"/"Alpha", "Beta"',
        'H:  | C: "Delta", "Alpha" (2)',
    ]
    tokens = display_names(pa.array([item_token(i) for i in range(4)]), "token")
    assert join_lists(hist, tokens).to_pylist() == ["<item_0>, <item_1>", ""]


@pytest.mark.parametrize("domain", ["movie", "music", "book", "game", "generic"])
def test_shipped_history_templates_list_no_candidates(domain):
    t = load_templates(domain, style="history")
    assert len(t.texts) >= 3
    assert all(x.count("{history}") == 1 and "{candidates}" not in x and "{num_candidates}" not in x
               for x in t.texts)
    assert t.path == f"data_prep/templates/history/{domain}.txt"


def test_history_template_checks(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Seen {history}. Next? Answer:\n---\nH {history} ({num_candidates})\n")
    with pytest.raises(DataPrepError, match=r"line 3: \{num_candidates\} in a history-only template"):
        load_templates("movie", str(f), style="history")
    f.write_text("Seen {history} from {candidates}\n")
    with pytest.raises(DataPrepError, match=r"line 1: \{candidates\} in a history-only template"):
        load_templates("movie", str(f), style="history")
    f.write_text("Nothing here\n")
    with pytest.raises(DataPrepError, match=r"line 1: missing \{history\}"):
        load_templates("movie", str(f), style="history")
    with pytest.raises(DataPrepError, match="unknown --prompt-style 'both'"):
        load_templates("movie", style="both")


def test_render_history_only_known_answer():
    names = display_names(pa.array(["Alpha", "Beta", "Gamma"]), "title")
    hist = pa.ListArray.from_arrays(pa.array([0, 2, 3]), pa.array([0, 1, 2]))
    cands = pa.ListArray.from_arrays(pa.array([0, 1, 2]), pa.array([2, 0]))  # never shown
    out = render(["A {history}. Answer:", "{history} then?"], np.array([1, 0]),
                 join_lists(hist, names), join_lists(cands, names), 2)
    assert out.to_pylist() == ['"Alpha", "Beta" then?', 'A "Gamma". Answer:']
    with pytest.raises(DataPrepError, match="mix history-only and candidate-list prompts"):
        render(["A {history}", "{history} {candidates}"], np.array([0, 1]), join_lists(hist, names),
               join_lists(cands, names), 2)

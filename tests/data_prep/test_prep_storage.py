"""--storage ids (the default) stores ids only; load_prepared renders prompt / chosen / rejected
byte-identically to --storage text, for both item formats and across render batches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import data_prep.prepared as prepared
from data_prep.__main__ import main
from data_prep.prepared import PreparedDataError, load_prepared
from data_prep.render import ID_COLUMNS


@pytest.fixture(scope="module")
def log_csvs(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"B{item:04d}", 1_000 + 60 * j) for u in range(60)
            for j, item in enumerate(rng.choice(50, size=int(rng.integers(4, 16)), replace=False))]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(root / "i.csv", index=False)
    pd.DataFrame({"item_id": [f"B{i:04d}" for i in range(50)],
                  "title": [f"Film {i}, \"quoted\" é" for i in range(50)]}).to_csv(root / "t.csv", index=False)
    return root


def prepare(root, name, *flags):
    out = root / name
    assert main(["--dataset", "interactions", "--interactions", str(root / "i.csv"), "--items", str(root / "t.csv"),
                 "--output-dir", str(out), "--num-candidates", "8", "--domain", "movie", "--quiet", *flags]) == 0
    return out


@pytest.mark.parametrize("fmt", ["title", "token"])
def test_rendered_text_is_byte_identical_to_stored_text(log_csvs, fmt, monkeypatch):
    text_dir = prepare(log_csvs, f"{fmt}-text", "--item-format", fmt, "--storage", "text")
    ids_dir = prepare(log_csvs, f"{fmt}-ids", "--item-format", fmt)
    stored = load_prepared(text_dir)[0]
    raw = load_prepared(ids_dir, text=False)[0]
    assert all(raw[s].column_names == list(ID_COLUMNS) for s in raw)  # nothing but ids on disk ...
    assert raw["train"].features["candidates"].feature.dtype == "int64"  # ... read as the contract's int64
    on_disk = json.loads((ids_dir / "train" / "dataset_info.json").read_text())["features"]
    assert on_disk["candidates"]["feature"]["dtype"] == "int32"  # stored as int32 (half the bytes)
    monkeypatch.setattr(prepared, "RENDER_BATCH", 7)  # many batches: sliced Arrow lists
    rendered = load_prepared(ids_dir)[0]
    for split in stored:
        assert rendered[split].features == stored[split].features
        assert rendered[split][:] == stored[split][:]
        assert len(set(rendered[split]["prompt"])) > 1


def test_ids_storage_is_much_smaller_and_checks_its_templates(log_csvs):
    def size(folder):
        return sum(f.stat().st_size for f in folder.rglob("*.arrow"))

    text_dir, ids_dir = log_csvs / "title-text", log_csvs / "title-ids"
    if not text_dir.exists():
        text_dir, ids_dir = prepare(log_csvs, "title-text", "--storage", "text"), prepare(log_csvs, "title-ids")
    assert size(ids_dir) * 3 < size(text_dir)
    templates = ids_dir / "templates.json"
    templates.write_text(templates.read_text().replace("watched", "seen"))
    with pytest.raises(PreparedDataError, match="templates.json: edited after writing"):
        load_prepared(ids_dir)
    assert load_prepared(ids_dir, text=False)[0]["test"].num_rows > 0  # ids need no templates

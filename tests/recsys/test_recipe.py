"""End-to-end: recipes/sasrec.py on the tiny cycle dataset; aux rows match a direct forward pass."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script

from data_prep.prepared import load_prepared
from napo.recsys.aux import load_aux
from napo.recsys.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _recipe():
    return load_script("recipes/sasrec.py")


@pytest.fixture(scope="module")
def run_dir(cycle_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sasrec-run")
    rc = _recipe().main(["--config", str(ROOT / "recipes/configs/lastfm/sasrec-tiny.yaml"),
                         "--dataset_dir", str(cycle_dataset), "--output_dir", str(out),
                         "--max_epochs", "3", "--quiet"])
    assert rc == 0
    return out


def test_outputs(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr", "full/hr@10", "full/ndcg@10",
                "pop/hr@10/head", "pop/balance@10", "full/pop/coverage@10", "valid/hr@1"):
        assert 0.0 <= metrics[key] <= 1.0 or np.isnan(metrics[key]), key
    assert metrics["hr@1"] <= metrics["hr@5"] <= metrics["hr@10"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["seed"] == 0 and run["config"]["model"] == "SASRec"
    assert (run_dir / "checkpoint" / "model.safetensors").is_file()


def test_aux_rows_match_a_direct_forward_pass(run_dir, cycle_dataset):
    dd, _, meta = load_prepared(cycle_dataset)
    model, _ = load_checkpoint(run_dir / "checkpoint")
    for split in ("train", "valid", "test"):
        vectors, scores = load_aux(run_dir / "aux", split, meta)
        assert vectors.shape == (dd[split].num_rows, model.hidden)
        assert scores.shape == (dd[split].num_rows, 10)
    vectors, scores = load_aux(run_dir / "aux", "test", meta)
    # a row whose history is shorter than the window (so the batch had padding in front)
    lengths = [len(h) for h in dd["test"]["history"]]
    i = int(np.argmin(lengths))
    assert lengths[i] < 10
    row = dd["test"][i]
    with torch.no_grad():
        h = model.encode_all(torch.tensor([row["history"]]) + 1)[0, -1]  # no padding at all
        direct = model.item_vectors()[torch.tensor(row["candidates"])] @ h
    torch.testing.assert_close(vectors[i], h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores[i], direct, rtol=1e-5, atol=1e-5)


def test_bad_dataset_dir_is_one_line_error(tmp_path, capsys):
    rc = _recipe().main(["--dataset_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_bad_config_key(tmp_path, cycle_dataset, capsys):
    with pytest.raises(SystemExit):
        _recipe().main(["--dataset_dir", str(cycle_dataset), "--output_dir", str(tmp_path), "--hiden", "3"])
    rc = _recipe().main(["--dataset_dir", str(cycle_dataset), "--output_dir", str(tmp_path / "o"),
                         "--loss", "bpr"])
    assert rc == 2 and "unknown loss" in capsys.readouterr().err

"""bench/cf_study.py and bench/tuned_study.py: the study table (epochs, clock marker), paired rows
against a baseline, and the phase-2 CPU estimate, on known answers."""

import json

import numpy as np
import pytest
import yaml
from helpers import load_script

from napo.eval.report import write_per_row


def _fake_run(out, ndcg, epochs, clock=False):
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({
        "recall@20": float(np.mean(ndcg)) + 0.1, "ndcg@20": float(np.mean(ndcg)), "pop/hr@20/tail": 0.0,
        "train/epochs": epochs, "train/best_epoch": epochs - 5, "train/fit_seconds": 10.0,
        "train/stopped_by_clock": clock}))
    write_per_row(out, rows=list(range(len(ndcg))), split="test", dataset_fingerprint="f",
                  values={"ndcg@20": ndcg})


def test_study_table_and_paired_rows(tmp_path):
    study = load_script("bench/tuned_study.py")  # it imports cf_study's table, Method and paired_rows
    rng = np.random.default_rng(0)
    base = {s: rng.random(50) for s in (1, 2)}
    for s in (1, 2):
        _fake_run(tmp_path / "bpr" / f"seed{s}", base[s], epochs=40)
        _fake_run(tmp_path / "ssm" / f"seed{s}", base[s] + 0.05, epochs=20 + s, clock=(s == 2))
    methods = [study.Method("bpr", tmp_path / "bpr.yaml"), study.Method("ssm", tmp_path / "ssm.yaml")]
    text = study.table(tmp_path, methods, [1, 2], ["ndcg@20"])
    assert "| bpr | " in text and "| 40 | 35 |" in text  # epochs and best epoch, mean over seeds
    assert "| 22 clock! |" in text.replace(" | 16 |", " |")  # a clock stop is marked on its row
    (row,) = study.paired_rows(tmp_path, methods, [1, 2], "bpr", "ndcg@20")
    assert row.names == ("ssm", "bpr") and row.seeds == 2 and row.rows == 50
    assert row.diff == pytest.approx(0.05) and row.low == pytest.approx(0.05)  # the same +0.05 on every row
    with pytest.raises(SystemExit, match="baseline"):
        study.paired_rows(tmp_path, methods, [1, 2], "mf-psl", "ndcg@20")


def test_phase2_estimate_known_answer(tmp_path):
    tuned = load_script("bench/tuned_study.py")
    plan = {"trials": 4, "seeds": [1, 2, 3], "runs": "r", "groups": [{
        "name": "g", "dataset_dir": "d", "baseline": "a", "max_epochs": 10,
        "configs": ["x/a.yaml", "x/b.yaml", {"name": "c", "config": "x/c.yaml", "tune": False}],
        "seconds_per_epoch": {"a": 1.0, "b": 2.0, "c": 10.0}}]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    loaded = tuned.load_plan(path)
    assert [r["name"] for r in tuned.rows(loaded["groups"][0])] == ["a", "b", "c"]
    text = tuned.estimate(loaded, loaded["groups"], 0.5)
    # (1 x (4 + 3) + 2 x (4 + 3) + 10 x 3) x 10 epochs = 510 s = 0.14 h; half of it expected
    assert "| g | 3 | 4 | 10 | 0.14 | 0.07 |" in text
    plan["groups"][0]["baseline"] = "z"
    path.write_text(yaml.safe_dump(plan))
    with pytest.raises(SystemExit, match="baseline 'z'"):
        tuned.load_plan(path)

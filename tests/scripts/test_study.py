"""scripts/study.py: learning-rate choice, seed pairing and the paired table (no training here;
the end-to-end run is `python scripts/study_smoke.py`)."""

import argparse
import json

import numpy as np
import pytest
from helpers import load_script

from napo.eval.report import write_per_row
from napo.eval.stats import paired

ROWS = 60


@pytest.fixture(scope="module")
def study_module():
    return load_script("scripts/study.py")


def _args(tmp_path, sft_seeds):
    return argparse.Namespace(
        dataset_dir="d", model_name_or_path="m", sft=str(tmp_path / ("sft-{seed}" if sft_seeds else "sft")),
        sft_seeds=sft_seeds, aux_dir="a", config_dir="c", output_dir=str(tmp_path / "out"), seeds=[1, 2, 3],
        lr_grid=["2e-4", "5e-4"], tune_seed=0, ablation_lr="tuned", valid_examples=50, eval_examples=ROWS,
        sample_seed=42, eval_batch_size=8, paired_metrics=["hr@1", "mrr"])


def _finish(folder, ranks):
    """A finished evaluation: per_row.json (ranks among the candidates) and metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    write_per_row(folder, rows=list(range(100, 100 + ROWS))[::-1], split="test", dataset_fingerprint="f",
                  ranks={"rank": [float(r) for r in ranks[::-1]]})  # stored in another row order
    (folder / "metrics.json").write_text(json.dumps({"rank": {"hr@1": float(np.mean(ranks == 1)),
                                                              "mrr": float(np.mean(1 / ranks))}}))


def _ranks(seed, shift):
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(1, 6, ROWS) - shift * (rng.random(ROWS) < 0.3), 1, 20).astype(float)


def _sweep(folder, points):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"point": f"learning_rate={lr}", "settings": {"learning_rate": lr}, "hr@1": v} for lr, v in points]
    rows.sort(key=lambda r: -r["hr@1"])  # as sweep.py ranks them (stable: grid order among ties)
    (folder / "sweep.json").write_text(json.dumps({"metric": "hr@1", "rows": rows}))


def test_best_learning_rate_takes_the_earlier_grid_value_on_ties(study_module, tmp_path):
    _sweep(tmp_path / "s", [("2e-4", 0.30), ("5e-4", 0.35), ("1e-3", 0.35), ("2e-3", 0.10)])
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert study_module.best_learning_rate(sweep) == 5e-4
    assert study_module.tuning_grid(tmp_path / "s") == [2e-4, 5e-4, 1e-3, 2e-3]


def test_paired_comparisons_pair_seed_by_seed_on_common_seeds(study_module, tmp_path):
    study = study_module.Study(_args(tmp_path, sft_seeds=True))
    ranks = {}
    for method, seeds, shift in (("NAPO rescore", [1, 2], 2), ("NAPO reuse", [1, 2, 3], 1), ("SFT", [1, 2, 3], 0)):
        for seed in seeds:
            ranks[method, seed] = _ranks(10 * seed + shift, shift)
            _finish(study.eval_dir(method, seed), ranks[method, seed])
    results, notes = study_module.paired_comparisons(
        study, [1, 2, 3], ["hr@1", "mrr"],
        [("NAPO rescore", "NAPO reuse"), ("NAPO reuse", "SFT"), ("NAPO rescore", "DPO")])
    assert notes == ["NAPO rescore vs DPO: left out (DPO not finished)"]
    assert [(r.names, r.metric, r.seeds, r.rows) for r in results] == [
        (("NAPO rescore", "NAPO reuse"), "hr@1", 2, ROWS), (("NAPO rescore", "NAPO reuse"), "mrr", 2, ROWS),
        (("NAPO reuse", "SFT"), "hr@1", 3, ROWS), (("NAPO reuse", "SFT"), "mrr", 3, ROWS)]
    # the same numbers as napo.eval.stats.paired on the per-row arrays of the common seeds
    a = np.stack([(ranks["NAPO rescore", s] == 1).astype(float) for s in (1, 2)])
    b = np.stack([(ranks["NAPO reuse", s] == 1).astype(float) for s in (1, 2)])
    direct = paired(a, b, metric="hr@1", names=("NAPO rescore", "NAPO reuse"))
    got = results[0]
    assert (got.diff, got.low, got.high, got.p, got.p_seeds) == pytest.approx(
        (direct.diff, direct.low, direct.high, direct.p, direct.p_seeds))
    assert got.seed_diffs == pytest.approx(tuple((a - b).mean(1)))
    mrr = paired(np.stack([1 / ranks["NAPO reuse", s] for s in (1, 2, 3)]),
                 np.stack([1 / ranks["SFT", s] for s in (1, 2, 3)]), metric="mrr")
    assert results[3].diff == pytest.approx(mrr.diff) and results[3].low == pytest.approx(mrr.low)


def test_one_sft_model_is_paired_with_every_seed(study_module, tmp_path):
    study = study_module.Study(_args(tmp_path, sft_seeds=False))
    sft = _ranks(0, 0)
    _finish(study.eval_dir("SFT", 1), sft)
    assert study.eval_dir("SFT", 1) == study.eval_dir("SFT", 3)  # one folder
    dpo = {s: _ranks(s, 1) for s in (1, 2, 3)}
    for s, r in dpo.items():
        _finish(study.eval_dir("DPO", s), r)
    (result,), notes = study_module.paired_comparisons(study, [1, 2, 3], ["hr@1"], [("DPO", "SFT")])
    direct = paired(np.stack([(dpo[s] == 1).astype(float) for s in (1, 2, 3)]), (sft == 1).astype(float))
    assert notes == [] and result.seeds == 3 and result.diff == pytest.approx(direct.diff)
    assert (result.low, result.high) == pytest.approx((direct.low, direct.high))


def test_tables_print_intervals_and_verdicts_never_the_same_sign_rule(study_module, tmp_path):
    study = study_module.Study(_args(tmp_path, sft_seeds=True))
    for seed in (1, 2, 3):
        _finish(study.eval_dir("SFT", seed), _ranks(seed, 0))
        _finish(study.eval_dir("DPO", seed), _ranks(seed, 0))  # identical to SFT: difference 0
        _finish(study.eval_dir("NAPO rescore", seed), np.ones(ROWS))  # every row a hit
    _sweep(study.out / "tuning" / "DPO", [("2e-4", 0.2), ("5e-4", 0.1)])
    _sweep(study.out / "tuning" / "NAPO_rescore", [("2e-4", 0.2), ("5e-4", 0.3)])
    text = study_module.write_tables(study, ["DPO", "NAPO rescore"], [1, 2, 3])
    assert "| DPO | `-` | 0.2000 | 0.1000 | 0.0002 |" in text
    assert "| NAPO rescore | `--share_mode rescore` | 0.2000 | 0.3000 | 0.0005 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| DPO vs SFT | hr@1"))
    assert "+0.000 [+0.000, +0.000]" in line and line.endswith("| no difference measured |")
    line = next(x for x in text.splitlines() if x.startswith("| NAPO rescore vs SFT | hr@1"))
    assert line.endswith("| NAPO rescore > SFT |")
    saved = json.loads((study.out / "study.json").read_text())
    assert saved["learning_rates"] == {"DPO": 2e-4, "NAPO rescore": 5e-4}
    assert {p["verdict"] for p in saved["paired"]} == {"no difference measured", "NAPO rescore > SFT"}
    assert "same sign" not in text

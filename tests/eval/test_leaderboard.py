"""napo-leaderboard on hand-written run directories: known means, paired differences, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napo.eval.report import write_per_row
from napo.eval.stats import paired

FP = "f" * 64
ROWS = list(range(10, 20))  # row ids of the split (not 0-based: the board must not care)

# 1-based ranks of the target per row, per method and seed ("rank": 20 candidates, "full": catalogue)
SASREC = {1: {"rank": [1, 2, 1, 5, 1, 3, 1, 20, 2, 1], "full": [3, 40, 1, 9, 12, 2, 700, 5, 1, 30]},
          2: {"rank": [1, 1, 2, 5, 1, 3, 4, 20, 2, 1], "full": [2, 50, 1, 11, 9, 2, 800, 6, 1, 25]}}
LLM = {1: {"rank": [1, 1, 1, 2, 1, 3, 1, 8, 1, 1], "full": [1, 30, 2, 9, 15, 1, 90, 4, 1, 60]},
       2: {"rank": [2, 1, 1, 1, 1, 3, 1, 9, 1, 4], "full": [1, 20, 2, 7, 15, 1, 100, 3, 2, 40]}}


def _hr(ranks, k):
    return float(np.mean(np.asarray(ranks) <= k))


def _ndcg(ranks, k):
    r = np.asarray(ranks, float)
    return float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)))


def _recsys_run(root, name, seed, ranks, rows=ROWS, fingerprint=FP, lie=False):
    """A napo-recsys run directory: flat metrics.json, run.json with the model and seed."""
    out = root / f"{name}-{seed}"
    out.mkdir(parents=True)
    metrics = {"hr@1": _hr(ranks["rank"], 1) + (0.1 if lie else 0.0), "ndcg@10": _ndcg(ranks["rank"], 10),
               "full/hr@10": _hr(ranks["full"], 10), "full/ndcg@10": _ndcg(ranks["full"], 10),
               "valid/hr@1": 0.99}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "run.json").write_text(json.dumps({"config": {"model": name}, "seed": seed}))
    write_per_row(out, rows=rows, split="test", dataset_fingerprint=fingerprint, ranks=ranks)
    return out


def _eval_run(root, name, seed, ranks):
    """A napo-eval output: nested metrics.json named NAME; the trained model's run.json holds the seed."""
    model = root / f"model-{name}-{seed}"
    model.mkdir(parents=True)
    (model / "run.json").write_text(json.dumps({"seed": seed}))
    out = root / f"eval-{name}-{seed}"
    out.mkdir()
    metrics = {"name": name, "modes": ["rank"], "split": "test", "dataset_fingerprint": FP,
               "rank": {"hr@1": _hr(ranks["rank"], 1), "ndcg@10": _ndcg(ranks["rank"], 10)}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "run.json").write_text(json.dumps({"seed": 0, "config": {"model_name_or_path": str(model)}}))
    write_per_row(out, rows=ROWS, split="test", dataset_fingerprint=FP, ranks=ranks)
    return out


@pytest.fixture
def runs(tmp_path):
    dirs = [_recsys_run(tmp_path, "SASRec", s, SASREC[s]) for s in (2, 1)]  # order must not matter
    dirs += [_eval_run(tmp_path, "hybrid NAPO", s, LLM[s]) for s in (1, 2)]
    return dirs


def test_board_holds_the_known_means_and_paired_differences(runs):
    from napo.eval.leaderboard import build, load_run

    loaded = [load_run(d) for d in runs]
    assert {r.name for r in loaded} == {"SASRec", "hybrid NAPO"} and sorted(r.seed for r in loaded) == [1, 1, 2, 2]
    board = build(loaded, "rank", "SASRec", n_resamples=2000)
    row = {r.name: r for r in board.rows}
    assert board.rows[0].name == "SASRec" and board.num_rows == 10
    for name, ranks in (("SASRec", SASREC), ("hybrid NAPO", LLM)):
        per_seed = [_hr(ranks[s]["rank"], 1) for s in (1, 2)]
        mean, se = row[name].means["hr@1"]
        assert mean == pytest.approx(np.mean(per_seed))
        assert se == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(2))
        assert row[name].means["ndcg@10"][0] == pytest.approx(np.mean([_ndcg(ranks[s]["rank"], 10) for s in (1, 2)]))
    p = row["hybrid NAPO"].paired["hr@1"]
    a = np.array([np.asarray(LLM[s]["rank"]) <= 1 for s in (1, 2)], float)
    b = np.array([np.asarray(SASREC[s]["rank"]) <= 1 for s in (1, 2)], float)
    assert p.diff == pytest.approx((a - b).mean()) and p.seeds == 2 and p.rows == 10
    same = paired(a, b, metric="rank/hr@1", names=("hybrid NAPO", "SASRec"), n_resamples=2000)
    assert (p.low, p.high, p.p) == pytest.approx((same.low, same.high, same.p))

    full = build(loaded, "full", "SASRec", n_resamples=2000)
    f = {r.name: r for r in full.rows}
    assert f["hybrid NAPO"].means["hr@10"][0] == pytest.approx(np.mean([_hr(LLM[s]["full"], 10) for s in (1, 2)]))
    d = np.mean([_ndcg(LLM[s]["full"], 10) - _ndcg(SASREC[s]["full"], 10) for s in (1, 2)])
    assert f["hybrid NAPO"].paired["ndcg@10"].diff == pytest.approx(d)


def test_seeds_pair_by_seed_and_a_single_run_is_a_fixed_model(tmp_path):
    from napo.eval.leaderboard import build, load_run

    base = [load_run(_recsys_run(tmp_path, "SASRec", 1, SASREC[1]))]
    llm = [load_run(_eval_run(tmp_path, "SFT", s, LLM[s])) for s in (2, 1)]
    board = build(base + llm, "rank", "SASRec", n_resamples=1000)
    p = {r.name: r for r in board.rows}["SFT"].paired["hr@1"]
    expected = np.mean([_hr(LLM[s]["rank"], 1) for s in (1, 2)]) - _hr(SASREC[1]["rank"], 1)
    assert p.seeds == 2 and p.diff == pytest.approx(expected)


def test_the_command_writes_markdown_and_a_figure(runs, tmp_path, capsys):
    from napo.scripts.leaderboard import main

    out = tmp_path / "board" / "board.md"
    assert main([*map(str, runs), "--baseline", "SASRec", "--output", str(out), "--resamples", "500"]) == 0
    text = out.read_text()
    assert "### candidate list (`rank`)" in text and "### full catalogue (`full`)" in text
    mean = np.mean([_hr(LLM[s]["rank"], 1) for s in (1, 2)])
    se = np.std([_hr(LLM[s]["rank"], 1) for s in (1, 2)], ddof=1) / math.sqrt(2)
    assert f"| hybrid NAPO | 1, 2 | {mean:.4f} ± {se:.4f} |" in text
    diff = np.mean([_hr(LLM[s]["rank"], 1) - _hr(SASREC[s]["rank"], 1) for s in (1, 2)])
    assert f"{diff:+.4f} [" in text
    assert (tmp_path / "board" / "board.png").stat().st_size > 1000
    assert capsys.readouterr().out.strip().startswith("### candidate list")


def test_runs_on_other_rows_are_refused_with_one_line(runs, tmp_path, capsys):
    from napo.scripts.leaderboard import main

    other = _recsys_run(tmp_path / "x", "GRU4Rec", 1, SASREC[1], rows=[*ROWS[:-1], 99])
    assert main([*map(str, runs), str(other), "--baseline", "SASRec", "--resamples", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {other} scored other rows")
    data = _recsys_run(tmp_path / "y", "GRU4Rec", 1, SASREC[1], fingerprint="0" * 64)
    assert main([*map(str, runs), str(data), "--baseline", "SASRec", "--resamples", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset_fingerprint" in err[0] and str(data) in err[0]


def test_files_that_disagree_and_a_missing_baseline_are_refused(runs, tmp_path, capsys):
    from napo.scripts.leaderboard import main

    liar = _recsys_run(tmp_path / "z", "Caser", 1, SASREC[1], lie=True)
    assert main([*map(str, runs), str(liar), "--baseline", "SASRec"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "per_row.json gives rank/hr@1" in err[0]
    assert main([*map(str, runs), "--baseline", "GRU4Rec"]) == 2
    assert "baseline 'GRU4Rec' has no run" in capsys.readouterr().err

"""napo.eval.stats: paired intervals and tests against known answers, and per-row round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napo.eval.metrics import metrics_from_ranks
from napo.eval.report import EvalOutputError, load_per_row, write_per_row
from napo.eval.stats import (
    NO_DIFFERENCE,
    compare_runs,
    crossed_bootstrap,
    paired,
    paired_table,
    row_values,
)


def _hits(wins: int, losses: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * wins + [0] * losses + [1] * both + [0] * neither, float)
    b = np.array([0] * wins + [1] * losses + [1] * both + [0] * neither, float)
    return a, b


def test_mcnemar_exact_p_is_the_binomial_tail():
    a, b = _hits(wins=8, losses=2, both=30, neither=60)
    r = paired(a, b, metric="hr@1", names=("A", "B"))
    # two-sided exact binomial on the 10 discordant rows: 2 * P(X <= 2), X ~ Bin(10, 1/2)
    assert r.p == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert r.diff == pytest.approx(6 / 100)
    assert r.mean_a == pytest.approx(0.38) and r.mean_b == pytest.approx(0.32)
    assert "McNemar" in r.test and r.seeds == 1 and r.p_seeds is None


def test_single_seed_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    n = 4000
    a = rng.normal(0.3, 1.0, n)
    b = a - rng.normal(0.1, 0.5, n)  # d ~ N(0.1, 0.5^2)
    d = a - b
    r = paired(a, b, n_resamples=4000)
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    assert r.diff == pytest.approx(d.mean())
    assert r.low == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert r.high == pytest.approx(d.mean() + half, abs=0.15 * half)
    assert r.verdict() == "A > B" and r.p < 0.001 and "permutation" in r.test


def test_interval_containing_zero_says_no_difference():
    a, b = _hits(wins=6, losses=5, both=40, neither=49)
    r = paired(a, b, names=("NAPO", "SFT"))
    assert r.low < 0 < r.high and r.verdict() == NO_DIFFERENCE
    r2 = paired(b, a, names=("SFT", "NAPO"))
    assert r2.diff == pytest.approx(-r.diff)


def test_identical_models_give_a_point_interval_and_p_one():
    a = np.array([1, 0, 1, 1, 0], float)
    r = paired(a, a.copy())
    assert (r.diff, r.low, r.high, r.p) == (0.0, 0.0, 0.0, 1.0)
    assert r.verdict() == NO_DIFFERENCE


def test_crossed_bootstrap_widens_with_seed_variance():
    rng = np.random.default_rng(1)
    s, n = 5, 2000
    noise = rng.normal(0.0, 0.3, (s, n))
    quiet = 0.05 + noise  # every seed the same expected difference
    offsets = np.array([-0.2, -0.1, 0.0, 0.1, 0.45])[:, None]  # training variance dominates
    loud = 0.05 + offsets + noise
    lo_q, hi_q = crossed_bootstrap(quiet, n_resamples=3000)
    lo_l, hi_l = crossed_bootstrap(loud, n_resamples=3000)
    assert lo_q < quiet.mean() < hi_q and hi_q - lo_q < 0.05
    # with 5 seeds the spread of the seed means sets the width: about that of the seed bootstrap
    seed_means = loud.mean(1)
    boot = [rng.choice(seed_means, s).mean() for _ in range(3000)]
    width = np.quantile(boot, 0.975) - np.quantile(boot, 0.025)
    assert hi_l - lo_l == pytest.approx(width, rel=0.25)
    r = paired(loud + 1.0, np.ones_like(loud), n_resamples=3000)
    assert r.seeds == s and r.p_seeds is not None and len(r.seed_diffs) == s
    assert "crossed" in r.interval and r.verdict() == NO_DIFFERENCE


def test_seed_level_t_test_is_scipy_ttest_rel():
    from scipy import stats

    rng = np.random.default_rng(2)
    a, b = rng.random((4, 50)), rng.random((4, 50))
    r = paired(a, b, n_resamples=500)
    assert r.p_seeds == pytest.approx(stats.ttest_rel(a.mean(1), b.mean(1)).pvalue)


def test_one_fixed_model_pairs_with_every_seed():
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], float)
    b = np.array([0, 0, 1, 1], float)
    r = paired(a, b, n_resamples=200)
    assert r.seeds == 2 and r.seed_diffs == (0.25, 0.25)


def test_shape_errors():
    with pytest.raises(ValueError, match="same seeds and rows"):
        paired(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        paired(np.array([1.0, math.nan]), np.zeros(2))


def test_row_values_follow_the_metric_definitions():
    ranks = [1, 3, 12, math.inf, 2]
    per_row = {"ranks": {"rank": [None if math.isinf(r) else r for r in ranks], "full": [5, 1, 1, 2, 9]},
               "values": {"recall@20": [0.5, 1, 0, 0, 1]}}
    expected = metrics_from_ranks(np.array(ranks, float), (1, 10))
    assert row_values(per_row, "hr@10").mean() == pytest.approx(expected["hr@10"])
    assert row_values(per_row, "ndcg@10").mean() == pytest.approx(expected["ndcg@10"])
    assert row_values(per_row, "mrr").mean() == pytest.approx(expected["mrr"])
    assert row_values(per_row, "full/hr@1").tolist() == [0, 1, 1, 0, 0]
    assert row_values(per_row, "recall@20").tolist() == [0.5, 1, 0, 0, 1]
    with pytest.raises(KeyError, match="section 'generate'"):
        row_values(per_row, "generate/hr@1")


def test_compare_runs_aligns_rows_and_refuses_other_rows(tmp_path):
    fp = "abc"
    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
    write_per_row(tmp_path / "a", rows=[3, 1, 2, 0], split="test", dataset_fingerprint=fp,
                  ranks={"rank": [1, 2, 1, 5]})
    # the same rows in another order: row 0 rank 5, 1 rank 2, 2 rank 1, 3 rank 1
    write_per_row(tmp_path / "b", rows=[0, 1, 2, 3], split="test", dataset_fingerprint=fp,
                  ranks={"rank": [1, 2, 1, 5]})
    r = compare_runs(tmp_path / "a", tmp_path / "b", "hr@1", names=("a", "b"))
    # a hits rows 3 and 2; b hits rows 0 and 2: a wins row 3, b wins row 0
    assert (r.mean_a, r.mean_b, r.diff) == (0.5, 0.5, 0.0)
    assert "1 rows A only, 1 B only" in r.test
    assert load_per_row(tmp_path / "a")["rows"] == [3, 1, 2, 0]
    write_per_row(tmp_path / "c", rows=[0, 1, 2, 4], split="test", dataset_fingerprint=fp, ranks={"rank": [1] * 4})
    with pytest.raises(EvalOutputError, match="other rows"):
        compare_runs(tmp_path / "a", tmp_path / "c", "hr@1")
    write_per_row(tmp_path / "d", rows=[0, 1, 2, 3], split="valid", dataset_fingerprint=fp, ranks={"rank": [1] * 4})
    with pytest.raises(EvalOutputError, match="split"):
        compare_runs(tmp_path / "a", tmp_path / "d", "hr@1")
    with pytest.raises(EvalOutputError, match="no per-row results"):
        load_per_row(tmp_path)
    assert "| a vs b | hr@1 |" in paired_table([r])

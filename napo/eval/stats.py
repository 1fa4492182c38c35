"""Paired comparisons of two methods on the same rows: the toolkit's one statistics module.

Every comparison the toolkit prints (the NAPO study, `napo-eval --compare`, the recsys and CF
tables, the leaderboard) goes through :func:`paired`. Two methods are compared on the SAME test
rows, and, when there are seeds, seed by seed (seed s of method A beside seed s of method B: the
same SFT model, the same data order where the pipeline shares them).

Inputs are per-row values, [N] or [S, N] (S seeds): 0/1 hits for hr@k, gains for ndcg@k, 1/rank
for mrr, or any per-user value (CF recall@20). With d = a - b:

- ``diff`` = mean of d over seeds and rows.
- The interval (95% by default):
  - one seed: scipy.stats.bootstrap over rows of d (paired by construction), BCa;
  - several seeds: a crossed bootstrap that redraws seeds AND rows independently, percentile
    interval. scipy has no crossed design, so this one resampler is written here (multinomial
    counts, so every draw costs one matrix product). Redrawing both factors counts their
    interaction twice, which makes the interval somewhat wider than the truth: conservative.
- ``p``: for 0/1 values the exact McNemar test (scipy.stats.binomtest on the discordant rows,
  pooled over seeds: conditional on the trained models); otherwise a sign-flip permutation test
  over rows of the seed-averaged difference (scipy.stats.permutation_test).
- ``p_seeds`` (S >= 2): scipy.stats.ttest_rel over the per-seed means, the test of training
  variance alone.

A claim "A beats B" needs the interval to exclude 0 (``verdict``); otherwise the toolkit writes
"no difference measured", never a direction. Same-sign-in-every-seed is not a test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
RESAMPLES = 10_000
NO_DIFFERENCE = "no difference measured"


@dataclass(frozen=True)
class Paired:
    """The paired comparison of method ``names[0]`` (A) against ``names[1]`` (B) on one metric."""

    metric: str
    names: tuple[str, str]
    mean_a: float
    mean_b: float
    diff: float  # mean of a - b
    low: float
    high: float
    confidence: float
    interval: str  # how the interval was computed
    p: float
    test: str  # which test gave p
    p_seeds: float | None  # paired t over per-seed means (None with one seed)
    rows: int
    seeds: int
    seed_diffs: tuple[float, ...]  # mean difference of each seed

    def verdict(self) -> str:
        """'A > B' / 'A < B' when the interval excludes 0, else 'no difference measured'."""
        a, b = self.names
        if self.low > 0:
            return f"{a} > {b}"
        if self.high < 0:
            return f"{a} < {b}"
        return NO_DIFFERENCE

    def cell(self, digits: int = 3) -> str:
        """'+0.012 [+0.004, +0.020], p 0.003' for tables."""
        f = f"{{:+.{digits}f}}"
        return f"{f.format(self.diff)} [{f.format(self.low)}, {f.format(self.high)}], p {format_p(self.p)}"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["verdict"] = self.verdict()
        return out


def format_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _as_matrix(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be per-row values [N] or [seeds, N], got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{name} holds NaN: every row needs a value")
    return x


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.isin(x, (0.0, 1.0)).all())


def crossed_bootstrap(d: np.ndarray, *, confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(d) for d [S, N], redrawing seeds and rows independently.

    Each draw takes row counts c ~ Multinomial(N, 1/N) and seed counts w ~ Multinomial(S, 1/S);
    its mean is sum_s w_s (c . d_s) / (N S). Drawn in blocks so memory stays O(block * N).
    """
    s, n = d.shape
    rng = np.random.default_rng(seed)
    stats, block = [], max(1, 4_000_000 // max(n, 1))
    for start in range(0, n_resamples, block):
        r = min(block, n_resamples - start)
        rows = rng.multinomial(n, np.full(n, 1.0 / n), size=r)  # [r, N]
        per_seed = rows @ d.T / n  # [r, S]
        seeds = rng.multinomial(s, np.full(s, 1.0 / s), size=r)  # [r, S]
        stats.append((per_seed * seeds).sum(1) / s)
    stats = np.concatenate(stats)
    tail = (1.0 - confidence) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))


def paired(a, b, *, metric: str = "", names: Sequence[str] = ("A", "B"), confidence: float = CONFIDENCE,
           n_resamples: int = RESAMPLES, seed: int = 0) -> Paired:
    """Compare method A with method B on the same rows (module docstring).

    Args:
        a, b: per-row values [N] or [S, N]; row j and seed s of A pair with row j and seed s of B.
            B may have one seed while A has S: B is then a fixed model beside each seed of A.
        metric: the metric's name (for tables). names: (A, B).
        confidence: interval level. n_resamples: bootstrap draws. seed: the resampler's seed.
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if b.shape[0] == 1 and a.shape[0] > 1:
        b = np.repeat(b, a.shape[0], axis=0)
    if a.shape[0] == 1 and b.shape[0] > 1:
        a = np.repeat(a, b.shape[0], axis=0)
    if a.shape != b.shape:
        raise ValueError(f"a and b must cover the same seeds and rows, got {a.shape} and {b.shape}")
    s, n = a.shape
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 rows, got {n}")
    d = a - b
    diff = float(d.mean())
    if np.all(d == d.flat[0]):  # no spread at all (e.g. identical models): a point interval
        low = high = diff
        how = "none needed (the difference is the same on every row and seed)"
    elif s == 1:
        res = sps.bootstrap((d[0],), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                            method="BCa", random_state=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isnan(low) or math.isnan(high):  # BCa can fail on degenerate samples
            res = sps.bootstrap((d[0],), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                method="percentile", random_state=np.random.default_rng(seed))
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        how = f"paired bootstrap over {n} rows (BCa, {n_resamples} draws)"
    else:
        low, high = crossed_bootstrap(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
        how = f"crossed bootstrap over {s} seeds x {n} rows (percentile, {n_resamples} draws)"

    if _is_binary(a) and _is_binary(b):
        wins, losses = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        p = 1.0 if wins + losses == 0 else float(sps.binomtest(wins, wins + losses, 0.5).pvalue)
        test = f"exact McNemar ({wins} rows A only, {losses} B only" + (", pooled over seeds)" if s > 1 else ")")
    else:
        dbar = d.mean(0)
        if np.all(dbar == 0):
            p = 1.0
        else:
            res = sps.permutation_test((dbar,), np.mean, permutation_type="samples", n_resamples=n_resamples,
                                       random_state=np.random.default_rng(seed))
            p = float(res.pvalue)
        test = "sign-flip permutation test over rows"
    seed_diffs = tuple(float(x) for x in d.mean(1))
    p_seeds = None
    if s >= 2:
        spread = np.std(seed_diffs)
        p_seeds = float(sps.ttest_rel(a.mean(1), b.mean(1)).pvalue) if spread > 0 else (1.0 if diff == 0 else 0.0)
    return Paired(metric=metric, names=(str(names[0]), str(names[1])), mean_a=float(a.mean()),
                  mean_b=float(b.mean()), diff=diff, low=low, high=high, confidence=confidence,
                  interval=how, p=p, test=test, p_seeds=p_seeds, rows=n, seeds=s, seed_diffs=seed_diffs)


# ------------------------------------------------------------------------------------------------
# per-row values of finished runs


def row_values(per_row: dict, metric: str) -> np.ndarray:
    """Per-row values of ``metric`` from a loaded per_row.json (napo.eval.report.load_per_row).

    ``metric``: a stored value key (e.g. CF ``recall@20``), or ``[SECTION/]hr@k | ndcg@k | mrr``
    computed from the section's 1-based pessimistic ranks (SECTION: rank (default), full,
    generate, ...), with the definitions of napo.eval.metrics (rank inf = not ranked).
    """
    values = per_row.get("values") or {}
    if metric in values:
        return np.asarray(values[metric], dtype=np.float64)
    section, _, name = metric.rpartition("/")
    ranks_by_section = per_row.get("ranks") or {}
    section = section or "rank"
    if section not in ranks_by_section:
        raise KeyError(f"no per-row ranks for section {section!r} (have {', '.join(ranks_by_section) or 'none'}"
                       f"; values: {', '.join(values) or 'none'})")
    r = np.array([math.inf if v is None else v for v in ranks_by_section[section]], dtype=np.float64)
    kind, _, k = name.partition("@")
    if kind == "mrr":
        return 1.0 / r
    if kind not in ("hr", "ndcg") or not k.isdigit():
        raise KeyError(f"metric {name!r}: use hr@k, ndcg@k or mrr")
    hit = r <= int(k)
    if kind == "hr":
        return hit.astype(np.float64)
    return np.where(hit, 1.0 / np.log2(np.minimum(r, 1e300) + 1.0), 0.0)


def _seed_matrix(run_dirs: Sequence[str | os.PathLike], metric: str) -> tuple[np.ndarray, dict]:
    from napo.eval.report import EvalOutputError, load_per_row

    loaded = [load_per_row(d) for d in run_dirs]
    first = loaded[0]
    order = np.argsort(np.asarray(first["rows"]), kind="stable")
    rows = np.asarray(first["rows"])[order]
    matrix = []
    for run_dir, pr in zip(run_dirs, loaded, strict=True):
        for key in ("split", "dataset_fingerprint"):
            if pr.get(key) != first.get(key):
                raise EvalOutputError(f"{run_dir}: {key} {pr.get(key)!r} differs from {run_dirs[0]}'s "
                                      f"{first.get(key)!r}; compare runs on the same data")
        mine = np.asarray(pr["rows"])
        o = np.argsort(mine, kind="stable")
        if not np.array_equal(mine[o], rows):
            raise EvalOutputError(f"{run_dir} scored other rows than {run_dirs[0]} "
                                  f"({len(mine)} vs {len(rows)}); evaluate both on the same rows")
        matrix.append(row_values(pr, metric)[o])
    return np.stack(matrix), {"rows": rows, "split": first.get("split"),
                              "dataset_fingerprint": first.get("dataset_fingerprint")}


def compare_runs(runs_a: str | os.PathLike | Sequence, runs_b: str | os.PathLike | Sequence, metric: str, *,
                 names: Sequence[str] = ("A", "B"), **kwargs) -> Paired:
    """``paired`` on finished runs: each side a run directory or a list of them (seeds, paired in
    order; one run on a side is a fixed model). Raises EvalOutputError when the runs scored
    other rows or other data."""
    from napo.eval.report import EvalOutputError

    side_a = [runs_a] if isinstance(runs_a, (str, os.PathLike)) else list(runs_a)
    side_b = [runs_b] if isinstance(runs_b, (str, os.PathLike)) else list(runs_b)
    a, info_a = _seed_matrix(side_a, metric)
    b, info_b = _seed_matrix(side_b, metric)
    for key in ("split", "dataset_fingerprint"):
        if info_a[key] != info_b[key]:
            raise EvalOutputError(f"{names[0]} and {names[1]} differ in {key} ({info_a[key]} vs {info_b[key]})")
    if not np.array_equal(info_a["rows"], info_b["rows"]):
        raise EvalOutputError(f"{names[0]} and {names[1]} scored other rows; evaluate both on the same rows")
    if len(side_a) > 1 and len(side_b) > 1 and len(side_a) != len(side_b):
        raise EvalOutputError(f"{names[0]} has {len(side_a)} seeds and {names[1]} {len(side_b)}: pair seed by seed")
    return paired(a, b, metric=metric, names=names, **kwargs)


def paired_table(rows: Sequence[Paired], digits: int = 3) -> str:
    """Markdown: one line per comparison, with interval, p, seed-level p and the verdict."""
    lines = ["| comparison | metric | A | B | A - B [95% CI], p | p (seeds) | seeds x rows | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.names[0]} vs {r.names[1]} | {r.metric} | {r.mean_a:.{digits + 1}f} | "
                     f"{r.mean_b:.{digits + 1}f} | {r.cell(digits)} | {format_p(r.p_seeds)} | "
                     f"{r.seeds} x {r.rows} | {r.verdict()} |")
    return "\n".join(lines)

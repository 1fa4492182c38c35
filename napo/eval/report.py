"""Evaluation outputs: metrics.json, predictions.jsonl, report.md, plots/*.png, and run comparison.

metrics.json layout (one object):
    name, model, dataset, dataset_fingerprint, split, num_examples, num_candidates, modes, scorer,
    "rank":     {hr@k, ndcg@k, mrr, pop/...}                          (rank over the candidates)
    "full":     {hr@k, ndcg@k, mrr, pop/...}, "full_settings": {...}  (rank over the catalogue)
    "generate": {hr@1, hr@1_valid, valid_ratio, num_*, pop/...}       (free decoding)
    "generate/candidates", "generate/catalogue": the same keys         (constrained decoding)
    "agreement": {num_valid, top1_agree, top1_agree_ratio}             (rank and free decoding)
NaN (e.g. a band without targets) is written as null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_prep.errors import UserError
from napo.eval.metrics import BAND_NAMES


class EvalOutputError(UserError):
    """A run directory that cannot be read (one clear line)."""


def _clean(value):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(output_dir: str | os.PathLike, metrics: dict) -> Path:
    path = Path(output_dir) / "metrics.json"
    _atomic_write(path, json.dumps(_clean(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def write_predictions(output_dir: str | os.PathLike, predictions: Sequence[dict]) -> Path:
    path = Path(output_dir) / "predictions.jsonl"
    lines = (json.dumps(_clean(p), sort_keys=True, allow_nan=False) for p in predictions)
    _atomic_write(path, "".join(line + "\n" for line in lines))
    return path


def load_metrics(run_dir: str | os.PathLike) -> dict:
    """metrics.json of an evaluation run directory."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise EvalOutputError(f"{path}: no metrics.json; run recipes/evaluate.py with --output_dir {run_dir} first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvalOutputError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); re-run the evaluation") from err


PER_ROW_FILE = "per_row.json"
PER_ROW_FORMAT = 1


def write_per_row(output_dir: str | os.PathLike, *, rows: Sequence[int], split: str | None,
                  dataset_fingerprint: str | None, ranks: dict[str, Sequence[float]] | None = None,
                  values: dict[str, Sequence[float]] | None = None) -> Path:
    """OUT/per_row.json: what napo.eval.stats pairs two runs on.

    rows [N]: the row ids (position in the split, or the user id for CF set metrics); ranks:
    section -> [N] 1-based pessimistic rank of the target ("rank": among the candidates, "full":
    in the catalogue, "generate": 1 for a hit, inf otherwise; inf is written as null); values:
    metric -> [N] per-row values (e.g. CF recall@20).
    """
    n = len(rows)
    for kind, table in (("ranks", ranks or {}), ("values", values or {})):
        for key, column in table.items():
            if len(column) != n:
                raise ValueError(f"per-row {kind} {key!r} has {len(column)} values for {n} rows")
    record = {"format": PER_ROW_FORMAT, "split": split, "dataset_fingerprint": dataset_fingerprint,
              "rows": [int(r) for r in rows],
              "ranks": {k: [float(x) for x in v] for k, v in (ranks or {}).items()},
              "values": {k: [float(x) for x in v] for k, v in (values or {}).items()}}
    path = Path(output_dir) / PER_ROW_FILE
    _atomic_write(path, json.dumps(_clean(record), allow_nan=False) + "\n")
    return path


def load_per_row(run_dir: str | os.PathLike) -> dict:
    """per_row.json of a finished run (see write_per_row); one clear line when absent."""
    path = Path(run_dir) / PER_ROW_FILE
    if not path.is_file():
        raise EvalOutputError(f"{path}: no per-row results; re-run the evaluation of {run_dir} with this "
                              "version (paired comparisons need the rows)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvalOutputError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg}); re-run the evaluation") from err
    if record.get("format") != PER_ROW_FORMAT:
        raise EvalOutputError(f"{path}: per-row format {record.get('format')!r}, expected {PER_ROW_FORMAT}; re-run the evaluation")
    return record


# --------------------------------------------------------------------------- formatting


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; cells are formatted with `_fmt` unless already strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in row) + " |")
    return "\n".join(lines)


def _ks(section: dict, prefix: str = "hr@") -> list[int]:
    return sorted(int(k[len(prefix):]) for k in section if k.startswith(prefix) and k[len(prefix):].isdigit())


def _pop_ks(section: dict) -> list[int]:
    return sorted({int(k.split("@")[1].split("/")[0]) for k in section if k.startswith("pop/hr@") and "/" in k[7:]})


# generation sections of metrics.json (napo.eval.config.EvalArguments.generate_sections) -> how shown
GENERATE_SECTIONS = {"generate": "free", "generate/candidates": "candidates trie",
                     "generate/catalogue": "catalogue trie"}


def render_report(metrics: dict, plots: Sequence[str] = ()) -> str:
    """report.md text of one evaluation run."""
    lines = [f"# Evaluation: {metrics.get('name', 'run')}", ""]
    setup = [
        ("dataset", metrics.get("dataset")), ("split", metrics.get("split")),
        ("examples", metrics.get("num_examples")), ("candidates per example", metrics.get("num_candidates")),
        ("modes", ", ".join(metrics.get("modes", []))), ("scorer", metrics.get("scorer")),
        ("model", metrics.get("model")),
        ("dataset fingerprint", metrics.get("dataset_fingerprint")),
    ]
    lines += [markdown_table(["setting", "value"], [(k, str(v) if v is not None else "–") for k, v in setup]), ""]
    rank = metrics.get("rank")
    if rank:
        ks = _ks(rank)
        lines += ["## Ranking by log-likelihood (`rank`)", "",
                  "Pessimistic ties: a target tied with other candidates ranks after them.", ""]
        header = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]
        lines += [markdown_table(header, [[rank.get(f"hr@{k}") for k in ks]
                                          + [rank.get(f"ndcg@{k}") for k in ks] + [rank.get("mrr")]]), ""]
    full = metrics.get("full")
    if full:
        settings = metrics.get("full_settings") or {}
        ks = _ks(full)
        lines += ["## Full-catalogue ranking (`full`)", "",
                  f"Every one of the {_fmt(settings.get('num_items'))} catalogue items ranked for each row by "
                  f"{settings.get('scorer', 'the scorer')}; history items "
                  f"{'excluded (the target stays)' if settings.get('exclude_history') else 'ranked too'}; "
                  f"pessimistic ties; the recommenders' `full/...` keys. Cost: "
                  f"{_fmt((settings.get('seconds_per_row') or math.nan) * 1000, 1)} ms per row.", ""]
        header = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]
        lines += [markdown_table(header, [[full.get(f"hr@{k}") for k in ks]
                                          + [full.get(f"ndcg@{k}") for k in ks] + [full.get("mrr")]]), ""]
    generated = [(name, metrics[name]) for name in GENERATE_SECTIONS if metrics.get(name)]
    if generated:
        lines += ["## Greedy generation (`generate`)", "",
                  "Free decoding (the papers' protocol) is matched to the candidate titles; constrained decoding "
                  "follows a trie of the allowed titles' tokens, so every answer names an item "
                  "(`napo.eval.constrained`). HR@1 = hits / all examples (S-DPO, NAPO); HR@1 (valid) = hits / "
                  "valid answers (LLaRA).", ""]
        lines += [markdown_table(
            ["decoding", "HR@1", "HR@1 (valid)", "ValidRatio", "hits", "valid", "exact", "contained", "ambiguous",
             "no match"],
            [[GENERATE_SECTIONS[name], sec.get("hr@1"), sec.get("hr@1_valid"), sec.get("valid_ratio"),
              sec.get("num_hits"), sec.get("num_valid"), sec.get("num_exact"), sec.get("num_contained"),
              sec.get("num_ambiguous"), sec.get("num_no_match")] for name, sec in generated]), ""]
        agreement = metrics.get("agreement")
        if agreement and agreement.get("num_valid"):
            lines += [f"Agreement with `rank`: {agreement['top1_agree']} of {agreement['num_valid']} valid answers "
                      f"name the candidate ranked first by log-likelihood ({_fmt(agreement['top1_agree_ratio'])}).",
                      ""]
    lines += ["## Popularity bands", "",
              "Bands by training interactions: head = most popular items holding the first third of "
              "interactions, mid the next third, tail the rest (and unseen items).", ""]
    header, rows = ["band", "share of targets"], []
    sections = [(name, metrics[name]) for name in ("rank", "full", *GENERATE_SECTIONS) if metrics.get(name)]
    for name, sec in sections:
        header += [f"{name} HR@{k}" for k in _pop_ks(sec)]
    for band in BAND_NAMES:
        any_sec = sections[0][1] if sections else {}
        row = [band, any_sec.get(f"pop/targets/{band}")]
        for _, sec in sections:
            row += [sec.get(f"pop/hr@{k}/{band}") for k in _pop_ks(sec)]
        rows.append(row)
    if sections:
        row = ["balance (1 - Gini)", ""]
        for _, sec in sections:
            row += [sec.get(f"pop/balance@{k}") for k in _pop_ks(sec)]
        rows.append(row)
        lines += [markdown_table(header, rows), ""]
        exp_rows = []
        for name, sec in sections:
            for k in _pop_ks(sec):
                exp_rows.append([f"{name} top-{k}", sec.get(f"pop/avg_popularity@{k}"),
                                 sec.get(f"pop/tail_share@{k}"), sec.get(f"pop/coverage@{k}"),
                                 sec.get(f"pop/gini@{k}")])
        lines += [markdown_table(["recommended", "avg popularity", "tail share", "coverage", "Gini"],
                                 exp_rows), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def plot_hr_curve(target_ranks: Sequence[int], num_candidates: int, path: Path,
                  generate_hr1: float | None = None) -> Path:
    """HR@K for K = 1..C from the rank-mode target ranks (and generate's HR@1 as one point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ranks = np.asarray(target_ranks, dtype=np.float64)
    ks = np.arange(1, num_candidates + 1)
    hr = [(ranks <= k).mean() if ranks.size else np.nan for k in ks]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ks, hr, marker="o", markersize=3, label="rank (log-likelihood)")
    ax.plot(ks, ks / num_candidates, linestyle="--", color="grey", label="random")
    if generate_hr1 is not None and math.isfinite(generate_hr1):
        ax.scatter([1], [generate_hr1], color="red", zorder=3, label="generate HR@1")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_band_hr(metrics: dict, path: Path) -> Path:
    """Grouped bars: HR per popularity band for each section and k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for name in ("rank", "full", *GENERATE_SECTIONS):
        sec = metrics.get(name) or {}
        for k in _pop_ks(sec):
            values = [sec.get(f"pop/hr@{k}/{b}") for b in BAND_NAMES]
            series.append((f"{name} HR@{k}", [np.nan if v is None else v for v in values]))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(BAND_NAMES))
    for i, (label, values) in enumerate(series):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(x, BAND_NAMES)
    ax.set_ylabel("HR")
    ax.set_ylim(0, 1.25)  # headroom for the legend above bars that reach 1
    ax.set_title("HR by popularity band of the target")
    if series:
        ax.legend(fontsize=8, loc="upper center", ncol=len(series))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(output_dir: str | os.PathLike, metrics: dict, predictions: Sequence[dict]) -> Path:
    """Write plots/*.png and report.md for one run (metrics.json layout above)."""
    out = Path(output_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = []
    if metrics.get("rank") and predictions and "target_rank" in predictions[0]:
        gen_hr1 = (metrics.get("generate") or {}).get("hr@1")
        plot_hr_curve([p["target_rank"] for p in predictions], int(metrics["num_candidates"]),
                      out / "plots" / "hr_at_k.png", gen_hr1)
        plots.append("plots/hr_at_k.png")
    if any(metrics.get(name) for name in ("rank", "full", *GENERATE_SECTIONS)):
        plot_band_hr(metrics, out / "plots" / "hr_by_band.png")
        plots.append("plots/hr_by_band.png")
    path = out / "report.md"
    _atomic_write(path, render_report(metrics, plots) + "\n")
    return path


# --------------------------------------------------------------------------- comparison

# (column header, section, key); the first that exists in a run fills the cell
COMPARE_COLUMNS = (
    ("HR@1", "rank", "hr@1"),
    ("HR@5", "rank", "hr@5"),
    ("HR@10", "rank", "hr@10"),
    ("NDCG@10", "rank", "ndcg@10"),
    ("MRR", "rank", "mrr"),
    ("gen HR@1", "generate", "hr@1"),
    ("ValidRatio", "generate", "valid_ratio"),
    ("gen HR@1 (valid)", "generate", "hr@1_valid"),
    ("gen HR@1 (candidates trie)", "generate/candidates", "hr@1"),
    ("gen HR@1 (catalogue trie)", "generate/catalogue", "hr@1"),
    ("full HR@10", "full", "hr@10"),
    ("full NDCG@10", "full", "ndcg@10"),
    ("HR@10 head", "rank", "pop/hr@10/head"),
    ("HR@10 mid", "rank", "pop/hr@10/mid"),
    ("HR@10 tail", "rank", "pop/hr@10/tail"),
    ("top-1 avg pop", "rank", "pop/avg_popularity@1"),
    ("top-10 tail share", "rank", "pop/tail_share@10"),
)


def compare(run_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> str:
    """One markdown table comparing evaluation runs (rows = runs, in the given order).

    A cell is "–" when the run did not compute it (e.g. generate columns of Popularity).
    Raises EvalOutputError when runs disagree on dataset fingerprint, split or example count:
    their numbers would not be comparable.
    """
    runs = [load_metrics(d) for d in run_dirs]
    if names is not None and len(names) != len(runs):
        raise EvalOutputError(f"{len(names)} names for {len(runs)} runs; give one name per run")
    for key in ("dataset_fingerprint", "split", "num_examples"):
        values = {str(r.get(key)) for r in runs}
        if len(values) > 1:
            detail = ", ".join(f"{d}: {r.get(key)}" for d, r in zip(run_dirs, runs, strict=True))
            raise EvalOutputError(f"runs differ in {key} ({detail}); compare runs on the same data")
    header = ["method"] + [c[0] for c in COMPARE_COLUMNS]
    rows = []
    for i, run in enumerate(runs):
        name = names[i] if names is not None else run.get("name") or Path(run_dirs[i]).name
        rows.append([name] + [(run.get(sec) or {}).get(key) for _, sec, key in COMPARE_COLUMNS])
    # drop columns that no run has
    keep = [0] + [j + 1 for j in range(len(COMPARE_COLUMNS)) if any(r[j + 1] is not None for r in rows)]
    first = runs[0] if runs else {}
    caption = (f"{first.get('dataset', '?')} / {first.get('split', '?')}: {first.get('num_examples', '?')} examples, "
               f"{first.get('num_candidates', '?')} candidates each; ties pessimistic; "
               "gen HR@1 = hits / all (S-DPO, NAPO), (valid) = hits / valid answers (LLaRA).")
    table = markdown_table([header[j] for j in keep], [[r[j] for j in keep] for r in rows])
    return caption + "\n\n" + table + paired_section(run_dirs, names)


PAIRED_METRICS = ("hr@1", "ndcg@10", "mrr", "full/hr@10", "full/ndcg@10")


def paired_section(run_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None,
                   metrics: Sequence[str] = PAIRED_METRICS) -> str:
    """Paired differences of every method against the first one (napo.eval.stats), on the per-row
    results of the rank and full-catalogue sections that both have; runs sharing a name are that
    method's seeds, paired in order. Empty when fewer than two methods; a note when some run has
    no per_row.json."""
    from napo.eval.stats import compare_runs, paired_table

    groups: dict[str, list] = {}
    for i, run_dir in enumerate(run_dirs):
        name = names[i] if names is not None else load_metrics(run_dir).get("name") or Path(run_dir).name
        groups.setdefault(name, []).append(run_dir)
    if len(groups) < 2:
        return ""
    missing = [str(d) for d in run_dirs if not (Path(d) / PER_ROW_FILE).is_file()]
    if missing:
        return (f"\n\nNo paired intervals: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no "
                f"{PER_ROW_FILE} (evaluated by an older version); re-run to compare on the same rows.")
    (base, base_runs), *others = groups.items()
    results = []
    for name, runs in others:
        sections = set(load_per_row(runs[0]).get("ranks", {})) & set(load_per_row(base_runs[0]).get("ranks", {}))
        for metric in metrics:
            if (metric.rpartition("/")[0] or "rank") in sections:  # both sides ranked that way
                results.append(compare_runs(runs, base_runs, metric, names=(name, base)))
    if not results:
        return ""
    return (f"\n\nPaired differences against {base} on the same rows (napo.eval.stats: interval from a "
            "paired bootstrap over rows, crossed with seeds when there are several; p: exact McNemar for "
            "hr@k, sign-flip permutation otherwise):\n\n" + paired_table(results))


FIGURE_KEYS = ("hr@1", *(f"pop/hr@10/{band}" for band in BAND_NAMES))


def summarize_runs(run_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> dict:
    """Rank metrics per method: runs sharing a name are seeds of one method.

    Returns {name: {key: (mean, standard error, number of runs)}} for FIGURE_KEYS, in first-seen
    order; the standard error is NaN for a single run, a missing value is left out of the mean.
    """
    runs = [load_metrics(d) for d in run_dirs]
    if names is not None and len(names) != len(runs):
        raise EvalOutputError(f"{len(names)} names for {len(runs)} runs; give one name per run")
    groups: dict[str, list[dict]] = {}
    for i, run in enumerate(runs):
        name = names[i] if names is not None else run.get("name") or Path(run_dirs[i]).name
        groups.setdefault(name, []).append(run.get("rank") or {})
    summary = {}
    for name, sections in groups.items():
        summary[name] = {}
        for key in FIGURE_KEYS:
            values = [s[key] for s in sections if s.get(key) is not None]
            mean = float(np.mean(values)) if values else math.nan
            se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
            summary[name][key] = (mean, se, len(values))
    return summary


def plot_methods(summary: dict, path: str | os.PathLike) -> Path:
    """One figure, methods side by side: HR@1 (error bars = s.e. over seeds), HR@10 per band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(names) + 4), 4))
    means = [summary[n]["hr@1"][0] for n in names]
    errors = [0.0 if math.isnan(summary[n]["hr@1"][1]) else summary[n]["hr@1"][1] for n in names]
    left.bar(x, means, yerr=errors, capsize=4, color="tab:blue")
    left.set_xticks(x, names, rotation=40, ha="right")
    left.set_ylabel("HR@1 (mean +- s.e. over seeds)")
    width = 0.8 / len(BAND_NAMES)
    for j, band in enumerate(BAND_NAMES):
        values = [summary[n][f"pop/hr@10/{band}"][0] for n in names]
        right.bar(x + (j - (len(BAND_NAMES) - 1) / 2) * width, values, width, label=band)
    right.set_xticks(x, names, rotation=40, ha="right")
    right.set_ylabel("HR@10 per popularity band of the target")
    right.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

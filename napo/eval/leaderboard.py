"""One leaderboard over finished runs: a table per protocol on the same test rows, seeds grouped by
method, mean +- s.e. over seeds, and the paired intervals of ``napo.eval.stats`` against a baseline.

A run is any directory with ``metrics.json`` and ``per_row.json``: a ``napo-eval`` output (an LLM,
Popularity, aux scores) or a ``napo-recsys`` run (SASRec, GRU4Rec, Caser, DreamRec, PreferDiff,
MF, LightGCN). Protocols are the sections of ``per_row.json``:

- ``rank``: the target among the row's candidates (20 in the papers' protocol);
- ``full``: the target in the whole catalogue (the run's exclusion rule);
- ``generate``: greedy generation matched to a title (hit = rank 1).

A method's name is the ``name`` of its ``metrics.json`` (napo-eval ``--name``), else the model of
its ``run.json`` (``SASRec``; CF models ``MF-bpr``...), else the directory name, unless ``names``
gives one per run; runs sharing a name are seeds of one method. A run's seed is the training seed
(``run.json`` of the run, or of the adapter / model / aux run it evaluated); two methods are
paired seed by seed on the seeds both have (``paired_on``), a single run on one side being a fixed
model beside every seed of the other.

Every run of a protocol must have scored the same rows of the same split of the same data
(``napo.eval.stats`` checks it and :func:`build` refuses the run with one line), and the mean of a
run's per-row values must equal the value its ``metrics.json`` reports (a run whose two files
disagree is refused).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napo.eval.report import EvalOutputError, load_metrics, load_per_row, markdown_table
from napo.eval.stats import Paired, _seed_matrix, format_p, paired

PROTOCOLS = {
    "rank": "candidate list",
    "full": "full catalogue",
    "generate": "generate-and-match",
}
METRICS = {
    "rank": ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr"),
    "full": ("hr@10", "hr@20", "ndcg@10", "ndcg@20", "mrr"),
    "generate": ("hr@1",),
}
PAIRED = {"rank": ("hr@1", "ndcg@10"), "full": ("hr@10", "ndcg@10"), "generate": ("hr@1",)}
CF_MODELS = ("MF", "LightGCN")


@dataclass
class Run:
    path: Path
    name: str
    seed: int | None
    metrics: dict
    per_row: dict


@dataclass
class Row:
    """One method's line in one protocol's table."""

    name: str
    runs: list[Run]
    means: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (mean, s.e.)
    paired: dict[str, Paired] = field(default_factory=dict)  # metric -> against the baseline


@dataclass
class Board:
    protocol: str
    baseline: str
    rows: list[Row]
    num_rows: int
    split: str | None
    fingerprint: str | None
    metrics: tuple[str, ...]
    paired_metrics: tuple[str, ...]


# --------------------------------------------------------------------------- reading runs


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def method_name(run_dir: Path, metrics: dict, info: dict) -> str:
    """The method a run belongs to (module docstring)."""
    if metrics.get("name"):
        return str(metrics["name"])
    config = info.get("config") or {}
    model = config.get("model")
    if model:
        name = str(model)
        if model in CF_MODELS and config.get("loss"):
            name += f"-{config['loss']}" + ("-shapley" if config.get("sampler") == "shapley" else "")
        return name
    return run_dir.name


def training_seed(run_dir: Path, metrics: dict, info: dict) -> int | None:
    """The seed of the model a run measured: its own run.json for a recsys run, that of the
    evaluated adapter / model / aux run for a napo-eval output."""
    if not metrics.get("modes"):  # a recsys run: its run.json is the training record
        return info.get("seed")
    config = info.get("config") or {}
    for key in ("adapter", "model_name_or_path"):
        if config.get(key) and (Path(config[key]) / "run.json").is_file():
            return _read_json(Path(config[key]) / "run.json").get("seed")
    if config.get("scores_from_aux"):
        return _read_json(Path(config["scores_from_aux"]).parent / "run.json").get("seed")
    return None


def _metric_value(metrics: dict, protocol: str, metric: str):
    """The value metrics.json reports for ``protocol/metric`` (napo-eval nests by mode, napo-recsys
    is flat with ``full/`` keys), or None."""
    section = metrics.get(protocol)
    if isinstance(section, dict) and metric in section:
        return section[metric]
    key = metric if protocol == "rank" else f"{protocol}/{metric}"
    rank = metrics.get("rank")
    if isinstance(rank, dict) and protocol != "rank" and key in rank:  # a mode's extra section kept under rank
        return rank[key]
    return None if isinstance(section, dict) or isinstance(rank, dict) else metrics.get(key)


def load_run(run_dir: str | os.PathLike, name: str | None = None) -> Run:
    path = Path(run_dir)
    metrics = load_metrics(path)
    per_row = load_per_row(path)
    info = _read_json(path / "run.json")
    return Run(path, name or method_name(path, metrics, info), training_seed(path, metrics, info), metrics, per_row)


def check_consistent(run: Run, protocol: str, metrics: Sequence[str], tolerance: float = 1e-6) -> None:
    """The mean of the per-row values equals metrics.json where it reports the metric."""
    from napo.eval.stats import row_values

    for metric in metrics:
        reported = _metric_value(run.metrics, protocol, metric)
        if reported is None:
            continue
        mean = float(np.mean(row_values(run.per_row, f"{protocol}/{metric}")))
        if abs(mean - float(reported)) > tolerance:
            raise EvalOutputError(f"{run.path}: per_row.json gives {protocol}/{metric} {mean:.6f} but metrics.json "
                                  f"says {float(reported):.6f}; re-run the evaluation")


# --------------------------------------------------------------------------- the table


def paired_on(a: list[Run], b: list[Run]) -> tuple[list[Run], list[Run]]:
    """The runs of two methods to pair seed by seed: the seeds both have (in seed order); one run on
    a side stays a fixed model beside every seed of the other; unknown seeds pair in the given order."""
    if len(a) == 1 or len(b) == 1:
        return a, b
    seeds_a, seeds_b = [r.seed for r in a], [r.seed for r in b]
    if None in seeds_a or None in seeds_b:
        if len(a) != len(b):
            raise EvalOutputError(f"{a[0].name} has {len(a)} runs and {b[0].name} {len(b)}, without seeds to pair them")
        return a, b
    common = sorted(set(seeds_a) & set(seeds_b))
    if not common:
        raise EvalOutputError(f"{a[0].name} (seeds {sorted(seeds_a)}) and {b[0].name} (seeds {sorted(seeds_b)}) "
                              "share no seed: pair seed by seed")
    pick = lambda runs: [next(r for r in runs if r.seed == s) for s in common]  # noqa: E731
    return pick(a), pick(b)


def _mean_se(matrix: np.ndarray) -> tuple[float, float]:
    """(mean over seeds of the per-seed means, standard error over seeds; NaN with one seed)."""
    per_seed = matrix.mean(1)
    se = float(per_seed.std(ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else math.nan
    return float(per_seed.mean()), se


def build(runs: Sequence[Run], protocol: str, baseline: str, *, metrics: Sequence[str] | None = None,
          paired_metrics: Sequence[str] | None = None, n_resamples: int = 10_000) -> Board | None:
    """The ``protocol`` table of the runs that have it (None when none has it).

    Raises EvalOutputError (one line) when a run scored other rows / split / data than the others,
    its files disagree, its seeds cannot be paired, or the baseline has no run of this protocol.
    """
    metrics = tuple(metrics or METRICS[protocol])
    paired_metrics = tuple(paired_metrics or PAIRED[protocol])
    present = [r for r in runs if protocol in (r.per_row.get("ranks") or {})]
    if not present:
        return None
    groups: dict[str, list[Run]] = {}
    for run in present:
        groups.setdefault(run.name, []).append(run)
    if baseline not in groups:
        raise EvalOutputError(f"baseline {baseline!r} has no run with {protocol!r} results (methods: "
                              f"{', '.join(groups)}); name one of them with --baseline")
    first = present[0]
    reference = None
    matrices: dict[tuple[str, str], np.ndarray] = {}
    for name, group in groups.items():
        group.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0))
        for run in group:
            check_consistent(run, protocol, metrics)
        dirs = [str(r.path) for r in group]
        for metric in {*metrics, *paired_metrics}:
            try:
                matrix, info = _seed_matrix(dirs, f"{protocol}/{metric}")
            except KeyError as err:
                raise EvalOutputError(f"{dirs[0]}: {err.args[0]}") from None
            matrices[name, metric] = matrix
        if reference is None:
            reference = (info, first.path)
        else:
            for key in ("split", "dataset_fingerprint"):
                if info[key] != reference[0][key]:
                    raise EvalOutputError(f"{group[0].path}: {key} {info[key]!r} differs from {reference[1]}'s "
                                          f"{reference[0][key]!r}; compare runs on the same data")
            if not np.array_equal(info["rows"], reference[0]["rows"]):
                raise EvalOutputError(f"{group[0].path} scored other rows than {reference[1]} ({len(info['rows'])} vs "
                                      f"{len(reference[0]['rows'])}); evaluate every method on the same rows")
    rows = []
    base_runs = groups[baseline]
    for name, group in groups.items():
        row = Row(name, group, {m: _mean_se(matrices[name, m]) for m in metrics})
        if name != baseline:
            mine, theirs = paired_on(group, base_runs)
            for metric in paired_metrics:
                a = _select(matrices[name, metric], group, mine)
                b = _select(matrices[baseline, metric], base_runs, theirs)
                row.paired[metric] = paired(a, b, metric=f"{protocol}/{metric}", names=(name, baseline),
                                            n_resamples=n_resamples)
        rows.append(row)
    rows.sort(key=lambda r: (r.name != baseline, -r.means[metrics[0]][0]))
    info = reference[0]
    return Board(protocol, baseline, rows, len(info["rows"]), info["split"], info["dataset_fingerprint"],
                 metrics, paired_metrics)


def _select(matrix: np.ndarray, group: list[Run], chosen: list[Run]) -> np.ndarray:
    index = [next(i for i, r in enumerate(group) if r is c) for c in chosen]
    return matrix[index]


# --------------------------------------------------------------------------- rendering


def _cell(mean: float, se: float) -> str:
    return f"{mean:.4f}" if math.isnan(se) else f"{mean:.4f} ± {se:.4f}"


def _paired_cell(p: Paired) -> str:
    verdict = p.verdict()
    mark = "" if verdict.startswith("no difference") else (" ▲" if p.low > 0 else " ▼")
    return f"{p.diff:+.4f} [{p.low:+.4f}, {p.high:+.4f}]{mark}"


def render(board: Board) -> str:
    """Markdown of one protocol's table with its caption and notes."""
    seeds = lambda row: ", ".join("?" if r.seed is None else str(r.seed) for r in row.runs)  # noqa: E731
    header = ["method", "seeds", *(m.upper() for m in board.metrics),
              *(f"Δ{m.upper()} vs {board.baseline} [95% CI]" for m in board.paired_metrics)]
    lines = []
    for row in board.rows:
        cells = [row.name, seeds(row)] + [_cell(*row.means[m]) for m in board.metrics]
        for metric in board.paired_metrics:
            cells.append("baseline" if row.name == board.baseline else _paired_cell(row.paired[metric]))
        lines.append(cells)
    caption = (f"### {PROTOCOLS.get(board.protocol, board.protocol)} (`{board.protocol}`)\n\n"
               f"{board.num_rows} {board.split or ''} rows, the same for every method (dataset fingerprint "
               f"{(board.fingerprint or '?')[:12]}). Mean over seeds of each seed's mean over the rows, ± the "
               "standard error over seeds (none with one seed); ties ranked pessimistically. Δ: the method minus "
               f"{board.baseline}, paired on the same rows and seed by seed (napo.eval.stats: paired bootstrap over "
               "rows, crossed with seeds when both have several); ▲/▼ where the interval excludes 0, otherwise no "
               "difference measured.")
    notes = []
    for row in board.rows:
        for metric, p in row.paired.items():
            if p.seeds > 1 or "McNemar" in p.test:
                notes.append(f"{row.name} {metric}: p {format_p(p.p)} ({p.test.split(' (')[0]})"
                             + (f", seed-level paired t p {format_p(p.p_seeds)}" if p.p_seeds is not None else "")
                             + f"; {p.verdict()}.")
    table = markdown_table(header, lines)
    return caption + "\n\n" + table + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "") + "\n"


def plot(boards: Sequence[Board], path: str | os.PathLike) -> Path:
    """One row of panels per protocol: the first metric (mean ± s.e.) per method, and the paired
    difference against the baseline with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(boards), 2, figsize=(11, 2.2 + 0.45 * max(len(b.rows) for b in boards) * len(boards)),
                             squeeze=False)
    for (left, right), board in zip(axes, boards, strict=True):
        names = [r.name for r in board.rows][::-1]
        y = np.arange(len(names))
        metric = board.metrics[0]
        means = [r.means[metric][0] for r in board.rows][::-1]
        errors = [0.0 if math.isnan(r.means[metric][1]) else r.means[metric][1] for r in board.rows][::-1]
        colors = ["tab:orange" if n == board.baseline else "tab:blue" for n in names]
        left.barh(y, means, xerr=errors, color=colors, capsize=3)
        left.set_yticks(y, names)
        left.set_xlabel(f"{board.protocol}/{metric} (mean ± s.e. over seeds)")
        key = board.paired_metrics[0]
        for i, row in enumerate(board.rows[::-1]):
            p = row.paired.get(key)
            if p is None:
                continue
            color = "tab:green" if p.low > 0 else ("tab:red" if p.high < 0 else "grey")
            right.errorbar([p.diff], [i], xerr=[[p.diff - p.low], [p.high - p.diff]], fmt="o", color=color, capsize=3)
        right.axvline(0.0, color="black", linewidth=0.8)
        right.set_yticks(y, names)
        right.set_xlabel(f"Δ {board.protocol}/{key} vs {board.baseline} (95% CI, paired)")
        for ax in (left, right):
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

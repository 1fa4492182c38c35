"""Run recommender configs over seeds through the recsys recipe, one run at a time, and print a
mean +- std table with the epochs of every row and paired intervals against a baseline.

    python bench/cf_study.py --dataset_dir runs/data/ml-100k-cf --runs runs/cf-study/ml-100k \
        --configs recipes/configs/ml-100k/{mostpop,mf-bpr,mf-ssm}.yaml --seeds 1 2 3 --baseline mf-bpr
    python bench/cf_study.py --dataset_dir runs/data/ml-100k --runs runs/cf-cand/ml-100k \
        --configs recipes/configs/ml-100k/mf-ssm.yaml --seeds 1 --test_max_examples 1000 --test_sample_seed 42

Each run is `python recipes/recsys.py --config C --dataset_dir D --output_dir RUNS/<stem>/seed<N>
--seed N --quiet` plus any unknown flags (e.g. the 20-candidate test rows of napo-eval
`--test_max_examples 1000 --test_sample_seed 42`). The directory picks the protocol: a CF-protocol
one (`--protocol cf`) or a candidate-list one. A run whose OUT/metrics.json exists is not
repeated (rerun the command to resume). The table lists the test metrics (CF: recall@20 /
ndcg@20 and the tail band; candidate lists: hr@1 / hr@5 / ndcg@10 / mrr) as mean +- sample std
over the seeds, the epochs run and the best epoch (mean over seeds; `clock!` marks a row where a
seed was stopped by `max_minutes`, whose numbers then depend on the machine's load), and the mean
training seconds. With `--baseline STEM` every other row is compared with that row on the same
test rows, seed by seed (napo.eval.stats.compare_runs: crossed bootstrap over seeds and rows);
an interval that contains 0 reads "no difference measured".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "recsys.py"
sys.path.insert(0, str(REPO))  # run from a checkout: the napo package beside this script

CF_KEYS = ["recall@20", "ndcg@20", "pop/hr@20/tail"]
CANDIDATE_KEYS = ["hr@1", "hr@5", "ndcg@10", "mrr"]


@dataclass
class Method:
    """One row: a name (its runs go to RUNS/<name>/seed<N>), a config and its overrides."""

    name: str
    config: Path
    overrides: list[str] = field(default_factory=list)


def run_logged(cmd: list[str], **kwargs) -> None:
    """Print and run one step of a study; a failed step ends the study with one line (the step has
    printed its own error above it), finished steps are kept for the rerun."""
    print(" ".join(cmd), flush=True)
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)
    if done.returncode:
        raise SystemExit(f"error: a run of the study stopped (exit {done.returncode}): {' '.join(cmd)}; "
                         "fix what it printed and rerun the same command (finished runs are kept)")


def run_one(method: Method, dataset_dir: str, out: Path, seed: int, extra: list[str]) -> None:
    if (out / "metrics.json").is_file():
        return
    cmd = [sys.executable, str(RECIPE), "--config", str(method.config), "--dataset_dir", dataset_dir,
           "--output_dir", str(out), "--seed", str(seed), "--quiet", *extra, *method.overrides]
    run_logged(cmd)


def run_all(methods: list[Method], dataset_dir: str, runs: Path, seeds: list[int], extra: list[str]) -> None:
    for method in methods:
        for seed in seeds:
            run_one(method, dataset_dir, runs / method.name / f"seed{seed}", seed, extra)


def seed_dirs(runs: Path, method: Method, seeds: list[int]) -> list[Path]:
    return [d for s in seeds if ((d := runs / method.name / f"seed{s}") / "metrics.json").is_file()]


def _cell(values: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def table(runs: Path, methods: list[Method], seeds: list[int], keys: list[str]) -> str:
    head = "| method | " + " | ".join(keys) + " | epochs | best epoch | train s | seeds |"
    lines = [head, "|" + "---|" * (len(keys) + 5)]
    for method in methods:
        ms = [json.loads((d / "metrics.json").read_text()) for d in seed_dirs(runs, method, seeds)]
        if not ms:
            continue
        cells = [_cell([m[k] for m in ms]) if all(k in m for m in ms) else "–" for k in keys]
        trained = [m for m in ms if m.get("train/epochs")]
        epochs = f"{statistics.mean(m['train/epochs'] for m in trained):.0f}" if trained else "–"
        best = f"{statistics.mean(m['train/best_epoch'] for m in trained):.0f}" if trained else "–"
        if any(m.get("train/stopped_by_clock") for m in ms):
            epochs += " clock!"
        secs = statistics.mean(m.get("train/fit_seconds", 0.0) for m in ms)
        lines.append(f"| {method.name} | " + " | ".join(cells) + f" | {epochs} | {best} | {secs:.0f} | {len(ms)} |")
    return "\n".join(lines)


def paired_rows(runs: Path, methods: list[Method], seeds: list[int], baseline: str, metric: str) -> list:
    """Each method against the baseline on the same test rows, seed by seed."""
    from napo.eval.stats import compare_runs

    base = next((m for m in methods if m.name == baseline), None)
    if base is None:
        raise SystemExit(f"error: --baseline {baseline!r} is not one of {', '.join(m.name for m in methods)}")
    base_dirs = seed_dirs(runs, base, seeds)
    rows = []
    for method in methods:
        dirs = seed_dirs(runs, method, seeds)
        if method is base or not dirs or not base_dirs:
            continue
        if len(dirs) > 1 and len(base_dirs) > 1:  # pair seed s with seed s
            common = [s for s in seeds if (runs / method.name / f"seed{s}") in dirs and
                      (runs / base.name / f"seed{s}") in base_dirs]
            dirs = [runs / method.name / f"seed{s}" for s in common]
            bdirs = [runs / base.name / f"seed{s}" for s in common]
        else:
            bdirs = base_dirs
        rows.append(compare_runs(dirs, bdirs, metric, names=(method.name, base.name)))
    return rows


def default_keys(dataset_dir: str) -> tuple[list[str], str]:
    """(table keys, paired metric) for the directory's protocol."""
    meta = json.loads((Path(dataset_dir) / "meta.json").read_text())
    if meta.get("protocol") == "cf":
        return CF_KEYS, "ndcg@20"
    return CANDIDATE_KEYS, "ndcg@10"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--runs", required=True, help="RUNS/<config stem>/seed<N>/ per run")
    p.add_argument("--configs", nargs="+", required=True, type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--baseline", help="config stem every other row is compared with (paired intervals)")
    p.add_argument("--keys", nargs="+", help="test metrics of the table (default: by protocol)")
    p.add_argument("--paired_metric", help="per-row metric of the paired comparison (default: ndcg@20 CF, ndcg@10 candidates; "
                                           "e.g. full/ndcg@10 for full-ranking sequential runs)")
    p.add_argument("--candidates", action="store_true", help="ignored (older commands): the directory's protocol decides")
    p.add_argument("--table_only", action="store_true", help="print the table of finished runs")
    args, extra = p.parse_known_args()
    keys, metric = default_keys(args.dataset_dir)
    methods = [Method(c.stem, c) for c in args.configs]
    runs = Path(args.runs)
    if not args.table_only:
        run_all(methods, args.dataset_dir, runs, args.seeds, extra)
    print(table(runs, methods, args.seeds, args.keys or keys))
    if args.baseline:
        from napo.eval.stats import paired_table

        print()
        print(paired_table(paired_rows(runs, methods, args.seeds, args.baseline, args.paired_metric or metric), digits=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run CF comparator configs over seeds through the recsys recipe, one run at a time, and print a
mean +- std table.

    python bench/cf_study.py --dataset_dir runs/data/ml-100k-cf --runs runs/cf-study/ml-100k \
        --configs recipes/configs/ml-100k/{mostpop,mf-bpr,mf-ssm}.yaml --seeds 1 2 3
    python bench/cf_study.py --dataset_dir runs/data/ml-100k --runs runs/cf-cand/ml-100k \
        --configs recipes/configs/ml-100k/mf-ssm.yaml --seeds 1 --test_max_examples 1000 --test_sample_seed 42

Each run is `python recipes/recsys.py --config C --dataset_dir D --output_dir RUNS/<stem>/seed<N>
--seed N --quiet` plus any unknown flags (e.g. `--max_minutes 0.2`, or the 20-candidate test rows
of napo-eval `--test_max_examples 1000 --test_sample_seed 42`). The directory picks the protocol:
a CF-protocol one (`--protocol cf`) or a candidate-list one (20-candidate fold-in). A run whose
OUT/metrics.json exists is not repeated (rerun the command to resume). The table lists test
recall@20 / ndcg@20 (CF protocol) or hr@1 / hr@5 / ndcg@10 / mrr (candidate lists), as mean +-
sample std over the seeds, and the mean training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "recsys.py"


def run_one(config: Path, dataset_dir: str, out: Path, seed: int, extra: list[str]) -> None:
    if (out / "metrics.json").is_file():
        return
    cmd = [sys.executable, str(RECIPE), "--config", str(config), "--dataset_dir", dataset_dir,
           "--output_dir", str(out), "--seed", str(seed), "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def table(runs: Path, configs: list[Path], seeds: list[int], keys: list[str]) -> str:
    head = "| method | " + " | ".join(keys) + " | train s | seeds |"
    lines = [head, "|" + "---|" * (len(keys) + 3)]
    for config in configs:
        ms = [json.loads(p.read_text()) for s in seeds
              if (p := runs / config.stem / f"seed{s}" / "metrics.json").is_file()]
        if not ms:
            continue
        cells = []
        for k in keys:
            v = [m[k] for m in ms]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.4f} +- {sd:.4f}")
        secs = statistics.mean(m.get("train/fit_seconds", 0.0) for m in ms)
        lines.append(f"| {config.stem} | " + " | ".join(cells) + f" | {secs:.0f} | {len(ms)} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--runs", required=True, help="RUNS/<config stem>/seed<N>/ per run")
    p.add_argument("--configs", nargs="+", required=True, type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--candidates", action="store_true",
                   help="ignored (older commands): the directory's protocol decides")
    p.add_argument("--table_only", action="store_true", help="print the table of finished runs")
    args, extra = p.parse_known_args()
    meta = json.loads((Path(args.dataset_dir) / "meta.json").read_text())
    candidates = meta.get("protocol") != "cf"
    runs = Path(args.runs)
    if not args.table_only:
        for config in args.configs:
            for seed in args.seeds:
                run_one(config, args.dataset_dir, runs / config.stem / f"seed{seed}", seed, extra)
    keys = ["hr@1", "hr@5", "ndcg@10", "mrr"] if candidates else ["recall@20", "ndcg@20"]
    print(table(runs, args.configs, args.seeds, keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())

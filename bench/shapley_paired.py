"""Triplet Shapley against uniform BPR from the same command, at equal epochs, paired on the same
users: is there a gain, and what does the interval say?

    python bench/shapley_paired.py --config recipes/configs/beauty/mf-bpr-shapley.yaml \
        --dataset_dir runs/data/beauty-cf --runs runs/shapley/beauty-mf --epochs 60 --seeds 1 2 3 \
        --modes resample weight direct

Every row trains the SAME config with the same seeds for exactly `--epochs` epochs (patience off,
the best valid checkpoint within them is tested, so both arms see the same number of epochs and
steps): `uniform` with `--sampler uniform`, and one row per `--modes` value with `--sampler
shapley --shapley_mode MODE` (resample: TIP picks the negative; weight: the authors' weighted
BPR; resample_weight; direct: the valued triplets without TIP). Runs go to RUNS/<row>/seed<N>
through the recsys recipe and are not repeated when their metrics.json exists. Printed: the
table (test recall@20 / ndcg@20, epochs, TIP's training and held-out R^2, v(N) - v(empty) of the
valuation game, positive share of the values, over the seeds), and each mode against `uniform`
on ndcg@20 per user, seed by seed (napo.eval.stats). Extra flags go to every run (e.g.
`--shapley_eta 0.05 --shapley_players 1024`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cf_study import Method, paired_rows, run_all, seed_dirs, table  # noqa: E402

SHAPLEY_KEYS = ("shapley/tip_r2", "shapley/tip_r2_heldout", "shapley/v_gain", "shapley/phi_positive")


def shapley_table(runs: Path, methods: list[Method], seeds: list[int]) -> str:
    lines = ["| method | rounds | TIP R^2 train | TIP R^2 held-out | v(N) - v(empty) | positive values |",
             "|---|---|---|---|---|---|"]
    for method in methods:
        ms = [json.loads((d / "metrics.json").read_text()) for d in seed_dirs(runs, method, seeds)]
        if not ms or "shapley/rounds" not in ms[0]:
            continue
        cells = []
        for key in SHAPLEY_KEYS:
            v = [m[key] for m in ms if key in m]
            cells.append(f"{statistics.mean(v):.3f}" if v else "–")
        lines.append(f"| {method.name} | {ms[0]['shapley/rounds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, type=Path, help="a BPR config with the shapley_* settings")
    p.add_argument("--dataset_dir", required=True, help="a CF-protocol directory")
    p.add_argument("--runs", required=True, type=Path)
    p.add_argument("--epochs", required=True, type=int, help="every row trains exactly this many epochs")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--modes", nargs="+", default=["resample", "weight", "direct"],
                   choices=["resample", "weight", "resample_weight", "direct"])
    p.add_argument("--table_only", action="store_true")
    args, extra = p.parse_known_args()
    equal = ["--max_epochs", str(args.epochs), "--patience", "1000000"]
    methods = [Method("uniform", args.config, [*equal, "--sampler", "uniform"])]
    methods += [Method(m, args.config, [*equal, "--sampler", "shapley", "--shapley_mode", m]) for m in args.modes]
    if not args.table_only:
        run_all(methods, args.dataset_dir, args.runs, args.seeds, extra)
    from napo.eval.stats import paired_table

    print(table(args.runs, methods, args.seeds, ["recall@20", "ndcg@20"]))
    print()
    print(shapley_table(args.runs, methods, args.seeds))
    print()
    print(paired_table(paired_rows(args.runs, methods, args.seeds, "uniform", "ndcg@20"), digits=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())

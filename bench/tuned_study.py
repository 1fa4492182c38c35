"""Phase 2 of issue 20 in one resumable command: tune every model of a plan on valid with the same
trial count and epoch budget (napo-tune), train each tuned config with 3 seeds, and print the
tables with the epochs column and paired intervals against each group's baseline.

    python bench/tuned_study.py --plan bench/phase2.yaml --estimate     # CPU-hours, runs nothing
    python bench/tuned_study.py --plan bench/phase2.yaml                # everything (hours)
    python bench/tuned_study.py --plan bench/phase2.yaml --groups beauty-cf --table_only

The plan (YAML) holds `trials`, `seeds`, `runs` (the output root) and `groups`; a group is one
dataset with its configs, its baseline (a config stem), its epoch budget (`max_epochs`, the cap of
every trial and of the seed runs; early stopping on valid ends most of them sooner), optional
`overrides` for every run (e.g. `--threads 1`) and `seconds_per_epoch` (one number per config
stem, measured with bench/cf_epoch.py or a short run, for --estimate). Per group and config:

    RUNS/<group>/tune/<stem>/        napo-tune: study.db (resumable), best.yaml, trials.md
    RUNS/<group>/seeds/<stem>/seed<N>/  recipes/recsys.py --config best.yaml --seed N

then bench/cf_study.py's table (test metrics, epochs, best epoch, seconds) and its paired
comparison of every config with the baseline (napo.eval.stats, seed by seed on the same rows).
Model selection never looks at test: the tuner scores valid only, and the seed runs pick their
checkpoint on valid.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cf_study import Method, default_keys, paired_rows, run_all, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_plan(path: Path) -> dict:
    plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("trials", "seeds", "runs", "groups"):
        if key not in plan:
            raise SystemExit(f"error: {path}: the plan needs `{key}`")
    for group in plan["groups"]:
        for key in ("name", "dataset_dir", "configs", "baseline", "max_epochs"):
            if key not in group:
                raise SystemExit(f"error: {path}: group {group.get('name', '?')} needs `{key}`")
        stems = [Path(c).stem for c in group["configs"]]
        if group["baseline"] not in stems:
            raise SystemExit(f"error: {path}: group {group['name']}'s baseline {group['baseline']!r} is not one of its configs")
    return plan


def tune(config: Path, group: dict, plan: dict, out: Path) -> Path:
    cmd = [sys.executable, "-m", "napo.scripts.tune", "--config", str(config), "--dataset_dir", group["dataset_dir"],
           "--output_dir", str(out), "--trials", str(plan["trials"]), "--max_epochs", str(group["max_epochs"]),
           *map(str, group.get("overrides", []))]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out / "best.yaml"


def estimate(plan: dict, groups: list[dict], stop_fraction: float) -> str:
    """CPU-hours per group: trials + seeds runs, each at most `max_epochs` epochs (upper bound)
    and at `stop_fraction` of it (early stopping; a guess until the studies have run)."""
    runs_per_config = plan["trials"] + len(plan["seeds"])
    lines = [f"{plan['trials']} trials + {len(plan['seeds'])} seeds per config; epochs at the budget (upper bound) "
             f"and at {stop_fraction:.0%} of it (expected with early stopping)", "",
             "| group | configs | budget (epochs) | CPU-h upper | CPU-h expected |", "|---|---|---|---|---|"]
    total_up = total_exp = 0.0
    for g in groups:
        costs = g.get("seconds_per_epoch", {})
        missing = [Path(c).stem for c in g["configs"] if Path(c).stem not in costs]
        if missing:
            raise SystemExit(f"error: group {g['name']}: no seconds_per_epoch for {', '.join(missing)}")
        secs = sum(costs[Path(c).stem] for c in g["configs"]) * g["max_epochs"] * runs_per_config
        up, exp = secs / 3600, secs * stop_fraction / 3600
        total_up, total_exp = total_up + up, total_exp + exp
        lines.append(f"| {g['name']} | {len(g['configs'])} | {g['max_epochs']} | {up:.2f} | {exp:.2f} |")
    lines.append(f"| total | | | {total_up:.2f} | {total_exp:.2f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--groups", nargs="+", help="run only these groups (default: all)")
    p.add_argument("--estimate", action="store_true", help="print the CPU-hour estimate and stop")
    p.add_argument("--stop_fraction", type=float, default=0.6,
                   help="--estimate: share of the epoch budget a run is expected to use")
    p.add_argument("--table_only", action="store_true", help="print the tables of finished runs")
    args = p.parse_args()
    plan = load_plan(args.plan)
    groups = [g for g in plan["groups"] if not args.groups or g["name"] in args.groups]
    if args.estimate:
        print(estimate(plan, groups, args.stop_fraction))
        return 0
    from napo.eval.stats import paired_table

    for g in groups:
        root = Path(plan["runs"]) / g["name"]
        methods = []
        for config in map(Path, g["configs"]):
            best = root / "tune" / config.stem / "best.yaml"
            if not args.table_only:
                best = tune(config, g, plan, best.parent)
            methods.append(Method(config.stem, best))
        if not args.table_only:
            run_all(methods, g["dataset_dir"], root / "seeds", plan["seeds"], [])
        keys, metric = default_keys(g["dataset_dir"])
        print(f"\n## {g['name']} ({g['dataset_dir']}): tuned on valid, {plan['trials']} trials, epoch budget "
              f"{g['max_epochs']}, seeds {' '.join(map(str, plan['seeds']))}\n")
        print(table(root / "seeds", methods, plan["seeds"], g.get("keys", keys)))
        print()
        print(paired_table(paired_rows(root / "seeds", methods, plan["seeds"], g["baseline"],
                                       g.get("paired_metric", metric)), digits=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())

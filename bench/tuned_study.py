"""Phase 2 of issue 20 in one resumable command: tune every model of a plan on valid with the same
trial count and epoch budget (napo-tune), train each tuned config with 3 seeds, and print the
tables with the epochs column and paired intervals against each group's baseline.

    python bench/tuned_study.py --plan bench/phase2.yaml --estimate     # CPU-hours, runs nothing
    python bench/tuned_study.py --plan bench/phase2.yaml                # everything (hours)
    python bench/tuned_study.py --plan bench/phase2.yaml --groups beauty-cf --table_only

The plan (YAML) holds `trials`, `seeds`, `runs` (the output root) and `groups`; a group is one
dataset with its configs, its baseline (a row name), its epoch budget (`max_epochs`, the cap of
every trial and of the seed runs; early stopping on valid ends most of them sooner), optional
`trials` (overrides the plan's for this group: every model of a table gets the same count),
`overrides` for every tuning run (e.g. `--threads 1`), `keys` / `paired_metric` for the table,
and `seconds_per_epoch` (one number per row, measured with bench/epoch_cost.py, for --estimate).
A config entry is a path (row name = its stem, tuned) or a mapping `{name, config, tune: false}`
for a row that runs as given (MostPop; a config tuned in another group, e.g. Sports with
Beauty's best.yaml). Per group and row:

    RUNS/<group>/tune/<stem>/        napo-tune: study.db (resumable), best.yaml, trials.md
    RUNS/<group>/seeds/<stem>/seed<N>/  recipes/recsys.py --config best.yaml --seed N

then bench/cf_study.py's table (test metrics, epochs, best epoch, seconds) and its paired
comparison of every config with the baseline (napo.eval.stats, seed by seed on the same rows).
Model selection never looks at test: the tuner scores valid only, and the seed runs pick their
checkpoint on valid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cf_study import Method, default_keys, paired_rows, run_all, run_logged, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def rows(group: dict) -> list[dict]:
    """A group's rows: {name, config, tune} each."""
    out = []
    for entry in group["configs"]:
        if isinstance(entry, str):
            out.append({"name": Path(entry).stem, "config": entry, "tune": True})
        else:
            out.append({"name": entry.get("name") or Path(entry["config"]).stem, "config": entry["config"],
                        "tune": bool(entry.get("tune", True))})
    return out


def load_plan(path: Path) -> dict:
    plan = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("trials", "seeds", "runs", "groups"):
        if key not in plan:
            raise SystemExit(f"error: {path}: the plan needs `{key}`")
    for group in plan["groups"]:
        for key in ("name", "dataset_dir", "configs", "baseline", "max_epochs"):
            if key not in group:
                raise SystemExit(f"error: {path}: group {group.get('name', '?')} needs `{key}`")
        names = [r["name"] for r in rows(group)]
        if group["baseline"] not in names:
            raise SystemExit(f"error: {path}: group {group['name']}'s baseline {group['baseline']!r} is not one of its rows")
    return plan


def tune(config: Path, group: dict, plan: dict, out: Path) -> Path:
    cmd = [sys.executable, "-m", "napo.scripts.tune", "--config", str(config), "--dataset_dir", group["dataset_dir"],
           "--output_dir", str(out), "--trials", str(group.get("trials", plan["trials"])),
           "--max_epochs", str(group["max_epochs"]), *map(str, group.get("overrides", []))]
    run_logged(cmd, cwd=REPO)
    return out / "best.yaml"


def estimate(plan: dict, groups: list[dict], stop_fraction: float) -> str:
    """CPU-hours per group: trials + seeds runs, each at most `max_epochs` epochs (upper bound)
    and at `stop_fraction` of it (early stopping; a guess until the studies have run)."""
    seeds = len(plan["seeds"])
    lines = [f"runs per row: trials + {seeds} seeds (tuned rows), {seeds} seeds (rows run as given); epochs at "
             f"the budget (upper bound) and at {stop_fraction:.0%} of it (expected with early stopping)", "",
             "| group | rows | trials | budget (epochs) | CPU-h upper | CPU-h expected |", "|---|---|---|---|---|---|"]
    total_up = total_exp = 0.0
    for g in groups:
        costs = g.get("seconds_per_epoch", {})
        trials = g.get("trials", plan["trials"])
        missing = [r["name"] for r in rows(g) if r["name"] not in costs]
        if missing:
            raise SystemExit(f"error: group {g['name']}: no seconds_per_epoch for {', '.join(missing)}")
        secs = sum(costs[r["name"]] * ((trials if r["tune"] else 0) + seeds) for r in rows(g)) * g["max_epochs"]
        up, exp = secs / 3600, secs * stop_fraction / 3600
        total_up, total_exp = total_up + up, total_exp + exp
        shown = trials if any(r["tune"] for r in rows(g)) else "-"
        lines.append(f"| {g['name']} | {len(rows(g))} | {shown} | {g['max_epochs']} | {up:.2f} | {exp:.2f} |")
    lines.append(f"| total | | | | {total_up:.2f} | {total_exp:.2f} |")
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
        for row in rows(g):
            config = Path(row["config"])
            if row["tune"]:
                config = root / "tune" / row["name"] / "best.yaml"
                if not args.table_only:
                    config = tune(Path(row["config"]), g, plan, config.parent)
            methods.append(Method(row["name"], config))
        if not args.table_only:
            run_all(methods, g["dataset_dir"], root / "seeds", plan["seeds"], [])
        keys, metric = default_keys(g["dataset_dir"])
        print(f"\n## {g['name']} ({g['dataset_dir']}): tuned on valid, {g.get('trials', plan['trials'])} trials, epoch budget "
              f"{g['max_epochs']}, seeds {' '.join(map(str, plan['seeds']))}\n")
        print(table(root / "seeds", methods, plan["seeds"], g.get("keys", keys)))
        print()
        print(paired_table(paired_rows(root / "seeds", methods, plan["seeds"], g["baseline"],
                                       g.get("paired_metric", metric)), digits=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())

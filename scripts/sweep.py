"""Grid search of a training recipe, selected on the VALID split (never on test).

    python scripts/sweep.py --config recipes/configs/ml-100k/dpo-tiny.yaml \
        --dataset_dir runs/demo/data --output_dir runs/sweep/dpo \
        --grid learning_rate=5e-4,2e-3 beta=0.1,1.0 \
        --baseline runs/demo/sft \
        -- --model_name_or_path runs/demo/tiny-model --sft_adapter runs/demo/sft

Every grid point trains with `python RECIPE --config CONFIG --KEY VALUE ... EXTRA` into
OUTPUT_DIR/KEY=VALUE,..., then `recipes/evaluate.py --split valid --mode rank` scores it on a seeded
sample of valid rows (the same rows for every point and for --baseline, the starting model).
The table, best first by --metric, goes to OUTPUT_DIR/sweep.md and OUTPUT_DIR/sweep.json; the
best point's settings are printed so that they can be copied into a config.
A point whose output already holds valid metrics is not run again (resume a broken sweep).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"error: --grid {item!r}: expected KEY=V1,V2,... (e.g. learning_rate=1e-4,5e-4)")
        if key in grid:
            raise SystemExit(f"error: --grid: {key!r} given twice; list all its values in one KEY=V1,V2")
        grid[key] = values.split(",")
    return grid


def point_name(point: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()) or "default"


def run(cmd: list[str], log: Path) -> None:
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"error: {' '.join(cmd[:3])} ... exited {proc.returncode}: {tail[0]} (full log: {log})")


def evaluate(model: str, out: Path, args) -> dict:
    metrics_file = out / "metrics.json"
    if not metrics_file.is_file():
        run([sys.executable, str(REPO / "recipes" / "evaluate.py"), "--model_name_or_path", model,
             "--dataset_dir", args.dataset_dir, "--split", args.split, "--mode", "rank",
             "--max_examples", str(args.eval_examples), "--sample_seed", str(args.sample_seed),
             "--batch_size", str(args.eval_batch_size), "--output_dir", str(out), "--no_progress"],
            out.parent / f"{out.name}.log")
    return json.loads(metrics_file.read_text())["rank"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the recipe's YAML config")
    p.add_argument("--recipe", default="recipes/napo.py", help="recipes/napo.py (default) or recipes/sft.py")
    p.add_argument("--dataset_dir", required=True, help="prepared dataset (passed to the recipe and the evaluation)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2", help="recipe settings to cross")
    p.add_argument("--baseline", help="a model (or adapter) evaluated on the same rows for reference, e.g. the SFT model")
    p.add_argument("--split", default="valid", help="selection split (default valid; test is refused)")
    p.add_argument("--metric", default="hr@1", help="rank metric to select on (hr@1, ndcg@10, mrr, ...)")
    p.add_argument("--eval_examples", type=int, default=1000, help="valid rows scored per point (a seeded sample)")
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=42, help="training seed of every point (and the row sample's seed "
                   "unless --sample_seed)")
    p.add_argument("--sample_seed", type=int, help="seed of the sampled evaluation rows (default: --seed)")
    args = p.parse_args(argv)
    if args.sample_seed is None:
        args.sample_seed = args.seed
    if args.split == "test":
        p.error("--split test: model selection must not look at the test split; use valid")
    grid = parse_grid(args.grid)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    if args.baseline:
        rows.append({"point": "baseline", "settings": {"model": args.baseline},
                     **evaluate(args.baseline, out / "baseline-eval", args)})
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        name = point_name(point)
        run_dir = out / name
        start = time.time()
        if not (run_dir / "eval-valid" / "metrics.json").is_file():
            overrides = [x for k, v in point.items() for x in (f"--{k}", v)]
            run([sys.executable, str(REPO / args.recipe), "--config", args.config, "--dataset_dir", args.dataset_dir,
                 "--output_dir", str(run_dir), "--seed", str(args.seed), "--overwrite_output_dir", "true",  # retrain
                 *extra, *overrides], out / f"{name}.log")
        metrics = evaluate(str(run_dir), run_dir / "eval-valid", args)
        rows.append({"point": name, "settings": point, **metrics})
        print(f"{name}: valid {args.metric} {metrics[args.metric]:.4f} ({time.time() - start:.0f} s)", flush=True)

    ranked = sorted(rows, key=lambda r: -r[args.metric])
    keys = [k for k in ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr") if k in rows[0]]
    lines = [f"Sweep of {args.config} on {args.split} ({args.eval_examples} sampled rows, sample seed "
             f"{args.sample_seed}, training seed {args.seed}), "
             f"best first by {args.metric}.", "", "| point | " + " | ".join(keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {r['point']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + " |" for r in ranked]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    (out / "sweep.json").write_text(json.dumps({"config": args.config, "split": args.split, "metric": args.metric,
                                                "eval_examples": args.eval_examples, "seed": args.seed,
                                                "sample_seed": args.sample_seed,
                                                "extra_args": extra, "rows": ranked}, indent=2) + "\n")
    print("\n".join(lines))
    best = next((r for r in ranked if r["point"] != "baseline"), None)
    if best is not None:
        print(f"best: {best['point']} -> {out / best['point']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per training epoch and per validation of recommender configs (CF and sequential), in
one process with the configs in turns and a fixed thread count: the unit costs behind the
phase-2 CPU estimate (bench/tuned_study.py --estimate, bench/phase2.yaml).

    python bench/epoch_cost.py --dataset_dir runs/data/beauty-cf \
        --configs recipes/configs/beauty/{mf-bpr,mf-ssm,lightgcn-ssm}.yaml --epochs 2
    python bench/epoch_cost.py --pairs recipes/configs/lastfm/sasrec.yaml=runs/data/lastfm \
        recipes/configs/beauty/sasrec.yaml=runs/data/beauty --epochs 1 --train_rows 20000

Each config trains `--epochs` epochs through its fit (napo.recsys.cf_train.fit or
napo.recsys.train.fit; max_epochs = epochs, eval_every = epochs: one validation at the end),
`--rounds` times with the configs alternating; the validation is timed separately. With
`--train_rows N` a sequential run trains on the first N rows and the epoch time is scaled to the
whole split (rows / N). Prints the median seconds per epoch and per validation of each config,
and the machine's load average before and after (say what else ran).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napo.recsys import cf_train  # noqa: E402
from napo.scripts.parser import ScriptParser, peek  # noqa: E402


def timed_fit(config: Path, dataset_dir: str, args, extra: list[str]):
    """A closure that runs one timed fit: -> (seconds per epoch, seconds of the validation)."""
    import torch

    from napo.recsys import train as seq_train

    flags = ["--config", str(config), *extra, "--max_epochs", str(args.epochs), "--eval_every", str(args.epochs),
             "--threads", str(args.threads), "--thread_policy", "fixed"]
    if peek(flags, "model") in cf_train.CF_MODELS:
        (cfg,) = ScriptParser((cf_train.CFConfig,)).parse(flags)
        data, _ = cf_train.load_data(dataset_dir)

        def run():
            timer = {}

            def validate(m):
                t = time.perf_counter()
                v = cf_train.evaluate(cf_train.model_scorer(m, cfg), data, "valid", cf_train.KS)[cfg.select_metric]
                timer["valid"] = time.perf_counter() - t
                return v

            model = cf_train.build_model(cfg, data)
            t0 = time.perf_counter()
            cf_train.fit(model, cfg, data, progress=False, validate=validate)
            total = time.perf_counter() - t0
            return (total - timer["valid"]) / args.epochs, timer["valid"]

        return run
    (cfg,) = ScriptParser((seq_train.RecConfig,)).parse(flags)
    from napo.recsys.data import load_dataset_dir

    splits, num_items, counts, _ = load_dataset_dir(dataset_dir, cfg.max_len)
    train = splits["train"]
    scale = 1.0
    if args.train_rows and args.train_rows < len(train):
        scale = len(train) / args.train_rows
        train = train.take(list(range(args.train_rows)))
    real = seq_train.validation_score

    def run():
        timer = {}

        def validation(model, split, c):
            t = time.perf_counter()
            out = real(model, split, c)
            timer["valid"] = time.perf_counter() - t
            return out

        seq_train.validation_score = validation
        try:
            torch.manual_seed(cfg.seed)
            model = seq_train.make_model(cfg, num_items, counts)
            t0 = time.perf_counter()
            seq_train.fit(model, cfg, train, splits["valid"], counts, progress=False)
            total = time.perf_counter() - t0
        finally:
            seq_train.validation_score = real
        return (total - timer["valid"]) / args.epochs * scale, timer["valid"]

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", help="the dataset of every --configs entry")
    p.add_argument("--configs", nargs="*", type=Path, default=[])
    p.add_argument("--pairs", nargs="*", default=[], help="CONFIG=DATASET_DIR entries (each config on its own data)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    p.add_argument("--rounds", type=int, default=1, help="timed runs per config, configs in turns")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train_rows", type=int, default=0, help="sequential: train on N rows, scale the epoch time")
    args, extra = p.parse_known_args()
    import torch

    torch.set_num_threads(args.threads)
    jobs = [(c, args.dataset_dir) for c in args.configs] + [(Path(a), b) for a, b in (x.split("=", 1) for x in args.pairs)]
    if not jobs or any(d is None for _, d in jobs):
        p.error("give --configs with --dataset_dir, or --pairs CONFIG=DATASET_DIR")
    runs = {f"{c.parent.name}/{c.stem}": timed_fit(c, d, args, extra) for c, d in jobs}
    print(f"loadavg before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    epoch_s: dict[str, list[float]] = {k: [] for k in runs}
    valid_s: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, run in (runs.items() if r % 2 == 0 else reversed(list(runs.items()))):
            e, v = run()
            epoch_s[name].append(e)
            valid_s[name].append(v)
            print(f"  {name}: {e:.2f} s/epoch, validation {v:.2f} s", flush=True)
    print(f"loadavg after: {Path('/proc/loadavg').read_text().strip()}")
    print(f"\n| config | s / epoch (median, {args.threads} thread) | s / validation | runs |\n|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {statistics.median(epoch_s[name]):.2f} | {statistics.median(valid_s[name]):.2f} | "
              f"{len(epoch_s[name])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per training epoch and per validation of CF configs, in one process with the configs
in turns (1 thread): the unit costs behind the phase-2 CPU estimate (bench/tuned_study.py --plan).

    python bench/cf_epoch.py --dataset_dir runs/data/beauty-cf \
        --configs recipes/configs/beauty/{mf-bpr,mf-ssm,lightgcn-ssm}.yaml --epochs 2

Each config trains `--epochs` epochs through `napo.recsys.cf_train.fit` (max_epochs = epochs,
eval_every = epochs, so exactly one validation at the end), repeated `--rounds` times with the
configs alternating; the validation is timed separately and subtracted. Prints the median seconds
per epoch and per validation of each config, and the machine's load average before and after.
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
from napo.scripts.parser import ScriptParser  # noqa: E402


def load_config(path: Path, extra: list[str]) -> cf_train.CFConfig:
    (cfg,) = ScriptParser((cf_train.CFConfig,)).parse(["--config", str(path), *extra])
    return cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--configs", nargs="+", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    p.add_argument("--rounds", type=int, default=2, help="timed runs per config, configs in turns")
    args, extra = p.parse_known_args()
    import torch

    torch.set_num_threads(1)
    data, _ = cf_train.load_data(args.dataset_dir)
    cfgs = {c.stem: load_config(c, [*extra, "--max_epochs", str(args.epochs), "--eval_every", str(args.epochs),
                                    "--threads", "1", "--thread_policy", "fixed"]) for c in args.configs}
    print(f"loadavg before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    epoch_s: dict[str, list[float]] = {k: [] for k in cfgs}
    valid_s: dict[str, list[float]] = {k: [] for k in cfgs}
    for r in range(args.rounds):
        for name, cfg in (cfgs.items() if r % 2 == 0 else reversed(list(cfgs.items()))):
            model = cf_train.build_model(cfg, data)
            timer = {}

            def validate(m, cfg=cfg, timer=timer):
                t = time.perf_counter()
                v = cf_train.evaluate(cf_train.model_scorer(m, cfg), data, "valid", cf_train.KS)[cfg.select_metric]
                timer["valid"] = time.perf_counter() - t
                return v

            t0 = time.perf_counter()
            cf_train.fit(model, cfg, data, progress=False, validate=validate)
            total = time.perf_counter() - t0
            valid_s[name].append(timer["valid"])
            epoch_s[name].append((total - timer["valid"]) / args.epochs)
            print(f"  {name}: {epoch_s[name][-1]:.2f} s/epoch, validation {timer['valid']:.2f} s", flush=True)
    print(f"loadavg after: {Path('/proc/loadavg').read_text().strip()}")
    print("\n| config | s / epoch (median) | s / validation | runs |\n|---|---|---|---|")
    for name in cfgs:
        print(f"| {name} | {statistics.median(epoch_s[name]):.2f} | {statistics.median(valid_s[name]):.2f} | "
              f"{len(epoch_s[name])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

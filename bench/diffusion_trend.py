"""PreferDiff / DreamRec across widths: where would the paper's d 3072 land?

Every cell is one run of the CPU config `recipes/configs/<dataset>/<model>-cpu.yaml` (one example
per train user, selection on valid Recall@5 with patience, no clock) with two settings changed:
the width d and the learning rate, kept at lr * d = 0.384 (3e-3 at d 128, 7.5e-4 at d 512). Runs
go to ROOT/<dataset>/<model>-d<width>/seed<k>/ (recipes/recsys.py outputs: metrics.json,
per_row.json, run.json, checkpoint/).

    # one training epoch and one validation pass per width, and the CPU time of a plan
    python bench/diffusion_trend.py measure --data beauty=runs/data/beauty --data sports=runs/data/sports
    # run the cells that are not done yet (each its own process; queue them one per CPU slot)
    python bench/diffusion_trend.py run --data beauty=runs/data/beauty --widths 512 --seeds 1 --root runs/trend
    # a dataset of the family the configs were not tuned on, with Beauty's config (CDs_and_Vinyl)
    python bench/diffusion_trend.py run --data cds=runs/data/cds --config-from beauty --widths 512 --seeds 1
    # valid and test metrics per width (mean +- sample std over seeds), paired intervals
    python bench/diffusion_trend.py table --root runs/trend
    # any two runs (or seed lists) on the same test rows: paired intervals, napo.eval.stats
    python bench/diffusion_trend.py compare --a runs/trend/beauty/preferdiff-d512/seed1 \
        --b runs/pop/beauty --names "PreferDiff d 512" Pop
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from diffusion_table import _cell  # mean ± sample std over seeds, as the diffusion table prints it

from napo.eval.stats import compare_runs, paired_table
from napo.recsys.data import load_dataset_dir
from napo.recsys.train import RecConfig, fit, infer, make_model, validation_score

LR_TIMES_D = 0.384  # 3e-3 at d 128, the CPU probes' setting
WIDTHS = (128, 256, 512, 1024)
MODELS = ("preferdiff", "dreamrec")
METRICS = (("valid R@5", "valid/full/hr@5"), ("R@5", "full/hr@5"), ("R@10", "full/hr@10"),
           ("N@5", "full/ndcg@5"), ("N@10", "full/ndcg@10"))
REPO = Path(__file__).resolve().parents[1]


# glibc returns the large per-step tensors (the catalogue's scores and embedding gradients, tens of MB)
# to the kernel after every step and page-faults them back in: on Sports d 512 that was 18% of the
# process's CPU time in the kernel (43k minor faults/s). Keeping freed memory in the heap removes it
# (epoch 78 s -> 64 s beside the same neighbour, 2026-12-08); numbers are unchanged, only the allocator.
GLIBC_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**34)}


def lr_for(width: int) -> float:
    return round(LR_TIMES_D / width, 8)


def config(dataset: str, model: str, width: int, config_from: str | None = None, **overrides) -> RecConfig:
    values = yaml.safe_load(config_path(dataset, model, config_from).read_text())
    return RecConfig.from_dict({**values, "hidden": width, "lr": lr_for(width), **overrides})


def cell_dir(root: Path, dataset: str, model: str, width: int, seed: int) -> Path:
    return root / dataset / f"{model}-d{width}" / f"seed{seed}"


def parse_data(items: list[str], config_from: str | None = None) -> dict[str, Path]:
    out = {}
    for item in items:
        name, _, path = item.partition("=")
        if config_from is not None and not (REPO / "recipes" / "configs" / config_from).is_dir():
            raise SystemExit(f"--config-from {config_from}: not a folder of recipes/configs (beauty, sports)")
        if not path or (config_from is None and not (REPO / "recipes" / "configs" / name).is_dir()):
            raise SystemExit(f"--data {item}: expected NAME=DIR with NAME a folder of recipes/configs (beauty, sports), "
                             "or pass --config-from to run another dataset with one of their configs")
        out[name] = Path(path)
    return out


def config_path(dataset: str, model: str, config_from: str | None) -> Path:
    return REPO / "recipes" / "configs" / (config_from or dataset) / f"{model}-cpu.yaml"


def measure(args) -> int:
    """One epoch of training and one validation pass per (dataset, width), 1 thread, real data."""
    torch.set_num_threads(1)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    for dataset, data_dir in parse_data(args.data, args.config_from).items():
        for width in args.widths:
            cfg = config(dataset, args.models[0], width, args.config_from, max_epochs=1, patience=1, seed=1)
            splits, num_items, counts, _ = load_dataset_dir(data_dir, cfg.max_len)
            torch.manual_seed(cfg.seed)
            model = make_model(cfg, num_items, counts)
            start = time.perf_counter()
            fit(model, cfg, splits["train"], splits["valid"], counts, progress=False)
            total = time.perf_counter() - start
            start = time.perf_counter()
            validation_score(model, splits["valid"], cfg)
            valid_s = time.perf_counter() - start
            start = time.perf_counter()
            infer(model, splits["test"], batch_size=cfg.eval_batch_size)
            test_s = time.perf_counter() - start
            train_s = total - valid_s
            rows.append((dataset, width, len(splits["train"]), num_items, train_s, valid_s, test_s))
            print(f"{dataset} d {width}: train epoch {train_s:.1f} s, validation {valid_s:.1f} s, "
                  f"test inference {test_s:.1f} s", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\n{args.models[0]}, 1 thread; estimate = {args.epochs} epochs x (train + validation) + test, per run")
    print("| data | d | train rows | items | train s / epoch | valid s | test s | est. min / run |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset, width, n, items, tr, va, te in rows:
        est = (args.epochs * (tr + va) + te) / 60
        print(f"| {dataset} | {width} | {n:,} | {items:,} | {tr:.1f} | {va:.1f} | {te:.1f} | {est:.0f} |")
    return 0


def run(args) -> int:
    """Every missing cell, one after the other, each in its own process."""
    root = Path(args.root)
    for dataset, data_dir in parse_data(args.data, args.config_from).items():
        for model in args.models:
            for width in args.widths:
                for seed in args.seeds:
                    out = cell_dir(root, dataset, model, width, seed)
                    if (out / "metrics.json").is_file():
                        print(f"done: {out}")
                        continue
                    cmd = [sys.executable, "-P", str(REPO / "recipes" / "recsys.py"),
                           "--config", str(config_path(dataset, model, args.config_from)),
                           "--dataset_dir", str(data_dir), "--output_dir", str(out), "--hidden", str(width),
                           "--lr", str(lr_for(width)), "--seed", str(seed)]
                    print(" ".join(cmd), flush=True)
                    start = time.time()
                    env = {**GLIBC_HEAP, **os.environ}  # the caller's own settings win
                    rc = subprocess.run(cmd, check=False, env=env).returncode
                    print(f"rc {rc}, {time.time() - start:.0f} s wall: {out}", flush=True)
                    if rc:
                        return rc
    return 0


def table(args) -> int:
    root = Path(args.root)
    print("| data | model | d | lr | seeds | " + " | ".join(n for n, _ in METRICS)
          + " | epochs (best) | train min |")
    print("|---|---|---|---|---|" + "---|" * len(METRICS) + "---|---|")
    groups: dict[tuple[str, str], list[tuple[int, list[Path]]]] = {}
    for ds in sorted(p for p in root.iterdir() if p.is_dir()):
        for cell in sorted((p for p in ds.iterdir() if p.is_dir() and "-d" in p.name),
                           key=lambda p: (p.name.split("-d")[0], int(p.name.split("-d")[1]))):
            runs = sorted(p.parent for p in cell.glob("seed*/metrics.json"))
            if not runs:
                continue
            ms = [json.loads((r / "metrics.json").read_text()) for r in runs]
            model, width = cell.name.split("-d")[0], int(cell.name.split("-d")[1])
            groups.setdefault((ds.name, model), []).append((width, runs))
            cfg = json.loads((runs[0] / "run.json").read_text()).get("config", {})
            cells = [_cell([m[k] for m in ms if k in m]) for _, k in METRICS]
            epochs = [f"{m['train/epochs']} ({m['train/best_epoch']})" for m in ms]
            print(f"| {ds.name} | {model} | {width} | {cfg.get('lr', lr_for(width)):g} | "
                  f"{', '.join(r.name.removeprefix('seed') for r in runs)} | " + " | ".join(cells)
                  + f" | {', '.join(epochs)} | {_cell([m['train/fit_seconds'] / 60 for m in ms], 0)} |")
    comparisons = []
    for (dataset, model), cells in groups.items():
        cells.sort()
        for (w1, r1), (w2, r2) in zip(cells, cells[1:], strict=False):
            seeds = sorted({r.name for r in r1} & {r.name for r in r2})
            a = [r for r in r2 if r.name in seeds]
            b = [r for r in r1 if r.name in seeds]
            if a:
                comparisons.append(compare_runs(a, b, "full/hr@5", names=(f"{dataset} {model} d {w2}",
                                                                            f"d {w1}")))
    if comparisons:
        print("\nEach width against the next smaller one (test Recall@5, seeds paired):\n")
        print(paired_table(comparisons))
    return 0


def compare(args) -> int:
    """Paired intervals of A against B (each a run directory, or several: seeds, paired in order)."""
    rows = [compare_runs(args.a if len(args.a) > 1 else args.a[0], args.b if len(args.b) > 1 else args.b[0],
                         metric, names=tuple(args.names)) for metric in args.metrics]
    print(paired_table(rows))
    for row in rows:
        print(f"{row.metric}: A / B = {row.mean_a / row.mean_b:.2f}" if row.mean_b else f"{row.metric}: B is 0")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("measure", "run"):
        s = sub.add_parser(name)
        s.add_argument("--data", action="append", required=True, help="NAME=DIR, e.g. beauty=runs/data/beauty")
        s.add_argument("--models", nargs="+", default=list(MODELS[:1]), choices=MODELS)
        s.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
        s.add_argument("--config-from", default=None,
                       help="train every --data with this dataset's CPU config (e.g. beauty), for a dataset "
                            "the configs were not tuned on")
    sub.choices["measure"].add_argument("--epochs", type=int, default=40, help="epochs per run for the estimate")
    sub.choices["run"].add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    sub.choices["run"].add_argument("--root", default="runs/trend")
    sub.add_parser("table").add_argument("--root", default="runs/trend")
    c = sub.add_parser("compare")
    c.add_argument("--a", nargs="+", required=True, help="run directories of A (seeds, paired in order)")
    c.add_argument("--b", nargs="+", required=True, help="run directories of B")
    c.add_argument("--names", nargs=2, default=["A", "B"])
    c.add_argument("--metrics", nargs="+", default=["full/hr@5", "full/ndcg@5"])
    args = p.parse_args(argv)
    return {"measure": measure, "run": run, "table": table, "compare": compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

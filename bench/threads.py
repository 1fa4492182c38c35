"""One epoch of the demo's SASRec alone and beside busy processes, with the old thread settings
and with napo.threads' policy: does a CPU-bound neighbour cost a fair share, or 4-8x?

    python bench/threads.py --dataset_dir runs/data/ml-100k      # the demo's data (scripts/demo.sh)
    python bench/threads.py --dataset_dir runs/data/ml-100k --train_rows 15000   # a quick check

Each measurement is a fresh process (the OpenMP wait policy is read when torch loads) that trains
ONE epoch of `recipes/configs/ml-100k/sasrec.yaml` with the demo's overrides (`--lr 0.003
--max_minutes 0`, the config's `threads: 2`) and its validation, as the recipe's fit does, and
reports the fit's seconds. Variants:

    before    threads 2, thread_policy fixed (the settings before the policy)
    after     threads 2 as the limit, thread_policy adaptive (napo's default)
    adaptive-passive   the adaptive policy with OMP_WAIT_POLICY=PASSIVE (measured out: slower alone,
                       no faster beside busy processes; napo.threads)
OMP_WAIT_POLICY is unset in every variant but adaptive-passive.

Conditions: alone, beside one and beside two single-threaded busy processes (`while True: pass`,
started before the measurement and killed after it). The variants alternate within each
condition, in turned order from one condition to the next, so slow drifts of the machine's load
hit both; `--rounds N` repeats the whole sweep and the table shows the median. Printed: seconds
per epoch, the thread count the run chose, and each variant's ratio to its own epoch alone. Acceptance of issue 20: after, beside two busy processes, <= 2.5x alone.
Say what else ran (`uptime` is printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "ml-100k" / "sasrec.yaml"
VARIANTS = {  # name -> (thread_policy, OMP_WAIT_POLICY or None = unset)
    "before": ("fixed", None),
    "after": ("adaptive", None),
    "adaptive-passive": ("adaptive", "PASSIVE"),
}
BUSY = "while True: pass"


def child(args) -> int:
    """Train one epoch in this process and print {"seconds", "threads"} as JSON."""
    import torch

    from napo.recsys.data import load_dataset_dir
    from napo.recsys.train import RecConfig, RecRunArguments, fit, make_model
    from napo.scripts.parser import StrictParser
    from napo.utils import set_seed

    policy = VARIANTS[args.variant][0]
    _, cfg = StrictParser((RecRunArguments, RecConfig)).parse(
        ["--config", str(CONFIG), "--dataset_dir", args.dataset_dir, "--output_dir", "unused",
         "--lr", "0.003", "--max_minutes", "0", "--max_epochs", "1", "--thread_policy", policy])
    set_seed(cfg.seed)
    splits, num_items, counts, _ = load_dataset_dir(args.dataset_dir, cfg.max_len)
    train = splits["train"]
    if args.train_rows:
        train = train.take(list(range(min(args.train_rows, len(train)))))
    model = make_model(cfg, num_items, counts)
    result = fit(model, cfg, train, splits["valid"], counts, progress=False)
    print(json.dumps({"seconds": result.wall_s, "threads": result.history[-1].get("threads"),
                      "torch_threads_end": torch.get_num_threads(),
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}))
    return 0


def measure(variant: str, busy: int, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    wait = VARIANTS[variant][1]
    if wait is not None:
        env["OMP_WAIT_POLICY"] = wait
    env.pop("OMP_NUM_THREADS", None)  # the config's threads decide, as in a fresh shell
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)  # let the neighbours get going
        cmd = [sys.executable, __file__, "--child", "--variant", variant, "--dataset_dir", args.dataset_dir,
               "--train_rows", str(args.train_rows)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    if out.returncode != 0:
        raise SystemExit(f"error: the {variant} child failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", required=True, help="the demo's prepared ml-100k (scripts/demo.sh step 1)")
    p.add_argument("--variants", nargs="+", default=["before", "after"], choices=list(VARIANTS))
    p.add_argument("--busy", nargs="+", type=int, default=[0, 1, 2], help="busy neighbours per condition")
    p.add_argument("--train_rows", type=int, default=0, help="train on the first N rows only (0 = the whole epoch)")
    p.add_argument("--rounds", type=int, default=1, help="sweeps over every condition (the table shows medians)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="after", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    print(f"loadavg before: {uptime()}; cores: {len(os.sched_getaffinity(0))}", flush=True)
    runs: dict[tuple[str, int], list[dict]] = {}
    step = 0
    for _ in range(args.rounds):
        for busy in args.busy:
            order = args.variants if step % 2 == 0 else list(reversed(args.variants))
            step += 1
            for variant in order:
                r = measure(variant, busy, args)
                runs.setdefault((variant, busy), []).append(r)
                print(f"  {variant:14s} beside {busy} busy: {r['seconds']:7.1f} s, threads {r['threads']} "
                      f"(wait policy {r['wait_policy']})", flush=True)
    results = {k: {"seconds": statistics.median(r["seconds"] for r in v),
                   "threads": "/".join(sorted({str(r["threads"]) for r in v}))} for k, v in runs.items()}
    print(f"loadavg after: {uptime()}")
    print("\n| variant | " + " | ".join(f"beside {b} busy: s (threads) | ratio" for b in args.busy) + " |")
    print("|---|" + "---|---|" * len(args.busy))
    for variant in args.variants:
        alone = results.get((variant, 0), {}).get("seconds")
        cells = []
        for busy in args.busy:
            r = results[variant, busy]
            ratio = f"{r['seconds'] / alone:.2f}x" if alone else "-"
            cells.append(f"{r['seconds']:.1f} ({r['threads']}) | {ratio}")
        print(f"| {variant} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

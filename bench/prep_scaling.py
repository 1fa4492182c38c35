"""Time and peak memory of `python -m data_prep --dataset interactions` on synthetic logs.

Usage: python bench/prep_scaling.py [--sizes 1000000 10000000] [--quick] [--format parquet|csv|jsonl]
       [--sampler llara] [--storage ids|text]

Each size runs in a fresh subprocess (so peak RSS is that run's own). Logs have about 50
interactions per user and Zipf-like item popularity over `size / 500` items (at least 2,000);
they are written first (not timed) as Parquet, or CSV / JSONL with --format. Prints one row per
size: total seconds, seconds per million interactions (flat = linear scaling), peak RSS (the
child's VmHWM: everything it held, Python and libraries included), output size, seconds per
stage (load, sequences+split, candidates, prompts, write), and the peak RSS sampled in each
phase (load, sequences, and the loop that draws candidates and writes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

STAGES = ("load", "sequences", "candidates", "prompts", "write")
PHASES = ("load", "sequences", "loop")  # loop: candidates, prompts and write, chunk by chunk


def make_log(n: int, folder: Path, seed: int = 0, fmt: str = "parquet") -> tuple[Path, Path]:
    """Synthetic interactions (user_id, item_id, timestamp) and items (item_id, title)."""
    rng = np.random.default_rng(seed)
    n_users = max(n // 50, 10)
    n_items = max(n // 500, 2000)
    user = rng.integers(0, n_users, size=n)
    # Zipf-like popularity: a few items are very common, most are rare.
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    item = rng.choice(n_items, size=n, p=weights / weights.sum())
    ts = rng.integers(1_500_000_000, 1_600_000_000, size=n)
    inter = pd.DataFrame({"user_id": user, "item_id": item, "timestamp": ts})
    items = pd.DataFrame({"item_id": np.arange(n_items),
                          "title": [f"Title {i:x} ({1950 + i % 70})" for i in range(n_items)]})
    ip, tp = folder / f"inter_{n}.{fmt}", folder / f"items_{n}.parquet"
    if fmt == "parquet":
        inter.to_parquet(ip)
    elif fmt == "csv":
        inter.to_csv(ip, index=False)
    elif fmt == "jsonl":
        inter.to_json(ip, orient="records", lines=True)
    else:
        raise SystemExit(f"unknown --format {fmt!r}; use parquet, csv or jsonl")
    items.to_parquet(tp)
    return ip, tp


def run_one(ip: Path, tp: Path, out: Path, sampler: str, storage: str = "ids") -> dict:
    """Runs the pipeline in this process; prints a JSON line with times and peak RSS."""
    from data_prep.__main__ import parser
    from data_prep.build import build

    args = parser().parse_args([
        "--dataset", "interactions", "--interactions", str(ip), "--items", str(tp),
        "--output-dir", str(out), "--overwrite", "--quiet", "--candidate-sampler", sampler, "--storage", storage,
    ])
    timings: dict = {}
    # Which phase holds the peak: a thread samples RSS every 20 ms and files it under the phase
    # running: load, sequences, or the loop that draws candidates and writes (its stages alternate).
    stage_peak: dict = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            running = "load" if "load" not in timings else "sequences" if "sequences" not in timings else "loop"
            stage_peak[running] = max(stage_peak.get(running, 0.0), _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    meta = build(args, timings=timings)
    total = time.perf_counter() - t0
    done.set()
    sampler.join()
    # VmHWM: this process's own high-water mark. (ru_maxrss would do on a fresh process, but
    # Linux carries it over from the parent through fork and exec: the parent that generated the
    # log, a few GB for JSONL, would show up as this run's peak.)
    peak_mb = _proc_status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    examples = sum(s["examples"] for s in meta["counts"]["splits"].values())
    out_gb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e9
    return {"seconds": total, "peak_mb": peak_mb, "examples": examples, "stages": timings,
            "out_gb": out_gb, "stage_peak_mb": stage_peak}


def _proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_mb() -> float:
    """Resident memory of this process now."""
    return _proc_status_mb("VmRSS")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--quick", action="store_true", help="small sizes (50k, 200k) for a smoke run")
    p.add_argument("--sampler", default="llara", help="llara | uniform | popularity")
    p.add_argument("--storage", default="ids", help="ids (text rendered on load) | text")
    p.add_argument("--format", default="parquet", help="interactions file: parquet | csv | jsonl")
    p.add_argument("--keep", action="store_true", help="keep the generated files and outputs")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        print(json.dumps(run_one(Path(a._child[0]), Path(a._child[1]), Path(a._child[2]), a.sampler, a.storage)))
        return
    sizes = [50_000, 200_000] if a.quick else a.sizes
    tmp = Path(tempfile.mkdtemp(prefix="prep_scaling_"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    print(f"data_prep scaling, input={a.format}, sampler={a.sampler}, storage={a.storage}, "
          f"cpus={os.cpu_count()}, files in {tmp}")
    print(f"{'interactions':>13} {'examples':>11} {'seconds':>8} {'s/M int.':>9} {'peak MB':>8} "
          f"{'out GB':>7}  "
          + " ".join(f"{s:>10}" for s in STAGES))
    for n in sizes:
        ip, tp = make_log(n, tmp, fmt=a.format)
        cmd = [sys.executable, __file__, "--sampler", a.sampler, "--storage", a.storage, "--_child", str(ip), str(tp),
               str(tmp / f"out_{n}")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{n:>13,} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{n:>13,} {r['examples']:>11,} {r['seconds']:>8.1f} {r['seconds'] / n * 1e6:>9.1f} "
              f"{r['peak_mb']:>8.0f} {r['out_gb']:>7.2f}  " + " ".join(f"{r['stages'].get(s, 0):>10.1f}" for s in STAGES)
              + "   peak MB: " + ", ".join(f"{s} {r['stage_peak_mb'].get(s, 0):.0f}" for s in PHASES))
        if not a.keep:
            for f in (ip, tp):
                f.unlink()
            subprocess.run(["rm", "-rf", str(tmp / f"out_{n}")], check=False)
    if not a.keep:
        os.rmdir(tmp) if not any(tmp.iterdir()) else None


if __name__ == "__main__":
    main()

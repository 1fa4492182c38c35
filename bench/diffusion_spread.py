"""Spread of a trained DreamRec / PreferDiff over sampler seeds on the test split.

Sampling starts from a random x_T, so a diffusion recommender's metrics vary with the sampler's
seed. This reloads a checkpoint written by the recsys recipe and scores the test split once per
sampler seed (the model is fixed), then prints and writes mean and std of the full-ranking metrics
and the inference seconds. Any other recsys checkpoint (SASRec, ...) gets one timed pass.

    python bench/diffusion_spread.py --checkpoint runs/beauty/preferdiff/checkpoint \
        --dataset_dir runs/data/beauty [--seeds 0,1,2] [--output OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napo.recsys.data import load_dataset_dir
from napo.recsys.train import infer, load_checkpoint, split_metrics

KEYS = ("full/hr@5", "full/hr@10", "full/ndcg@5", "full/ndcg@10", "hr@1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="OUT/checkpoint of a DreamRec/PreferDiff run")
    p.add_argument("--dataset_dir", required=True, help="the prepared dataset the model was trained on")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated sampler seeds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", help="write the per-seed metrics and the summary as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, cfg = load_checkpoint(args.checkpoint)
    seeds = [int(s) for s in args.seeds.split(",")]
    if not hasattr(model, "reseed"):  # a deterministic model: one pass (its inference time)
        seeds = seeds[:1]
    splits, _, counts, _ = load_dataset_dir(args.dataset_dir, cfg.max_len)
    runs = []
    for seed in seeds:
        if hasattr(model, "reseed"):
            model.reseed(seed)
        start = time.time()
        out = infer(model, splits["test"], batch_size=cfg.eval_batch_size, exclude_history=cfg.exclude_history)
        m = split_metrics(splits["test"], out)
        runs.append({"sample_seed": seed, "infer_seconds": round(time.time() - start, 2),
                     **{k: m[k] for k in KEYS if k in m}})
        print(json.dumps(runs[-1]))
    summary = {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))}
               for k in KEYS if k in runs[0]}
    print(json.dumps(summary))
    if args.output:
        Path(args.output).write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

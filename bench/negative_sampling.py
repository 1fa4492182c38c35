"""Negative-sampling study (Prakash, Bermperidis & Chennu 2024, Table 2 style) on a prepared dataset.

Trains SASRec with BCE and each of the six samplers (random, popularity, in-batch, mixed, adaptive,
adaptive+mixed), fresh negatives every batch, model selection on valid; prints one table of test
full-ranking HR@10 / NDCG@10 overall and per popularity band (head / mid / tail by training mass),
and balance = 1 - Gini(band HR@10).

    python bench/negative_sampling.py --dataset_dir runs/data/ml-100k [--quick] [--output OUT.json]

--quick: tiny model, 2 epochs, 3,000 training rows: a smoke test of the whole pipeline (seconds
to a minute), not a result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from napo.recsys.data import SeqSplit, load_dataset_dir
from napo.recsys.samplers import SAMPLERS
from napo.recsys.train import RecConfig, fit, infer, make_model, split_metrics
from napo.utils import set_seed, write_run_info

BANDS = ("head", "mid", "tail")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset_dir", required=True, help="prepared dataset directory")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated sampler names")
    p.add_argument("--num_negatives", type=int, default=4)
    p.add_argument("--loss", default="bce", help="bce or sampled_softmax")
    p.add_argument("--max_epochs", type=int, default=30, help="epoch cap per sampler (early stopping on valid ends it sooner)")
    p.add_argument("--max_minutes", type=float, default=0.0, help="safety valve only (0 = off): a number a clock decided "
                                                                  "depends on the machine's load")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--output", help="also write the results as JSON (and run.json beside it)")
    args = p.parse_args(argv)
    names = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown:
        p.error(f"--samplers: unknown {unknown[0]!r}; choose from {', '.join(SAMPLERS)}")

    base = dict(model="SASRec", loss=args.loss, num_negatives=args.num_negatives,
                max_epochs=args.max_epochs, max_minutes=args.max_minutes, patience=3,
                select_metric="ndcg@10", select_protocol="full", seed=args.seed)
    if args.quick:
        base.update(hidden=16, num_blocks=1, max_epochs=2, max_minutes=0.5)
    splits, num_items, counts, meta = load_dataset_dir(args.dataset_dir, 10)
    train = splits["train"]
    if args.quick and len(train) > 3000:
        train = SeqSplit(train.seq[:3000], train.target[:3000],
                         None if train.candidates is None else train.candidates[:3000])

    rows = []
    for name in names:
        cfg = RecConfig.from_dict({**base, "sampler": name})
        set_seed(cfg.seed)
        model = make_model(cfg, num_items, counts)
        start = time.time()
        result = fit(model, cfg, train, splits["valid"], counts, progress=True)
        m = split_metrics(splits["test"], infer(model, splits["test"]), counts)
        row = {"sampler": name, "hr@10": m["full/hr@10"], "ndcg@10": m["full/ndcg@10"],
               "balance@10": m["full/pop/balance@10"], "best_epoch": result.best_epoch,
               "epochs": result.epochs_run, "stopped_by": result.stopped_by,
               "seconds": round(time.time() - start, 1)}
        for band in BANDS:
            row[f"hr@10/{band}"] = m[f"full/pop/hr@10/{band}"]
            row[f"ndcg@10/{band}"] = m[f"full/pop/ndcg@10/{band}"]
        rows.append(row)
        print(f"{name}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}",
              file=sys.stderr)

    cols = ["hr@10", "ndcg@10", *[f"hr@10/{b}" for b in BANDS], *[f"ndcg@10/{b}" for b in BANDS],
            "balance@10", "best_epoch", "epochs", "stopped_by", "seconds"]
    print(f"\nSASRec + {args.loss}, {args.num_negatives} negatives, {meta.get('dataset')} "
          f"(test, full ranking over {num_items} items, seed {args.seed}{', QUICK' if args.quick else ''})\n")
    print("| sampler | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        cells = [f"{row[c]:.1f}" if c == "seconds" else
                 f"{row[c]:.4f}" if isinstance(row[c], float) and not np.isnan(row[c]) else str(row[c])
                 for c in cols]
        print(f"| {row['sampler']} | " + " | ".join(cells) + " |")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2) + "\n")
        write_run_info(out.parent, {**vars(args), "base": base,
                                    "fields": [f.name for f in dataclasses.fields(RecConfig)]}, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

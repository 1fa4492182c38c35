"""Summarise a study directory of recsys runs into one markdown table (mean +- sample std over seeds).

Layout read: ROOT/<dataset>/<model>/seed<k>/{metrics.json,spread.json} as written by
recipes/recsys.py (metrics.json) and bench/diffusion_spread.py (spread.json).

    python bench/diffusion_table.py runs/study
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FULL = (("R@5", "full/hr@5"), ("R@10", "full/hr@10"), ("N@5", "full/ndcg@5"), ("N@10", "full/ndcg@10"))


def _cell(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or ["runs/study"])[0])
    print("| data | model | seeds | R@5 | R@10 | N@5 | N@10 | hr@1 (20 cand.) | epochs | train s | test infer s | sampler spread R@5 (std over 3 sampler seeds) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ds in sorted(p for p in root.iterdir() if p.is_dir()):
        for model in sorted(p for p in ds.iterdir() if p.is_dir()):
            runs = sorted(model.glob("seed*/metrics.json"))
            if not runs:
                continue
            ms = [json.loads(p.read_text()) for p in runs]
            spreads = [json.loads((p.parent / "spread.json").read_text()) for p in runs
                       if (p.parent / "spread.json").is_file()]
            cells = [_cell([m[k] for m in ms]) for _, k in FULL]
            hr1 = _cell([m["hr@1"] for m in ms if "hr@1" in m]) if "lastfm" in ds.name or "ml-100k" in ds.name else "-"
            infer_s = [np.mean([r["infer_seconds"] for r in s["runs"]]) for s in spreads]
            spread = [s["summary"]["full/hr@5"]["std"] for s in spreads if len(s["runs"]) > 1]
            print(f"| {ds.name} | {model.name} | {len(ms)} | " + " | ".join(cells) + f" | {hr1} | "
                  f"{_cell([m['train/epochs'] for m in ms], 0)} | {_cell([m['train/fit_seconds'] for m in ms], 0)} | "
                  f"{_cell(infer_s, 1)} | {_cell(spread) if spread else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

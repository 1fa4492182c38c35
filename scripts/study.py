"""What does each part of NAPO buy? Seeds x methods on one prepared dataset, resumable.

    python scripts/study.py --dataset_dir runs/demo/data --model_name_or_path runs/demo/tiny-model \
        --sft runs/demo/sft --aux_dir runs/demo/sasrec/aux --config_dir recipes/configs/ml-100k \
        --output_dir runs/study/ml-100k --seeds 1 2 3

Every method starts from the same SFT model (`--sft`) and gets the same training budget (the
`*-tiny.yaml` configs: steps, batch, learning rate chosen on valid with scripts/sweep.py); only
the preference stage's seed changes (negative draws, LoRA init, data order). Each (method, seed)
is trained with recipes/napo.py and evaluated with recipes/evaluate.py (rank mode) on the same
seeded sample of TEST rows; a finished run is skipped when the study is started again. Writes
OUT/study.md (mean +- standard error over seeds, popularity bands, training seconds), OUT/study.json
and OUT/study.png (HR@1 with error bars, HR@10 per popularity band, side by side).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# method -> (config stem, overrides)
METHODS = {
    "DPO": ("dpo", []),
    "S-DPO K=3": ("sdpo", []),
    "S-DPO K=19": ("sdpo", ["--num_negatives", "19"]),
    "NAPO faithful": ("napo", ["--napo_mode", "faithful", "--share_mode", "reuse"]),
    "NAPO reuse": ("napo", ["--share_mode", "reuse"]),
    "NAPO rescore": ("napo", ["--share_mode", "rescore"]),
    "NAPO no sharing": ("napo", ["--share_negatives", "false"]),
    "NAPO fixed margin": ("napo", ["--share_mode", "rescore", "--margin_alpha", "0"]),
}
KEYS = ("hr@1", "ndcg@5", "mrr", "pop/hr@10/head", "pop/hr@10/mid", "pop/hr@10/tail")


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed (exit {proc.returncode}); see {log}")


def evaluate(args, out: Path, adapter: str | None) -> dict:
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, str(REPO / "recipes/evaluate.py"), "--model_name_or_path", args.sft,
               "--dataset_dir", args.dataset_dir, "--split", "test", "--mode", "rank",
               "--max_examples", str(args.eval_examples), "--sample_seed", "42", "--batch_size", "32",
               "--output_dir", str(out), "--no_progress"]
        run(cmd + (["--adapter", adapter] if adapter else []), out.parent / f"{out.name}.log")
    return json.loads((out / "metrics.json").read_text())["rank"]


def train_seconds(run_dir: Path) -> float | None:
    state = run_dir / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text()).get("log_history", [])
        return next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    log = run_dir.parent / f"{run_dir.name}.log"  # the recipe prints TRL's summary dict
    for line in reversed(log.read_text().splitlines() if log.is_file() else []):
        if "'train_runtime'" in line:
            return float(line.split("'train_runtime': '")[1].split("'")[0])
    return None


def mean_se(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.mean(values), se


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--model_name_or_path", required=True, help="the base model the SFT stage started from")
    p.add_argument("--sft", required=True, help="the SFT output every method starts from (and the SFT row)")
    p.add_argument("--aux_dir", required=True, help="the auxiliary recommender's outputs (NAPO)")
    p.add_argument("--config_dir", default="recipes/configs/ml-100k", help="folder of {dpo,sdpo,napo}-tiny.yaml")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--eval_examples", type=int, default=1000, help="test rows (a seeded sample, the same for all)")
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    results: dict[str, list[dict]] = {"SFT": [{**evaluate(args, out / "SFT" / "eval", None), "seconds": None}]}
    for method in args.methods:
        stem, overrides = METHODS[method]
        for seed in args.seeds:
            run_dir = out / method.replace(" ", "_") / f"seed-{seed}"
            start = time.time()
            if not (run_dir / "adapter_model.safetensors").is_file():
                cmd = [sys.executable, str(REPO / "recipes/napo.py"), "--config", f"{args.config_dir}/{stem}-tiny.yaml",
                       "--dataset_dir", args.dataset_dir, "--model_name_or_path", args.model_name_or_path,
                       "--sft_adapter", args.sft, "--output_dir", str(run_dir), "--seed", str(seed), *overrides]
                if stem == "napo":
                    cmd += ["--aux_dir", args.aux_dir]
                run(cmd, run_dir.parent / f"{run_dir.name}.log")
            metrics = evaluate(args, run_dir / "eval-test", str(run_dir))
            results.setdefault(method, []).append({**metrics, "seed": seed, "seconds": train_seconds(run_dir)})
            print(f"{method} seed {seed}: test hr@1 {metrics['hr@1']:.4f} ({time.time() - start:.0f} s)", flush=True)

    lines = [f"Study on {args.dataset_dir}: {args.eval_examples} sampled test rows, preference seeds "
             f"{args.seeds} from one SFT model; mean +- standard error over seeds.", "",
             "| method | seeds | " + " | ".join(KEYS) + " | train s |", "|---|---|" + "---|" * (len(KEYS) + 1)]
    summary = {}
    for method, runs in results.items():
        row = {k: mean_se([r.get(k) for r in runs]) for k in (*KEYS, "seconds")}
        summary[method] = row
        cells = [f"{m:.4f} +- {s:.4f}" if not math.isnan(s) else (f"{m:.4f}" if not math.isnan(m) else "-")
                 for m, s in (row[k] for k in KEYS)]
        sec = row["seconds"][0]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + f" | {'-' if math.isnan(sec) else f'{sec:.0f}'} |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    (out / "study.json").write_text(json.dumps({"args": vars(args), "runs": results, "summary": summary}, indent=2) + "\n")
    print("\n".join(lines))
    plot(summary, out / "study.png")
    return 0


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    means = [summary[n]["hr@1"][0] for n in names]
    errors = [0 if math.isnan(summary[n]["hr@1"][1]) else summary[n]["hr@1"][1] for n in names]
    left.bar(range(len(names)), means, yerr=errors, capsize=4, color="tab:blue")
    left.set_xticks(range(len(names)), names, rotation=40, ha="right")
    left.set_ylabel("test HR@1 (mean +- s.e. over seeds)")
    width = 0.8 / 3
    for j, band in enumerate(("head", "mid", "tail")):
        values = [summary[n][f"pop/hr@10/{band}"][0] for n in names]
        right.bar([i + (j - 1) * width for i in range(len(names))], values, width, label=band)
    right.set_xticks(range(len(names)), names, rotation=40, ha="right")
    right.set_ylabel("test HR@10 per popularity band")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

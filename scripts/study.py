"""What does each part of NAPO buy? Seeds x methods on one prepared dataset, resumable.

    python scripts/study.py --dataset_dir runs/demo/data --model_name_or_path runs/demo/tiny-model \
        --sft runs/demo/sft --aux_dir runs/demo/sasrec/aux --config_dir recipes/configs/ml-100k \
        --output_dir runs/study/ml-100k --seeds 1 2 3

Every method starts from the same SFT model (`--sft`) and gets the same training budget (the
`*-tiny.yaml` configs: steps, batch, learning rate chosen on valid with scripts/sweep.py); only
the preference stage's seed changes (negative draws, LoRA init, data order). With `--sft_seeds`
(`--sft` then holds `{seed}`, e.g. runs/study/sft-{seed}) each seed also retrains SFT with
`recipes/sft.py --config CONFIG_DIR/sft-tiny.yaml --seed S`, and seed S's preference runs start
from SFT seed S: the spread then covers the whole pipeline. Each (method, seed)
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
sys.path.insert(0, str(REPO))  # run from a checkout: the napo package beside this script

from napo.eval.report import plot_methods  # noqa: E402

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


def sft_path(args, seed: int | None) -> str:
    return args.sft.format(seed=seed) if args.sft_seeds else args.sft


def train_sft(args, seed: int) -> str:
    """SFT seed `seed` (trained once, skipped when its model is there)."""
    path = Path(sft_path(args, seed))
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        run([sys.executable, str(REPO / "recipes/sft.py"), "--config", f"{args.config_dir}/sft-tiny.yaml",
             "--dataset_dir", args.dataset_dir, "--model_name_or_path", args.model_name_or_path,
             "--output_dir", str(path), "--seed", str(seed), "--overwrite_output_dir", "true"],  # a killed try
            path.parent / f"{path.name}.log")
    return str(path)


def evaluate(args, out: Path, adapter: str | None, sft: str) -> dict:
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, str(REPO / "recipes/evaluate.py"), "--model_name_or_path", sft,
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
    p.add_argument("--sft", required=True, help="the SFT output every method starts from (and the SFT row); "
                   "with --sft_seeds a path holding {seed}, trained when missing")
    p.add_argument("--sft_seeds", action="store_true", help="retrain SFT per seed (CONFIG_DIR/sft-tiny.yaml)")
    p.add_argument("--aux_dir", required=True, help="the auxiliary recommender's outputs (NAPO)")
    p.add_argument("--config_dir", default="recipes/configs/ml-100k", help="folder of {dpo,sdpo,napo}-tiny.yaml")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--table_only", action="store_true", help="train and evaluate nothing: the table of finished runs")
    p.add_argument("--eval_examples", type=int, default=1000, help="test rows (a seeded sample, the same for all)")
    args = p.parse_args(argv)
    if args.sft_seeds and "{seed}" not in args.sft:
        p.error("--sft_seeds: --sft must hold {seed}, e.g. runs/study/sft-{seed}")
    out = Path(args.output_dir)
    if args.sft_seeds:
        results: dict[str, list[dict]] = {"SFT": []}
        for seed in args.seeds:
            if args.table_only and not (out / "SFT" / f"eval-seed-{seed}" / "metrics.json").is_file():
                continue
            sft = train_sft(args, seed)
            results["SFT"].append({**evaluate(args, out / "SFT" / f"eval-seed-{seed}", None, sft), "seed": seed,
                                   "seconds": train_seconds(Path(sft))})
    else:
        results = {"SFT": [{**evaluate(args, out / "SFT" / "eval", None, args.sft), "seconds": None}]}
    # Seed-major: an interrupted study has every method at the first seeds rather than some methods at all.
    for seed in args.seeds:
        for method in args.methods:
            stem, overrides = METHODS[method]
            run_dir = out / method.replace(" ", "_") / f"seed-{seed}"
            start = time.time()
            if args.table_only:
                done = run_dir / "eval-test" / "metrics.json"
                if done.is_file():
                    metrics = json.loads(done.read_text())["rank"]
                    results.setdefault(method, []).append({**metrics, "seed": seed, "seconds": train_seconds(run_dir)})
                continue
            if not (run_dir / "adapter_model.safetensors").is_file():
                cmd = [sys.executable, str(REPO / "recipes/napo.py"), "--config", f"{args.config_dir}/{stem}-tiny.yaml",
                       "--dataset_dir", args.dataset_dir, "--model_name_or_path", args.model_name_or_path,
                       "--sft_adapter", sft_path(args, seed), "--output_dir", str(run_dir), "--seed", str(seed),
                       "--overwrite_output_dir", "true", *overrides]  # a killed try is trained again
                if stem == "napo":
                    cmd += ["--aux_dir", args.aux_dir]
                run(cmd, run_dir.parent / f"{run_dir.name}.log")
            metrics = evaluate(args, run_dir / "eval-test", str(run_dir), sft_path(args, seed))
            results.setdefault(method, []).append({**metrics, "seed": seed, "seconds": train_seconds(run_dir)})
            print(f"{method} seed {seed}: test hr@1 {metrics['hr@1']:.4f} ({time.time() - start:.0f} s)", flush=True)
    results = {m: results[m] for m in ["SFT", *args.methods] if results.get(m)}

    origin = "SFT retrained per seed" if args.sft_seeds else "one SFT model"
    lines = [f"Study on {args.dataset_dir}: {args.eval_examples} sampled test rows, seeds "
             f"{args.seeds} ({origin}); mean +- standard error over seeds.", "",
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
    plot_methods(summary, out / "study.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

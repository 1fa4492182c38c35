"""What scripts/study.py will cost on a dataset: each method timed for a few steps, projected.

    OMP_NUM_THREADS=1 python bench/study_cost.py --dataset_dir runs/data/lastfm \
        --model_name_or_path runs/lastfm/tiny-model --aux_dir runs/lastfm/sasrec/aux \
        --config_dir recipes/configs/lastfm --output_dir runs/bench/study-cost/lastfm --sft_seeds

Every method of scripts/study.py (and SFT) runs its CONFIG_DIR/*-tiny.yaml for ``--steps`` steps
from the base model (a step costs what it costs from SFT), one after the other in this process's
turn. A run's wall time = set-up (start, load, tokenize, aux join) + steps * seconds per step
(``train_runtime / steps`` from its trainer_state.json); the projection replaces ``--steps`` by the
config's max_steps. One rank evaluation of ``--eval_examples`` rows is timed (the same for valid
and test). The study's total is then

    tuning:  for every method, len(lr_grid) x (run + valid evaluation), plus one SFT with --sft_seeds
    study:   seeds x (every method's run + test evaluation), plus per seed SFT (+ evaluation)

Single-threaded seconds; say what else ran on the machine (`uptime`) when quoting them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(cmd: list[str], log: Path) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[1:3])} ... failed (exit {proc.returncode}); see {log}")
    return time.time() - start


def runtime(run_dir: Path) -> float:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return next(h["train_runtime"] for h in reversed(history) if "train_runtime" in h)


def main(argv: list[str] | None = None) -> int:
    from importlib import util

    spec = util.spec_from_file_location("study", REPO / "scripts/study.py")
    study = util.module_from_spec(spec)
    spec.loader.exec_module(study)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--aux_dir", required=True)
    p.add_argument("--config_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--steps", type=int, default=20, help="steps timed per method")
    p.add_argument("--methods", nargs="+", default=list(study.METHODS), choices=list(study.METHODS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--grid", type=int, default=4, help="learning rates tried per method")
    p.add_argument("--sft_seeds", action="store_true", help="the study retrains SFT per seed")
    p.add_argument("--eval_examples", type=int, default=1000)
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    py = sys.executable

    def max_steps(stem: str) -> int:
        return int(yaml.safe_load(Path(f"{args.config_dir}/{stem}-tiny.yaml").read_text())["max_steps"])

    rows = {}
    sft_dir = out / "sft"
    wall = timed([py, str(REPO / "recipes/sft.py"), "--config", f"{args.config_dir}/sft-tiny.yaml",
                  "--dataset_dir", args.dataset_dir, "--model_name_or_path", args.model_name_or_path,
                  "--output_dir", str(sft_dir), "--max_steps", str(args.steps), "--save_strategy", "no"],
                 out / "sft.log")
    rows["SFT"] = (wall, runtime(sft_dir) / args.steps, max_steps("sft"))
    for method in args.methods:
        m = study.METHODS[method]
        run_dir = out / study.slug(method)
        cmd = [py, str(REPO / "recipes/napo.py"), "--config", f"{args.config_dir}/{m.stem}-tiny.yaml",
               "--dataset_dir", args.dataset_dir, "--model_name_or_path", args.model_name_or_path,
               "--sft_adapter", args.model_name_or_path, "--output_dir", str(run_dir), "--max_steps", str(args.steps),
               "--eval_strategy", "no", *m.overrides] + (["--aux_dir", args.aux_dir] if m.stem == "napo" else [])
        wall = timed(cmd, out / f"{study.slug(method)}.log")
        rows[method] = (wall, runtime(run_dir) / args.steps, max_steps(m.stem))
        print(f"{method}: {wall:.0f} s for {args.steps} steps", flush=True)
    evaluation = timed([py, str(REPO / "recipes/evaluate.py"), "--model_name_or_path", str(sft_dir),
                        "--adapter", str(out / study.slug(args.methods[0])), "--dataset_dir", args.dataset_dir,
                        "--split", "test", "--mode", "rank", "--max_examples", str(args.eval_examples),
                        "--sample_seed", "42", "--batch_size", "32", "--output_dir", str(out / "eval"),
                        "--no_progress"], out / "eval.log")

    lines = [f"Projected single-threaded seconds on {args.dataset_dir} ({args.steps} steps timed per run; "
             f"one rank evaluation of {args.eval_examples} rows: {evaluation:.0f} s).", "",
             "| method | set-up s | s/step | steps | projected run s |", "|---|---|---|---|---|"]
    projected = {}
    for method, (wall, per_step, steps) in rows.items():
        setup = wall - per_step * args.steps
        projected[method] = setup + per_step * steps
        lines.append(f"| {method} | {setup:.0f} | {per_step:.3f} | {steps} | {projected[method]:.0f} |")
    methods = [m for m in rows if m != "SFT"]
    tuning = sum(args.grid * (projected[m] + evaluation) for m in methods)
    runs = args.seeds * sum(projected[m] + evaluation for m in methods)
    sft = (args.seeds + 1) * projected["SFT"] + args.seeds * evaluation if args.sft_seeds else evaluation
    total = tuning + runs + sft
    lines += ["", f"Study ({len(methods)} methods, {args.seeds} seeds, grid of {args.grid}): tuning "
              f"{tuning / 3600:.2f} h, runs {runs / 3600:.2f} h, SFT {sft / 3600:.2f} h; total {total / 3600:.2f} "
              f"CPU-hours ({total / 7200:.2f} h of wall time on two slots)."]
    text = "\n".join(lines)
    (out / "study_cost.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What does each part of NAPO buy? Methods x seeds on one prepared dataset, tuned on valid, resumable.

    python scripts/study.py --dataset_dir runs/data/lastfm --model_name_or_path runs/lastfm/tiny-model \
        --sft 'runs/study/lastfm/sft-{seed}' --sft_seeds --aux_dir runs/lastfm/sasrec-llara/aux \
        --config_dir recipes/configs/lastfm --output_dir runs/study/lastfm --seeds 1 2 3 4 5

Three stages, each resumable (a finished run, evaluation or grid point is never redone):

1. tune: every method gets its learning rate from the SAME grid (``--lr_grid``) with the same
   budget (its ``CONFIG_DIR/*-tiny.yaml``: steps, batch), one scripts/sweep.py call per method,
   at the tuning seed (``--tune_seed``, not a study seed), selected on the same seeded sample of
   VALID rows (hr@1; ties go to the earlier grid value). Recorded in OUT/tuning/METHOD/sweep.json
   and OUT/study.md. ``--ablation_lr base`` gives each ablation row its base method's rate instead
   (one switch changed, the learning rate included).
2. train: each (method, seed) with its tuned rate, from SFT; evaluated with recipes/evaluate.py
   (rank mode) on the same seeded sample of TEST rows (per_row.json beside metrics.json). With
   ``--sft_seeds`` (``--sft`` holds ``{seed}``) each seed retrains SFT (``CONFIG_DIR/sft-tiny.yaml
   --seed S``) and seed S's preference runs start from it: the spread covers the whole pipeline.
   Without it every seed starts from the one ``--sft`` model (preference seeds only).
3. table: OUT/study.md and OUT/study.json: learning rates, mean +- standard error over seeds, and
   for every comparison of COMPARISONS the paired difference on the same rows and seeds
   (``napo.eval.stats.compare_runs``: 95% interval, McNemar p for hr@k, seed-level t p, verdict);
   OUT/study.png (HR@1 with error bars, HR@10 per popularity band). OUT/timings.jsonl records the
   wall seconds of every run this script started (what the study cost).

Seed-major order: an interrupted study has every method at the first seeds. Two studies over
disjoint ``--seeds`` may run at once after ``--stage tune``; ``--stage table`` then reads them all.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout: the napo package beside this script

from napo.eval.report import plot_methods  # noqa: E402
from napo.eval.stats import compare_runs, paired_table  # noqa: E402


class Method(NamedTuple):
    """A study row: ``CONFIG_DIR/{stem}-tiny.yaml`` plus ``overrides``; ``base``: for an ablation,
    the method it differs from by one switch (docs/reproduction.md)."""

    stem: str
    overrides: tuple[str, ...] = ()
    base: str | None = None


FAITHFUL = ("--napo_mode", "faithful", "--share_mode", "reuse")  # the configs' share_mode is rescore
REUSE = ("--share_mode", "reuse")
METHODS = {
    "DPO": Method("dpo"),
    "S-DPO K=3": Method("sdpo"),
    "S-DPO K=19": Method("sdpo", ("--num_negatives", "19")),
    "NAPO faithful": Method("napo", FAITHFUL),
    "NAPO reuse": Method("napo", REUSE),
    "NAPO rescore": Method("napo", ("--share_mode", "rescore")),
    "NAPO no sharing": Method("napo", ("--share_negatives", "false")),
    "NAPO fixed margin": Method("napo", ("--share_mode", "rescore", "--margin_alpha", "0")),
    # the reference's margin (form and M_t over the pool) with corrected sharing
    "NAPO reference margin": Method("napo", ("--share_mode", "rescore", "--margin_form", "reference",
                                             "--margin_scores", "pool")),
    # ablations: one of the ways faithful and reuse differ (docs/reproduction.md), switched alone
    "NAPO faithful grad": Method("napo", (*FAITHFUL, "--detach_negatives", "false"), "NAPO faithful"),
    "NAPO reuse nograd": Method("napo", (*REUSE, "--detach_negatives", "true"), "NAPO reuse"),
    "NAPO faithful masked": Method("napo", (*FAITHFUL, "--mask_collisions", "true"), "NAPO faithful"),
    "NAPO reuse unmasked": Method("napo", (*REUSE, "--mask_collisions", "false"), "NAPO reuse"),
    "NAPO faithful corrected-margin": Method("napo", (*FAITHFUL, "--margin_form", "corrected", "--margin_scores", "own"),
                                             "NAPO faithful"),
    "NAPO faithful no-dropout": Method("napo", (*FAITHFUL, "--disable_dropout", "true"), "NAPO faithful"),
}
# (A, B): A - B is printed. Every ablation is also compared with its base (added below).
COMPARISONS = [
    *((m, "SFT") for m in ("DPO", "S-DPO K=3", "S-DPO K=19", "NAPO faithful", "NAPO reuse", "NAPO rescore")),
    ("NAPO rescore", "S-DPO K=19"), ("NAPO rescore", "S-DPO K=3"), ("NAPO reuse", "S-DPO K=3"),
    ("NAPO faithful", "S-DPO K=3"), ("S-DPO K=19", "S-DPO K=3"), ("S-DPO K=3", "DPO"),
    ("NAPO rescore", "NAPO reuse"), ("NAPO rescore", "NAPO faithful"), ("NAPO reuse", "NAPO faithful"),
    ("NAPO rescore", "NAPO no sharing"), ("NAPO rescore", "NAPO fixed margin"),
    ("NAPO reference margin", "NAPO rescore"), ("NAPO reference margin", "NAPO fixed margin"),
    *((name, m.base) for name, m in METHODS.items() if m.base),
]
KEYS = ("hr@1", "ndcg@5", "mrr", "pop/hr@10/head", "pop/hr@10/mid", "pop/hr@10/tail")


def slug(name: str) -> str:
    """A method's folder name: 'S-DPO K=3' -> 'S-DPO_K=3'."""
    return re.sub(r"[^A-Za-z0-9=.-]+", "_", name)


class Study:
    """Paths and subprocess runs of one study (OUT = ``args.output_dir``)."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.output_dir)

    # ------------------------------------------------------------------ layout
    def run_dir(self, method: str, seed: int) -> Path:
        return self.out / slug(method) / f"seed-{seed}"

    def eval_dir(self, method: str, seed: int) -> Path:
        if method == "SFT":
            return self.out / "SFT" / (f"eval-seed-{seed}" if self.args.sft_seeds else "eval")
        return self.run_dir(method, seed) / "eval-test"

    def sft(self, seed: int) -> str:
        return self.args.sft.format(seed=seed) if self.args.sft_seeds else self.args.sft

    # ------------------------------------------------------------------ running
    def run(self, cmd: list[str], log: Path, what: str, **record) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "w") as handle:
            proc = subprocess.run(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = (log.read_text().strip().splitlines() or ["(no output)"])[-1]
            sys.exit(f"error: {' '.join(cmd[1:3])} ... exited {proc.returncode}: {tail} (full log: {log})")
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "timings.jsonl", "a") as handle:
            handle.write(json.dumps({"what": what, **record, "seconds": round(time.time() - start, 1)}) + "\n")

    def train_sft(self, seed: int) -> str:
        path = Path(self.sft(seed))
        if self.args.sft_seeds and not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            a = self.args
            self.run([sys.executable, str(REPO / "recipes/sft.py"), "--config", f"{a.config_dir}/sft-tiny.yaml",
                      "--dataset_dir", a.dataset_dir, "--model_name_or_path", a.model_name_or_path,
                      "--output_dir", str(path), "--seed", str(seed), "--overwrite_output_dir", "true"],  # a killed try
                     path.parent / f"{path.name}.log", "sft", seed=seed)
        return str(path)

    def recipe_args(self, method: str, sft: str) -> list[str]:
        """What every run of ``method`` gets besides its config, seed, output and learning rate."""
        m = METHODS[method]
        extra = ["--dataset_dir", self.args.dataset_dir, "--model_name_or_path", self.args.model_name_or_path,
                 "--sft_adapter", sft, *m.overrides]
        return extra + (["--aux_dir", self.args.aux_dir] if m.stem == "napo" else [])

    def config(self, method: str) -> str:
        return f"{self.args.config_dir}/{METHODS[method].stem}-tiny.yaml"

    def evaluate(self, out: Path, adapter: str | None, sft: str, what: dict) -> dict:
        if not (out / "metrics.json").is_file():
            a = self.args
            cmd = [sys.executable, str(REPO / "recipes/evaluate.py"), "--model_name_or_path", sft,
                   "--dataset_dir", a.dataset_dir, "--split", "test", "--mode", "rank",
                   "--max_examples", str(a.eval_examples), "--sample_seed", str(a.sample_seed),
                   "--batch_size", str(a.eval_batch_size), "--output_dir", str(out), "--no_progress"]
            self.run(cmd + (["--adapter", adapter] if adapter else []), out.parent / f"{out.name}.log", "eval", **what)
        return json.loads((out / "metrics.json").read_text())["rank"]

    # ------------------------------------------------------------------ stage 1: learning rates
    def tuned(self, method: str) -> bool:
        return self.args.ablation_lr == "tuned" or METHODS[method].base is None

    def tune(self, method: str) -> None:
        """One scripts/sweep.py call: the lr grid at the tuning seed, ranked on valid rows."""
        a = self.args
        sweep_dir = self.out / "tuning" / slug(method)
        if (sweep_dir / "sweep.json").is_file() and tuning_grid(sweep_dir) == sorted(float(x) for x in a.lr_grid):
            return
        sft = self.train_sft(a.tune_seed)
        cmd = [sys.executable, str(REPO / "scripts/sweep.py"), "--config", self.config(method),
               "--dataset_dir", a.dataset_dir, "--output_dir", str(sweep_dir),
               "--grid", "learning_rate=" + ",".join(a.lr_grid), "--split", "valid", "--metric", "hr@1",
               "--eval_examples", str(a.valid_examples), "--eval_batch_size", str(a.eval_batch_size),
               "--seed", str(a.tune_seed), "--sample_seed", str(a.sample_seed), "--",
               *self.recipe_args(method, sft)]
        self.run(cmd, self.out / "tuning" / f"{slug(method)}.log", "tune", method=method)

    def learning_rate(self, method: str) -> float:
        """The tuned rate (or, with --ablation_lr base, the base method's)."""
        source = method if self.tuned(method) else METHODS[method].base
        sweep_dir = self.out / "tuning" / slug(source)
        if not (sweep_dir / "sweep.json").is_file():
            sys.exit(f"error: no learning rate for {source!r}: {sweep_dir}/sweep.json is missing; run --stage tune first")
        return best_learning_rate(json.loads((sweep_dir / "sweep.json").read_text()))

    # ------------------------------------------------------------------ stage 2: runs
    def train(self, method: str, seed: int) -> None:
        run_dir, lr = self.run_dir(method, seed), self.learning_rate(method)
        if (run_dir / "adapter_model.safetensors").is_file():
            trained = json.loads((run_dir / "run.json").read_text())["config"]["training"]["learning_rate"]
            if not math.isclose(trained, lr, rel_tol=1e-9):
                sys.exit(f"error: {run_dir} was trained with learning rate {trained}, the tuning chose {lr}: "
                         "remove the run (and its eval-test) to retrain it")
        else:
            cmd = [sys.executable, str(REPO / "recipes/napo.py"), "--config", self.config(method),
                   "--output_dir", str(run_dir), "--seed", str(seed), "--overwrite_output_dir", "true",  # a killed try
                   *self.recipe_args(method, self.sft(seed)),
                   "--learning_rate", repr(lr)]
            self.run(cmd, run_dir.parent / f"{run_dir.name}.log", "train", method=method, seed=seed)
        metrics = self.evaluate(self.eval_dir(method, seed), str(run_dir), self.sft(seed),
                                {"method": method, "seed": seed})
        print(f"{method} seed {seed} (lr {lr:g}): test hr@1 {metrics['hr@1']:.4f}", flush=True)


# ---------------------------------------------------------------------- pure helpers (tested)


def tuning_grid(sweep_dir: Path) -> list[float]:
    rows = json.loads((sweep_dir / "sweep.json").read_text())["rows"]
    return sorted(float(r["settings"]["learning_rate"]) for r in rows if "learning_rate" in r.get("settings", {}))


def best_learning_rate(sweep: dict) -> float:
    """The best grid point's rate: highest valid metric, ties to the earlier grid value (sweep.py
    ranks with a stable sort over the grid order)."""
    metric = sweep["metric"]
    points = [r for r in sweep["rows"] if "learning_rate" in r.get("settings", {})]
    if not points:
        raise ValueError("the sweep has no learning-rate points")
    best = max(points, key=lambda r: r[metric])  # max keeps the first of equal values
    return float(best["settings"]["learning_rate"])


def mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, standard error over seeds); s.e. nan with one value."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.mean(values), se


def finished_runs(study: Study, method: str, seeds: list[int]) -> dict:
    """seed -> evaluation folder of ``method``'s finished runs; {None: folder} for the one SFT
    model of a study without --sft_seeds (a fixed model beside every seed)."""
    if method == "SFT" and not study.args.sft_seeds:
        folder = study.eval_dir("SFT", 0)
        return {None: folder} if (folder / "per_row.json").is_file() else {}
    return {s: study.eval_dir(method, s) for s in seeds if (study.eval_dir(method, s) / "per_row.json").is_file()}


def paired_comparisons(study: Study, seeds: list[int], metrics: list[str],
                       comparisons=None) -> tuple[list, list[str]]:
    """``compare_runs`` for every comparison whose two methods have finished runs, seed by seed
    on their common seeds. Returns (the Paired results, a note per comparison left out)."""
    results, notes = [], []
    for a, b in COMPARISONS if comparisons is None else comparisons:
        runs = {m: finished_runs(study, m, seeds) for m in (a, b)}
        missing = [m for m in (a, b) if not runs[m]]
        if missing:
            notes.append(f"{a} vs {b}: left out ({' and '.join(missing)} not finished)")
            continue
        if None in runs[a] or None in runs[b]:  # a fixed model on one side: every seed of the other
            sides = {m: list(runs[m].values()) for m in (a, b)}
        else:
            common = sorted(runs[a].keys() & runs[b].keys())
            if not common:
                notes.append(f"{a} vs {b}: left out (no seed finished by both)")
                continue
            sides = {m: [runs[m][s] for s in common] for m in (a, b)}
        for metric in metrics:
            results.append(compare_runs(sides[a], sides[b], metric, names=(a, b)))
    return results, notes


def write_tables(study: Study, methods: list[str], seeds: list[int]) -> str:
    """OUT/study.md, OUT/study.json, OUT/study.png from the finished runs; returns the markdown."""
    a, out = study.args, study.out
    rows = {}
    for method in ["SFT", *methods]:
        if method == "SFT" and not a.sft_seeds:
            done = [0] if (study.eval_dir("SFT", 0) / "metrics.json").is_file() else []
        else:
            done = [s for s in seeds if (study.eval_dir(method, s) / "metrics.json").is_file()]
        runs = [json.loads((study.eval_dir(method, s) / "metrics.json").read_text())["rank"] for s in done]
        if runs:
            rows[method] = {"seeds": done if (method != "SFT" or a.sft_seeds) else [],
                            **{k: mean_se([r.get(k) for r in runs]) for k in KEYS},
                            "seconds": mean_se([train_seconds(study, method, s) for s in done])}
    origin = "SFT retrained per seed" if a.sft_seeds else "one SFT model, preference seeds"
    lines = [f"Study on {a.dataset_dir}: {a.eval_examples} sampled test rows (sample seed {a.sample_seed}), "
             f"seeds {seeds} ({origin}).", "", "## Learning rates", "",
             f"Grid {', '.join(a.lr_grid)}, chosen on {a.valid_examples} sampled valid rows (sample seed "
             f"{a.sample_seed}) by hr@1 at training seed {a.tune_seed}, the same budget per method "
             f"(scripts/sweep.py; ablation rows: {'tuned alike' if a.ablation_lr == 'tuned' else 'their base method rate'}).",
             "", "| method | overrides | " + " | ".join(f"valid hr@1 at {lr}" for lr in a.lr_grid) + " | chosen |",
             "|---|---|" + "---|" * (len(a.lr_grid) + 1)]
    lrs = {}
    for method in methods:
        source = method if study.tuned(method) else METHODS[method].base
        sweep_file = out / "tuning" / slug(source) / "sweep.json"
        if not sweep_file.is_file():
            continue
        sweep = json.loads(sweep_file.read_text())
        by_lr = {float(r["settings"]["learning_rate"]): r["hr@1"] for r in sweep["rows"]
                 if "learning_rate" in r.get("settings", {})}
        lrs[method] = best_learning_rate(sweep)
        cells = [f"{by_lr[float(lr)]:.4f}" if float(lr) in by_lr else "-" for lr in a.lr_grid]
        chosen = f"{lrs[method]:g}" + ("" if source == method else f" (of {source})")
        lines.append(f"| {method} | `{' '.join(METHODS[method].overrides) or '-'}` | " + " | ".join(cells) + f" | {chosen} |")
    lines += ["", "## Test metrics: mean +- standard error over seeds", "",
              "| method | seeds | " + " | ".join(KEYS) + " | train s |", "|---|---|" + "---|" * (len(KEYS) + 1)]
    for method, row in rows.items():
        cells = [f"{m:.4f} +- {s:.4f}" if not math.isnan(s) else (f"{m:.4f}" if not math.isnan(m) else "-")
                 for m, s in (row[k] for k in KEYS)]
        sec = row["seconds"][0]
        lines.append(f"| {method} | {len(row['seeds']) or 1} | " + " | ".join(cells)
                     + f" | {'-' if math.isnan(sec) else f'{sec:.0f}'} |")
    wanted = {"SFT", *methods}
    paired, notes = paired_comparisons(study, seeds, a.paired_metrics,
                                       [c for c in COMPARISONS if set(c) <= wanted])
    lines += ["", "## Paired differences (same rows, seed by seed)", "",
              "A - B with a 95% interval (crossed bootstrap over seeds and rows; paired bootstrap over rows with "
              "one seed), the exact McNemar p for hr@k (pooled over seeds), the seed-level paired t p, and "
              "the verdict: a direction only where the interval excludes 0.", "", paired_table(paired)]
    lines += [f"- {n}" for n in notes]
    lines += ["", cost_line(out)]
    text = "\n".join(lines) + "\n"
    (out / "study.md").write_text(text)
    (out / "study.json").write_text(json.dumps({
        "args": vars(a), "learning_rates": lrs, "summary": rows,
        "paired": [p.as_dict() for p in paired]}, indent=2) + "\n")
    if rows:
        plot_methods({m: r for m, r in rows.items()}, out / "study.png")
    return text


def train_seconds(study: Study, method: str, seed: int) -> float | None:
    run_dir = Path(study.sft(seed)) if method == "SFT" else study.run_dir(method, seed)
    state = run_dir / "trainer_state.json"
    if state.is_file():
        history = json.loads(state.read_text()).get("log_history", [])
        return next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    return None


def cost_line(out: Path) -> str:
    """What the runs this script started cost, from OUT/timings.jsonl."""
    path = out / "timings.jsonl"
    if not path.is_file():
        return "Cost: no run was started by this study's script."
    totals: dict[str, float] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        totals[record["what"]] = totals.get(record["what"], 0.0) + record["seconds"]
    parts = ", ".join(f"{k} {v / 3600:.2f} h" for k, v in totals.items())
    return f"Cost (wall seconds of the runs started, single-threaded): {sum(totals.values()) / 3600:.2f} h ({parts})."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--model_name_or_path", required=True, help="the base model the SFT stage starts from")
    p.add_argument("--sft", required=True, help="the SFT output every method starts from (and the SFT row); "
                   "with --sft_seeds a path holding {seed}, trained when missing")
    p.add_argument("--sft_seeds", action="store_true", help="retrain SFT per seed (CONFIG_DIR/sft-tiny.yaml)")
    p.add_argument("--aux_dir", required=True, help="the auxiliary recommender's outputs (every NAPO method)")
    p.add_argument("--config_dir", default="recipes/configs/ml-100k", help="folder of {sft,dpo,sdpo,napo}-tiny.yaml")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--stage", default="all", choices=["all", "tune", "train", "table"],
                   help="tune: learning rates only; train: runs (tuning must be done); table: read finished runs")
    p.add_argument("--table_only", action="store_true", help="the same as --stage table")
    p.add_argument("--lr_grid", nargs="+", default=["2e-4", "5e-4", "1e-3", "2e-3"], help="learning rates tried per method")
    p.add_argument("--tune_seed", type=int, default=0, help="training seed of the tuning runs (and its SFT with --sft_seeds)")
    p.add_argument("--ablation_lr", default="tuned", choices=["tuned", "base"],
                   help="ablation rows: their own tuned rate, or their base method's (one switch changed)")
    p.add_argument("--valid_examples", type=int, default=1000, help="valid rows of the tuning (a seeded sample)")
    p.add_argument("--eval_examples", type=int, default=1000, help="test rows (a seeded sample, the same for all)")
    p.add_argument("--sample_seed", type=int, default=42, help="seed of the valid and test row samples")
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--paired_metrics", nargs="+", default=["hr@1", "mrr"], help="metrics of the paired table")
    args = p.parse_args(argv)
    if args.table_only:
        args.stage = "table"
    if args.sft_seeds and "{seed}" not in args.sft:
        p.error("--sft_seeds: --sft must hold {seed}, e.g. runs/study/sft-{seed}")
    if args.tune_seed in args.seeds:
        p.error(f"--tune_seed {args.tune_seed} is also a study seed: tune on another seed")
    for lr in args.lr_grid:
        try:
            float(lr)
        except ValueError:
            p.error(f"--lr_grid: {lr!r} is not a number")
    study = Study(args)
    methods = [m for m in METHODS if m in args.methods]  # the table's order
    if args.stage in ("all", "tune"):  # each method, or with --ablation_lr base an ablation's base
        for source in dict.fromkeys(m if study.tuned(m) else METHODS[m].base for m in methods):
            study.tune(source)
            print(f"{source}: learning rate {study.learning_rate(source):g} (valid hr@1)", flush=True)
        if not args.sft_seeds:  # the one SFT model's row, before parallel `--stage train` calls start
            study.evaluate(study.eval_dir("SFT", 0), None, args.sft, {"method": "SFT"})
    if args.stage in ("all", "train"):
        for seed in args.seeds:
            sft = study.train_sft(seed)
            if args.sft_seeds or seed == args.seeds[0]:  # (a finished evaluation is never redone)
                study.evaluate(study.eval_dir("SFT", seed), None, sft, {"method": "SFT", "seed": seed})
            for method in methods:
                study.train(method, seed)
    print(write_tables(study, methods, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

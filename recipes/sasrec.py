"""Train an id-based recommender (SASRec, GRU4Rec, Caser, Pop) on a prepared dataset.

    python recipes/sasrec.py --config recipes/configs/lastfm/sasrec.yaml \
        --dataset_dir runs/data/lastfm --output_dir runs/sasrec-lastfm [--model GRU4Rec] [--seed 1]

Every field of napo.recsys.train.RecConfig can be set in the YAML file and overridden on the
command line (`--loss bce --sampler popularity --num_negatives 4`). Writes:
    OUT/metrics.json   test: candidate protocol (hr@k, ndcg@k, mrr), full ranking (full/...),
                       popularity reports (pop/..., full/pop/...); valid/... the same on valid
    OUT/aux/           user vectors + candidate scores for every row of every split (NAPO)
    OUT/checkpoint/    model.safetensors + config.json of the selected (best valid) model
    OUT/run.json       config, seed, versions, git revision
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import yaml

from data_prep.prepared import PreparedDataError
from napo.recsys.aux import write_aux
from napo.recsys.data import load_dataset_dir
from napo.recsys.train import RecConfig, fit, infer, make_model, save_checkpoint, split_metrics
from napo.utils import set_seed, write_run_info


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML file with RecConfig fields (and optionally dataset_dir/output_dir)")
    p.add_argument("--dataset_dir", help="prepared dataset directory (python -m data_prep ...)")
    p.add_argument("--output_dir", help="where metrics.json, aux/, checkpoint/ and run.json go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    kinds = {int: int, float: float, str: str, bool: _parse_bool}
    for f in dataclasses.fields(RecConfig):
        p.add_argument(f"--{f.name}", type=kinds[type(f.default)], default=None, help=f.metadata.get("help"))
    args = p.parse_args(argv)
    values: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            p.error(f"--config {path}: file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
            p.error(f"--config {path}{where}: not valid YAML; fix the file")
        if not isinstance(loaded, dict):
            p.error(f"--config {path}: expected a mapping of config keys")
        for key in ("dataset_dir", "output_dir"):
            if getattr(args, key) is None and key in loaded:
                setattr(args, key, loaded[key])
            loaded.pop(key, None)
        values.update(loaded)
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(RecConfig)
                   if getattr(args, f.name) is not None})
    for key in ("dataset_dir", "output_dir"):
        if not getattr(args, key):
            p.error(f"--{key} is required (on the command line or in the config)")
    return args, values


def main(argv: list[str] | None = None) -> int:
    args, values = parse_args(argv)
    try:
        cfg = RecConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        print(f"error: config: {err}", file=sys.stderr)
        return 2
    set_seed(cfg.seed)
    try:
        splits, num_items, train_counts, meta = load_dataset_dir(args.dataset_dir, cfg.max_len)
    except PreparedDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    start = time.time()

    model = make_model(cfg, num_items, train_counts)
    result = fit(model, cfg, splits["train"], splits["valid"], train_counts, progress=not args.quiet)
    save_checkpoint(model, cfg, out / "checkpoint")

    metrics: dict = {}
    for name, split in splits.items():
        outputs = infer(model, split, batch_size=cfg.eval_batch_size,
                        exclude_history=cfg.exclude_history, progress=not args.quiet)
        if split.candidates is not None:
            scores = outputs.candidate_scores
        else:  # full-ranking-only data: no candidate lists to score
            scores = outputs.user_vectors[:, :0]
        write_aux(out / "aux", name, outputs.user_vectors, scores,
                  dataset_fingerprint=meta["fingerprint"], model=cfg.model)
        if name == "test":
            metrics.update(split_metrics(split, outputs, train_counts))
        elif name == "valid":
            metrics.update({f"valid/{k}": v for k, v in split_metrics(split, outputs).items()})
    metrics.update({"train/best_epoch": result.best_epoch, "train/epochs": result.epochs_run,
                    "train/fit_seconds": round(result.wall_s, 1),
                    "train/total_seconds": round(time.time() - start, 1)})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_run_info(out, {**dataclasses.asdict(cfg), "dataset_dir": str(args.dataset_dir),
                         "dataset_fingerprint": meta["fingerprint"], "history": result.history},
                   cfg.seed)
    shown = {k: round(metrics[k], 4) for k in ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr",
                                               "full/hr@10", "full/ndcg@10") if k in metrics}
    print(f"{cfg.model} test {json.dumps(shown)} -> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

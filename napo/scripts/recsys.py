"""Train a recommender without an LLM on a prepared dataset: the sequential models (Pop, SASRec,
GRU4Rec, Caser, DreamRec, PreferDiff) and the CF comparators (MostPop, MF, LightGCN).

    napo-recsys --config recipes/configs/lastfm/sasrec.yaml \
        --dataset_dir runs/data/lastfm --output_dir runs/sasrec-lastfm [--model GRU4Rec] [--seed 1]
    napo-recsys --config recipes/configs/ml-100k/mf-ssm.yaml \
        --dataset_dir runs/data/ml-100k-cf --output_dir runs/cf/mf-ssm [--loss bpr --sampler shapley]

(`python recipes/recsys.py ...` is the same.) The `model` picks the settings class: a sequential
model reads `napo.recsys.train.RecConfig`, a CF model `napo.recsys.cf_train.CFConfig`; every
field can be set in the YAML file and overridden on the command line (--help lists both). One fit
loop (napo.recsys.loop: eval_every, patience, best valid state restored; `max_minutes` is a safety
valve, and a run it stopped says so in metrics.json `train/stopped_by_clock` and run.json `fit`). This
script imports neither TRL nor an LLM stack. The directory picks the protocol:

- a candidate-list directory (`python -m data_prep ...`), sequential model: next-item rows.
    OUT/metrics.json   test: candidate protocol (hr@k, ndcg@k, mrr), full ranking (full/...),
                       popularity reports (pop/..., full/pop/...); valid/... the same on valid
    OUT/aux/           user vectors + candidate scores for every row of every split (NAPO, napo-eval)
    OUT/checkpoint/    model.safetensors + config.json of the selected (best valid) model
    OUT/checkpoints/   with save_every: N, resumable training state after every N-th epoch
                       (--resume_from_checkpoint true continues from the newest)
    OUT/run.json       config, seed, versions, git revision
    OUT/README.md      the model card (napo.cards): model and paper, dataset fingerprint, test metrics
- a candidate-list directory, CF model: MF / LightGCN on the train rows' user-item pairs, rows
  scored by fold-in (napo.recsys.cf_candidates); metrics.json with the candidate keys above
  (hr@k, ndcg@k, mrr, pop/...; valid/...; selection on valid ndcg@10), aux/, checkpoint/, run.json.
- a CF-protocol directory (`--protocol cf`), CF model: full ranking of held-out user-item sets
  (napo.recsys.cf_train); metrics.json (recall@k, ndcg@k, pop/... on test; valid/...),
  checkpoint/, run.json; selection on valid `select_metric` (ndcg@20).

`--test_max_examples N --test_sample_seed S` computes the test metrics of candidate-list data on
the rows `napo-eval --max_examples N --sample_seed S` evaluates (napo.eval.runner.sample_rows).
"""

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.cf import is_cf_directory
from data_prep.errors import UserError
from napo.auxiliary import write_aux, write_item_vectors
from napo.cards import command_line, dataset_facts, write_card
from napo.eval.metrics import target_ranks
from napo.eval.report import write_per_row
from napo.eval.runner import sample_rows
from napo.recsys import state as train_state
from napo.recsys.cf_candidates import fold_in, load_candidate_splits, row_metrics
from napo.recsys.cf_train import (
    CF_MODELS,
    CFConfig,
    build_model,
    evaluate,
    load_data,
    model_scorer,
    popularity_scorer,
    vectors,
)
from napo.recsys.cf_train import fit as cf_fit
from napo.recsys.cf_train import save_checkpoint as cf_save_checkpoint
from napo.recsys.data import load_dataset_dir
from napo.recsys.loop import FitResult
from napo.recsys.shapley_sampler import summary as shapley_summary
from napo.recsys.train import (
    RecConfig,
    RecRunArguments,
    fit,
    infer,
    make_model,
    save_checkpoint,
    split_metrics,
)
from napo.scripts.parser import StrictParser, fail, peek
from napo.utils import package_versions, set_seed, write_run_info

DESCRIPTION = __doc__.split("\n\n")[0]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        StrictParser((RecRunArguments, RecConfig), description=DESCRIPTION).print_help()
        print(f"\nCF comparators (model: {' | '.join(CF_MODELS)}; set it in the config or with --model, "
              "the recipe's default is SASRec) read these settings instead of the sequential model's, "
              "beside the run arguments above:\n")
        print(StrictParser((CFConfig,)).format_help().split("\n\n", 1)[1])
        return 0
    if peek(argv, "model") in CF_MODELS:
        return train_cf(argv)
    return train_sequential(argv)


def train_sequential(argv) -> int:
    # Parse: YAML (--config) + command line; unknown keys stop the run with file:line:column.
    run_args, cfg = StrictParser((RecRunArguments, RecConfig)).parse(argv)
    set_seed(cfg.seed)

    # Data (and the checkpoint to resume from: `true` = the newest under OUT/checkpoints)
    out = Path(run_args.output_dir)
    try:
        if is_cf_directory(run_args.dataset_dir):
            raise UserError(f"{run_args.dataset_dir}: a CF-protocol directory (user-item sets, no sequences); "
                            f"use model {', '.join(CF_MODELS)} or a directory of `python -m data_prep` without --protocol cf")
        splits, num_items, train_counts, meta = load_dataset_dir(run_args.dataset_dir, cfg.max_len)
        resume = train_state.resolve(out / "checkpoints", run_args.resume_from_checkpoint)
        keep = scored_test_rows(run_args, len(splits["test"]), splits["test"].candidates is not None)
    except UserError as err:
        fail(err)
    start = time.time()

    # Train (model selection on valid only), save the selected model.
    model = make_model(cfg, num_items, train_counts)
    try:
        result = fit(model, cfg, splits["train"], splits["valid"], train_counts, progress=not run_args.quiet,
                     checkpoint_dir=out / "checkpoints", save_every=run_args.save_every, resume_from=resume,
                     nonfinite=run_args.nonfinite)
    except UserError as err:  # a non-finite loss with nonfinite: stop, or an unreadable checkpoint
        fail(err)
    save_checkpoint(model, cfg, out / "checkpoint")

    # Outputs of every split: aux (NAPO's user vectors, candidate scores, item vectors) and metrics.
    metrics: dict = {}
    with torch.no_grad():
        write_item_vectors(out / "aux", model.item_vectors())
    for name, split in splits.items():
        outputs = infer(model, split, batch_size=cfg.eval_batch_size,
                        exclude_history=cfg.exclude_history, progress=not run_args.quiet)
        if split.candidates is not None:
            scores = outputs.candidate_scores
        else:  # full-ranking-only data: no candidate lists to score
            scores = outputs.user_vectors[:, :0]
        write_aux(out / "aux", name, outputs.user_vectors, scores,
                  dataset_fingerprint=meta["fingerprint"], model=cfg.model)
        if name == "test":
            metrics.update(split_metrics(split.take(keep), outputs.take(keep), train_counts))
            tested = split.take(keep)
            ranks = {"full": outputs.take(keep).full_ranks}
            if tested.candidates is not None:
                ranks["rank"] = target_ranks(outputs.candidate_scores[keep], tested.target_index)
            write_per_row(out, rows=keep, split="test", dataset_fingerprint=meta["fingerprint"], ranks=ranks)
        elif name == "valid":
            metrics.update({f"valid/{k}": v for k, v in split_metrics(split, outputs).items()})
    metrics.update({**result.metrics(), "train/total_seconds": round(time.time() - start, 1),
                    **sample_keys(run_args, keep)})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_run_info(out, {**dataclasses.asdict(cfg), "dataset_dir": str(run_args.dataset_dir),
                         "dataset_fingerprint": meta["fingerprint"], "history": result.history,
                         "fit": result.record()},
                   cfg.seed)
    write_card(out, {  # README.md: the model card of a recommender without an LLM (napo.cards)
        "method": cfg.model, "model_name": out.name, "command": command_line(argv, "napo-recsys"),
        "dataset": dataset_facts(str(run_args.dataset_dir), meta),
        "objective": {"loss": cfg.loss, "sampler": cfg.sampler, "num_negatives": cfg.num_negatives},
        "training": {"hidden": cfg.hidden, "lr": cfg.lr, "max_epochs": cfg.max_epochs,
                     "best_epoch": result.best_epoch, "seed": cfg.seed},
        "evaluations": [{"name": "napo-recsys", "dataset": meta.get("dataset"), "split": "test",
                         "num_examples": len(keep),
                         "metrics": {k: metrics[k] for k in ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr")
                                     if k in metrics}}],
        "versions": package_versions(),
    })
    shown = {k: round(metrics[k], 4) for k in ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr",
                                               "full/hr@10", "full/ndcg@10") if k in metrics}
    print(f"{cfg.model} test {json.dumps(shown)} -> {out / 'metrics.json'}")
    return 0


def train_cf(argv) -> int:
    # Parse: the same run arguments, CFConfig for the model's settings.
    run_args, cfg = StrictParser((RecRunArguments, CFConfig)).parse(argv)
    if run_args.save_every or run_args.resume_from_checkpoint:
        fail("save_every / resume_from_checkpoint: sequential models only (a CF run restarts from scratch)")
    set_seed(cfg.seed)

    # Data: the directory picks the protocol (CF user-item sets, or candidate-list rows).
    out = Path(run_args.output_dir)
    try:
        candidates = not is_cf_directory(run_args.dataset_dir)
        if candidates:
            if cfg.sampler == "shapley":
                raise UserError("sampler shapley needs the CF protocol's validation items; use uniform here")
            data, rows, meta = load_candidate_splits(run_args.dataset_dir)
            keep = scored_test_rows(run_args, len(rows["test"]), True)
        else:
            if run_args.test_max_examples is not None:
                raise UserError("test_max_examples: candidate-list data only (the CF protocol averages over users)")
            data, meta = load_data(run_args.dataset_dir)
    except UserError as err:
        fail(err)
    out.mkdir(parents=True, exist_ok=True)

    # Train (model selection on valid only; MostPop has nothing to train), save the selected model.
    model, result = None, FitResult(0, math.nan, 0, 0.0, [])
    if cfg.model != "MostPop":
        model = build_model(cfg, data)
        validate = None  # the CF protocol's valid select_metric
        if candidates:
            validate = lambda m: row_metrics(fold_in(m, cfg, rows["valid"])[1], rows["valid"])["ndcg@10"]  # noqa: E731
        result = cf_fit(model, cfg, data, progress=not run_args.quiet, validate=validate)
        cf_save_checkpoint(model, cfg, out / "checkpoint", num_users=data.num_users, num_items=data.num_items)

    # Metrics (and for candidate lists aux/: fold-in user vectors and candidate scores of every row).
    if candidates:
        metrics = {}
        if model is not None:
            with torch.no_grad():
                write_item_vectors(out / "aux", vectors(model, cfg)[1])
        for name, split in rows.items():
            if model is None:  # MostPop: candidates ranked by training count
                h, scores = np.zeros((len(split), 0), np.float32), data.train_counts[split.candidates].astype(np.float64)
            else:
                h, scores = fold_in(model, cfg, split)
            write_aux(out / "aux", name, h, scores, dataset_fingerprint=meta["fingerprint"], model=cfg.model)
            if name == "valid":
                metrics.update({f"valid/{k}": v for k, v in row_metrics(scores, split).items()})
            elif name == "test":
                metrics.update(row_metrics(scores[keep], split.take(keep), data.train_counts))
                write_per_row(out, rows=keep, split="test", dataset_fingerprint=meta["fingerprint"],
                              ranks={"rank": target_ranks(scores[keep], split.take(keep).target_index)})
        metrics.update(sample_keys(run_args, keep))
    else:
        scorer = popularity_scorer(data) if model is None else model_scorer(model, cfg)
        metrics = {f"valid/{k}": v for k, v in evaluate(scorer, data, "valid").items()}
        per_user: dict = {}
        metrics.update(evaluate(scorer, data, "test", pop=True, per_user=per_user, mask_valid=cfg.mask_valid_at_test))
        users = per_user.pop("users")
        write_per_row(out, rows=users, split="test", dataset_fingerprint=meta["fingerprint"], values=per_user)
    metrics.update(result.metrics())
    if cfg.sampler == "shapley":  # rounds, TIP's training and held-out R^2, v(N) - v(empty)
        metrics.update(shapley_summary(result.history))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    protocol = {"protocol": "20-candidate, fold-in = mean of history item vectors"} if candidates else {}
    write_run_info(out, {**dataclasses.asdict(cfg), "dataset_dir": str(run_args.dataset_dir),
                         "dataset_fingerprint": meta["fingerprint"], "history": result.history,
                         "fit": result.record(), **protocol},
                   cfg.seed)
    name = cfg.model if cfg.model == "MostPop" else f"{cfg.model}-{cfg.loss}"
    name += "-shapley" if cfg.sampler == "shapley" else ""
    keys = ("hr@1", "hr@5", "ndcg@10", "mrr") if candidates else ("recall@20", "ndcg@20", "train/fit_seconds",
                                                                 "train/epochs", "shapley/tip_r2_heldout")
    shown = {k: round(metrics[k], 4) for k in keys if k in metrics}
    print(f"{name}{' candidates' if candidates else ''} test {json.dumps(shown)} -> {out / 'metrics.json'}")
    return 0


def scored_test_rows(run_args: RecRunArguments, num_rows: int, has_candidates: bool) -> list[int]:
    """Positions of the test rows the metrics cover: all, or napo-eval's sample (sample_rows)."""
    if run_args.test_max_examples is not None and not has_candidates:
        raise UserError("test_max_examples: candidate-list data only (this directory ranks the full catalogue)")
    return sample_rows(num_rows, run_args.test_max_examples, run_args.test_sample_seed)


def sample_keys(run_args: RecRunArguments, keep: list[int]) -> dict:
    """metrics.json's record of a test sample (none when every row was scored)."""
    if run_args.test_max_examples is None:
        return {}
    return {"test/num_examples": len(keep), "test/sample_seed": run_args.test_sample_seed}


if __name__ == "__main__":
    raise SystemExit(main())

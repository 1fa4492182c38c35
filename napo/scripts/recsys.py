"""Train an id-based recommender (Pop, SASRec, GRU4Rec, Caser) on a prepared dataset.

    napo-recsys --config recipes/configs/lastfm/sasrec.yaml \
        --dataset_dir runs/data/lastfm --output_dir runs/sasrec-lastfm [--model GRU4Rec] [--seed 1]

(`python recipes/recsys.py ...` is the same.) Every field of `napo.recsys.train.RecConfig` can be
set in the YAML file and overridden on the command line (`--loss bce --sampler popularity
--num_negatives 4`). This script imports neither TRL nor an LLM stack. Writes:
    OUT/metrics.json   test: candidate protocol (hr@k, ndcg@k, mrr), full ranking (full/...),
                       popularity reports (pop/..., full/pop/...); valid/... the same on valid
    OUT/aux/           user vectors + candidate scores for every row of every split (NAPO)
    OUT/checkpoint/    model.safetensors + config.json of the selected (best valid) model
    OUT/checkpoints/   with save_every: N, resumable training state after every N-th epoch
                       (--resume_from_checkpoint true continues from the newest)
    OUT/run.json       config, seed, versions, git revision
    OUT/README.md      the model card (napo.cards): model and paper, dataset fingerprint, test metrics
"""

import dataclasses
import json
import time
from pathlib import Path

import torch

from data_prep.errors import UserError
from napo.auxiliary import write_aux, write_item_vectors
from napo.cards import command_line, dataset_facts, write_card
from napo.recsys import state as train_state
from napo.recsys.data import load_dataset_dir
from napo.recsys.train import (
    RecConfig,
    RecRunArguments,
    fit,
    infer,
    make_model,
    save_checkpoint,
    split_metrics,
)
from napo.scripts.parser import ScriptParser, fail
from napo.utils import package_versions, set_seed, write_run_info


def main(argv=None) -> int:
    # Parse: YAML (--config) + command line; unknown keys stop the run with file:line:column.
    run_args, cfg = ScriptParser((RecRunArguments, RecConfig)).parse(argv)
    set_seed(cfg.seed)

    # Data (and the checkpoint to resume from: `true` = the newest under OUT/checkpoints)
    out = Path(run_args.output_dir)
    try:
        splits, num_items, train_counts, meta = load_dataset_dir(run_args.dataset_dir, cfg.max_len)
        resume = train_state.resolve(out / "checkpoints", run_args.resume_from_checkpoint)
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
            metrics.update(split_metrics(split, outputs, train_counts))
        elif name == "valid":
            metrics.update({f"valid/{k}": v for k, v in split_metrics(split, outputs).items()})
    metrics.update({"train/best_epoch": result.best_epoch, "train/epochs": result.epochs_run,
                    "train/fit_seconds": round(result.wall_s, 1),
                    "train/total_seconds": round(time.time() - start, 1)})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_run_info(out, {**dataclasses.asdict(cfg), "dataset_dir": str(run_args.dataset_dir),
                         "dataset_fingerprint": meta["fingerprint"], "history": result.history},
                   cfg.seed)
    write_card(out, {  # README.md: the model card of a recommender without an LLM (napo.cards)
        "method": cfg.model, "model_name": out.name, "command": command_line(argv, "napo-recsys"),
        "dataset": dataset_facts(str(run_args.dataset_dir), meta),
        "objective": {"loss": cfg.loss, "sampler": cfg.sampler, "num_negatives": cfg.num_negatives},
        "training": {"hidden": cfg.hidden, "lr": cfg.lr, "max_epochs": cfg.max_epochs,
                     "best_epoch": result.best_epoch, "seed": cfg.seed},
        "evaluations": [{"name": "napo-recsys", "dataset": meta.get("dataset"), "split": "test",
                         "num_examples": (meta.get("counts") or {}).get("splits", {}).get("test", {}).get("examples"),
                         "metrics": {k: metrics[k] for k in ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr")
                                     if k in metrics}}],
        "versions": package_versions(),
    })
    shown = {k: round(metrics[k], 4) for k in ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr",
                                               "full/hr@10", "full/ndcg@10") if k in metrics}
    print(f"{cfg.model} test {json.dumps(shown)} -> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

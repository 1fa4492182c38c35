"""Evaluate a recommender on a prepared dataset: an LLM (base model + optional LoRA adapter) or a
classic recommender (Popularity, the auxiliary SASRec), all through the same metrics and report.

```bash
# an LLM: rank the candidates by log-likelihood and/or generate greedily and match titles
napo-eval --model_name_or_path runs/tiny/ml-100k --adapter runs/sft \
    --dataset_dir runs/data/ml-100k --split test --mode both --output_dir runs/eval/sft
# several processes (each scores a shard; metrics identical to one process)
accelerate launch --num_processes 2 recipes/evaluate.py ...same arguments...

# classic recommenders in the same format
napo-eval --popularity --dataset_dir D --output_dir runs/eval/popularity
napo-eval --scores_from_aux runs/sasrec/aux --dataset_dir D --output_dir runs/eval/sasrec

# one markdown table comparing runs, and table.png: the methods side by side (HR@1, HR@10 per
# popularity band); runs given the same --names are seeds of one method (mean +- s.e.)
napo-eval --compare runs/eval/popularity runs/eval/sasrec runs/eval/sft --output table.md
```

Every setting is a field of `napo.eval.config.EvalArguments` (YAML `--config` or flags).
Writes OUT/metrics.json, OUT/predictions.jsonl, OUT/report.md, OUT/plots/*.png, OUT/run.json, and
adds the ranking metrics to the model card (README.md) of the evaluated adapter / model directory
when this toolkit trained it. Base model and adapter may each be a Hub id or a local directory.
"""

import sys
from pathlib import Path

from data_prep.errors import UserError
from napo.cards import add_evaluation
from napo.eval.config import EvalArguments
from napo.eval.report import compare, plot_methods, summarize_runs
from napo.eval.runner import evaluate, load_split, process_state
from napo.eval.scorers import aux_scorer, popularity_scorer
from napo.scripts.parser import ScriptParser, fail


def main(argv=None) -> int:
    (args,) = ScriptParser((EvalArguments,), description=__doc__.split("\n\n")[0]).parse(argv)
    try:
        if args.compare:
            table = compare(args.compare, names=args.names)
            print(table)
            if args.output:
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                Path(args.output).write_text(table + "\n")
                # Runs that share a name (--names) are seeds of one method: mean +- s.e. in the figure.
                figure = plot_methods(summarize_runs(args.compare, args.names), Path(args.output).with_suffix(".png"))
                print(f"figure: {figure}", file=sys.stderr)
            return 0
        # Data first: a wrong directory or split fails in a second, before a large model loads.
        rows, items, meta = load_split(args.dataset_dir, args.split, args.max_examples, args.sample_seed)
        model = tokenizer = scorer = catalogue = model_name = None
        if args.model_name_or_path:
            from napo.models.loading import load_for_evaluation

            model, tokenizer = load_for_evaluation(args)
            model_name = args.model_name_or_path + (f" + adapter {args.adapter}" if args.adapter else "")
        elif args.popularity:
            from data_prep.prepared import train_counts
            from napo.eval.catalogue import PopularityCatalogue

            scorer = popularity_scorer(items)
            catalogue = PopularityCatalogue(train_counts(items))
        else:
            from napo.eval.catalogue import aux_catalogue

            if args.rank_over != "catalogue":
                scorer = aux_scorer(args.scores_from_aux, args.split, meta)
            if args.rank_over != "candidates":  # SASRec's own full ranking: user @ item vectors
                catalogue = aux_catalogue(args.scores_from_aux, args.split, meta)
        metrics = evaluate(args, rows, items, meta, model=model, tokenizer=tokenizer, scorer=scorer,
                           catalogue=catalogue, model_name=model_name)
    except UserError as err:
        fail(err)

    state = process_state()
    if state.is_main_process:
        summary = []
        for section in metrics.get("modes", []):
            sec = metrics.get(section) or {}
            keys = ("hr@1", "hr@10", "ndcg@10", "mrr") if section in ("rank", "full") else ("hr@1", "valid_ratio", "hr@1_valid")
            summary += [f"{section} {k}={sec[k]:.4f}" for k in keys if sec.get(k) is not None]
        print(f"{metrics['num_examples']} examples: " + ", ".join(summary) + f" -> {args.output_dir}")
        if "full_settings" in metrics:  # what one row of full-catalogue ranking costs
            cost = metrics["full_settings"]
            extra = "".join(f", {k.replace('_', ' ')} {cost[k]:,.1f}" for k in ("prompt_encodings_per_row", "tokens_per_row")
                            if k in cost)
            print(f"full ranking over {cost['num_items']:,} items: {cost['seconds_per_row'] * 1000:.1f} ms per row "
                  f"({cost['scorer']}{extra})")
        # The evaluated output's model card gets this evaluation (a local dir this toolkit trained).
        for model_dir in (args.adapter, args.model_name_or_path):
            if model_dir and Path(model_dir).is_dir() and add_evaluation(
                    model_dir, metrics, name=args.name or Path(args.output_dir).name):
                print(f"model card updated: {Path(model_dir) / 'README.md'}")
                break
    # Leaving a gloo/NCCL group alive until interpreter exit aborts a worker now and then
    # ("terminate called without an active exception", exit -6) after all work is done.
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

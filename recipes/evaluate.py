"""Evaluate a recommender on a prepared dataset: an LLM (base model + optional LoRA adapter) or a
classic recommender (Popularity, the auxiliary SASRec), all through the same metrics and report.

```bash
# an LLM: rank the candidates by log-likelihood and/or generate greedily and match titles
python recipes/evaluate.py --model_name_or_path runs/tiny/ml-100k --adapter runs/sft \
    --dataset_dir runs/data/ml-100k --split test --mode both --output_dir runs/eval/sft
# several processes (each scores a shard; metrics identical to one process)
accelerate launch --num_processes 2 recipes/evaluate.py ...same arguments...

# classic recommenders in the same format
python recipes/evaluate.py --popularity --dataset_dir D --output_dir runs/eval/popularity
python recipes/evaluate.py --scores_from_aux runs/sasrec/aux --dataset_dir D --output_dir runs/eval/sasrec

# one markdown table comparing runs
python recipes/evaluate.py --compare runs/eval/popularity runs/eval/sasrec runs/eval/sft --output table.md
```

Writes OUT/metrics.json, OUT/predictions.jsonl, OUT/report.md, OUT/plots/*.png, OUT/run.json.
"""

import argparse
import sys
from pathlib import Path

# `python recipes/evaluate.py` puts recipes/ first on sys.path, where recipes/napo.py would shadow
# the napo package: look packages up from the installed/checkout locations instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

_USER_ERRORS = ("EvalError", "EvalOutputError", "PreparedDataError", "ModelLoadError", "AuxError", "RowError")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to evaluate (one of)")
    what.add_argument("--model_name_or_path", help="Hub id or local model (or a PEFT adapter directory)")
    what.add_argument("--popularity", action="store_true", help="most-popular baseline (items.jsonl train_count)")
    what.add_argument("--scores_from_aux", metavar="AUX_DIR",
                      help="candidate scores of an auxiliary recommender (recipes/sasrec.py OUT/aux)")
    what.add_argument("--compare", nargs="+", metavar="OUT", help="render one table comparing evaluation runs")
    p.add_argument("--adapter", help="PEFT adapter applied on top of --model_name_or_path")
    p.add_argument("--dataset_dir", help="prepared dataset directory (python -m data_prep)")
    p.add_argument("--split", default="test")
    p.add_argument("--mode", default="rank", choices=("rank", "generate", "both"))
    p.add_argument("--output_dir", help="where the outputs are written")
    p.add_argument("--name", help="row name in comparisons (default: the output directory's name)")
    p.add_argument("--max_examples", type=int, help="evaluate N examples only (the first N, or a sample with --sample_seed)")
    p.add_argument("--sample_seed", type=int, help="with --max_examples: a seeded uniform sample of rows instead of the first N")
    p.add_argument("--batch_size", type=int, default=8, help="examples per forward / generate call")
    p.add_argument("--length_normalize", action="store_true", help="rank by mean instead of summed log-prob")
    p.add_argument("--scoring", default="packed", choices=("packed", "naive"), help="rank scorer layout")
    p.add_argument("--max_new_tokens", type=int, default=20, help="generation budget (the papers use 20)")
    p.add_argument("--containment", default="word", choices=("word", "substring"),
                   help="answer matching: a title must occur as whole words (default) or as any substring (papers)")
    p.add_argument("--max_prompt_length", type=int, help="truncate prompts from the left to N tokens")
    p.add_argument("--dtype", default="auto", help="model dtype: auto, float32, bfloat16, float16")
    p.add_argument("--attn_implementation", default="sdpa", help="eager or sdpa (packed scoring needs a 4D mask)")
    p.add_argument("--load_in_4bit", action="store_true", help="QLoRA-style 4-bit base (bitsandbytes, GPU)")
    p.add_argument("--trust_remote_code", action="store_true", help="run the model repository's own code (off by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    p.add_argument("--output", help="with --compare: also write the table to this file")
    p.add_argument("--names", nargs="+", help="with --compare: one row name per run")
    args = p.parse_args(argv)
    chosen = [n for n in ("model_name_or_path", "popularity", "scores_from_aux", "compare") if getattr(args, n)]
    if len(chosen) != 1:
        p.error("give exactly one of --model_name_or_path, --popularity, --scores_from_aux, --compare")
    if not args.compare and (not args.dataset_dir or not args.output_dir):
        p.error("--dataset_dir and --output_dir are required")
    if (args.popularity or args.scores_from_aux) and args.mode != "rank":
        p.error("--popularity and --scores_from_aux rank candidates: use --mode rank")
    return args


def load_llm(args):
    """(model, tokenizer): base model, with the adapter applied and merged when given."""
    from trl import ModelConfig

    from napo.models.loading import (
        ModelLoadError,
        is_adapter_dir,
        load_model_and_tokenizer,
        load_tokenizer,
    )

    model_args = ModelConfig(model_name_or_path=args.model_name_or_path, dtype=args.dtype,
                             attn_implementation=args.attn_implementation, load_in_4bit=args.load_in_4bit)
    model, tokenizer = load_model_and_tokenizer(
        model_args, argparse.Namespace(trust_remote_code=args.trust_remote_code))
    if args.adapter:
        from peft import PeftModel

        if not is_adapter_dir(args.adapter):
            raise ModelLoadError(f"{args.adapter}: no adapter_config.json; give the output_dir of a LoRA run")
        if (Path(args.adapter) / "tokenizer_config.json").is_file():  # the tokenizer training used
            tokenizer = load_tokenizer(args.adapter)
        model = PeftModel.from_pretrained(model, args.adapter)
        if not args.load_in_4bit:
            model = model.merge_and_unload()  # same numbers, faster forward
    return model, tokenizer


def main(argv=None):
    args = parse_args(argv)
    from napo.eval.report import compare
    from napo.eval.runner import evaluate, load_split
    from napo.eval.scorers import aux_scorer, popularity_scorer

    try:
        if args.compare:
            table = compare(args.compare, names=args.names)
            print(table)
            if args.output:
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                Path(args.output).write_text(table + "\n")
            return 0
        # Data first: a wrong directory or split fails in a second, before a large model loads.
        _, items, meta = load_split(args.dataset_dir, args.split)
        model = tokenizer = scorer = model_name = None
        if args.model_name_or_path:
            model, tokenizer = load_llm(args)
            model_name = args.model_name_or_path + (f" + adapter {args.adapter}" if args.adapter else "")
        elif args.popularity:
            scorer = popularity_scorer(items)
        else:
            scorer = aux_scorer(args.scores_from_aux, args.split, meta)
        config = {k: v for k, v in vars(args).items() if k not in ("compare", "output", "names")}
        metrics = evaluate(
            model, tokenizer, args.dataset_dir, args.split, args.mode, args.output_dir,
            scorer=scorer, batch_size=args.batch_size, max_examples=args.max_examples,
            sample_seed=args.sample_seed,
            length_normalize=args.length_normalize, layout=args.scoring, max_new_tokens=args.max_new_tokens,
            containment=args.containment,
            max_prompt_length=args.max_prompt_length, name=args.name, model_name=model_name, config=config, seed=args.seed,
            show_progress=not args.no_progress,
        )
    except Exception as err:  # user-facing problems are one line; anything else is a bug: traceback
        if type(err).__name__ in _USER_ERRORS:
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    from napo.eval.runner import process_state

    state = process_state()
    if state.is_main_process:
        summary = []
        for section in ("rank", "generate"):
            sec = metrics.get(section) or {}
            keys = ("hr@1", "hr@10", "ndcg@10", "mrr") if section == "rank" else ("hr@1", "valid_ratio", "hr@1_valid")
            summary += [f"{section} {k}={sec[k]:.4f}" for k in keys if sec.get(k) is not None]
        print(f"{metrics['num_examples']} examples: " + ", ".join(summary) + f" -> {args.output_dir}")
    # Leaving a gloo/NCCL group alive until interpreter exit aborts a worker now and then
    # ("terminate called without an active exception", exit -6) after all work is done.
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The evaluator: shard the examples over processes, run a scorer and/or a generator in batches,
gather, compute metrics once, write the outputs (docs/contracts.md §5).

Sharding is by whole batches: the examples are cut into batches of `batch_size` in dataset
order, and process p of P takes a contiguous block of batches. Every batch therefore holds the
same examples whatever P is (so padding, and the float results, do not depend on P), and the
gathered outputs come back in dataset order. Metrics are computed from the gathered outputs, so
one process and P processes give identical metrics.

    rows, items, meta = load_split(args.dataset_dir, args.split, args.max_examples, args.sample_seed)
    evaluate(args, rows, items, meta, model=model, tokenizer=tokenizer)    # an LLM
    evaluate(args, rows, items, meta, scorer=PopularityScorer(...))        # any CandidateScorer
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_prep.prepared import train_counts
from napo.eval.config import EvalArguments, EvalError
from napo.eval.metrics import DEFAULT_KS
from napo.eval.report import write_metrics, write_per_row, write_predictions, write_report
from napo.eval.results import POP_KS, generate_results, mode_agreement, rank_results
from napo.eval.rows import batch_candidate_titles, target_indices

_COLUMNS = ("user_id", "target", "candidates", "prompt", "chosen", "rejected")


def process_state():
    """accelerate's PartialState, on the CPU when no accelerator is present or ACCELERATE_USE_CPU
    is set (PartialState() alone reads a CPU-only torchrun launch as one process per copy)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not has_accelerator)


def shard_bounds(num_rows: int, batch_size: int, num_processes: int, process_index: int) -> tuple[int, int]:
    """Rows [start, end) of one process: a contiguous block of whole batches."""
    if batch_size < 1:
        raise EvalError(f"batch_size must be >= 1, got {batch_size}")
    num_batches = math.ceil(num_rows / batch_size)
    first = num_batches * process_index // num_processes
    last = num_batches * (process_index + 1) // num_processes
    return min(first * batch_size, num_rows), min(last * batch_size, num_rows)


def _run_batches(fn: Callable, rows, start: int, end: int, batch_size: int, desc: str,
                 show_progress: bool) -> list:
    """fn(batch, indices) over rows[start:end] in batches; one output per row, in order."""
    outputs = []
    starts = range(start, end, batch_size)
    for b in tqdm(starts, desc=desc, unit="batch", disable=not show_progress):
        indices = list(range(b, min(b + batch_size, end)))
        batch = rows[b: indices[-1] + 1]  # a dict of columns
        result = fn(batch, indices)
        if hasattr(result, "tolist"):
            result = result.tolist()
        result = list(result)
        if len(result) != len(indices):
            raise EvalError(f"{desc}: got {len(result)} outputs for a batch of {len(indices)} examples")
        outputs.extend(result)
    return outputs


def evaluate_rows(
    rows,
    train_counts: Sequence[int],
    output_dir: str | os.PathLike | None,
    *,
    scorer: Callable | None = None,
    generator: Callable | None = None,
    batch_size: int = 8,
    ks: Sequence[int] = DEFAULT_KS,
    pop_ks: Sequence[int] = POP_KS,
    containment: str = "word",
    info: dict | None = None,
    show_progress: bool = True,
) -> dict:
    """Evaluate prepared-dataset rows with a scorer (rank) and/or a generator (generate).

    Args:
        rows: a `datasets.Dataset` (or anything whose slice `rows[a:b]` is a dict of columns)
            with the contract columns. Rows are evaluated in order.
        train_counts: [num_items] training interaction counts (popularity bands).
        output_dir: where the main process writes metrics.json, predictions.jsonl, report.md
            and plots/ (None: write nothing).
        scorer: `CandidateScorer` -> the "rank" section; generator: `AnswerGenerator` -> the
            "generate" section. At least one.
        containment: how answers are matched to titles, "word" or "substring" (the papers').
        info: extra top-level fields of metrics.json (name, dataset, split, scorer, ...).
    Returns:
        The metrics dict (same on every process).
    """
    if scorer is None and generator is None:
        raise EvalError("nothing to evaluate: give a scorer (rank), a generator (generate) or both")
    from accelerate.utils import gather_object

    state = process_state()
    n = len(rows)
    if n == 0:
        raise EvalError("the split has no examples to evaluate")
    start, end = shard_bounds(n, batch_size, state.num_processes, state.process_index)
    show = show_progress and state.is_local_main_process
    everything = rows[0:n]
    candidates = np.asarray(everything["candidates"], dtype=np.int64)  # [N, C]
    targets = np.asarray(everything["target"], dtype=np.int64)
    counts = np.asarray(train_counts, dtype=np.int64)
    if candidates.max() >= len(counts) or targets.max() >= len(counts):
        raise EvalError(f"item ids up to {int(candidates.max())} but the items table has {len(counts)} ids; "
                        "the dataset and its items.jsonl do not match")
    metrics = {"num_examples": n, "num_candidates": int(candidates.shape[1]), "modes": []}
    metrics.update(info or {})
    # "row" is the example's position in the whole split (also when a sample was evaluated).
    row_index = everything.get("row_index") or list(range(n))
    predictions = [{"row": int(i), "user_id": int(u), "target": int(t)}
                   for i, u, t in zip(row_index, everything["user_id"], targets, strict=True)]

    if scorer is not None:
        local = _run_batches(scorer, rows, start, end, batch_size, "rank", show)
        scores = gather_object(local) if state.num_processes > 1 else local
        section, per_row = rank_results(np.asarray(scores, dtype=np.float64), candidates,
                                        target_indices(everything), targets, counts, ks, pop_ks)
        metrics["rank"] = section
        metrics["modes"].append("rank")
        for p, extra in zip(predictions, per_row, strict=True):
            p.update(extra)

    if generator is not None:
        local = _run_batches(generator, rows, start, end, batch_size, "generate", show)
        answers = gather_object(local) if state.num_processes > 1 else local
        section, per_row = generate_results(answers, batch_candidate_titles(everything), candidates,
                                            targets, counts, containment)
        metrics["generate"] = section
        metrics["modes"].append("generate")
        for p, extra in zip(predictions, per_row, strict=True):
            p.update(extra)

    if scorer is not None and generator is not None:
        metrics["agreement"] = mode_agreement(predictions)

    if output_dir is not None and state.is_main_process:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_metrics(out, metrics)
        write_predictions(out, predictions)
        ranks = {}
        if scorer is not None:
            ranks["rank"] = [p["target_rank"] for p in predictions]
        if generator is not None:
            ranks["generate"] = [1.0 if p["hit"] else math.inf for p in predictions]
        write_per_row(out, rows=[p["row"] for p in predictions], split=metrics.get("split"),
                      dataset_fingerprint=metrics.get("dataset_fingerprint"), ranks=ranks)
        write_report(out, metrics, predictions)
    state.wait_for_everyone()
    return metrics


def sample_rows(num_rows: int, max_examples: int | None = None, sample_seed: int | None = None) -> list[int]:
    """Positions of the rows an evaluation keeps out of a split of `num_rows`, in split order.

    All rows without `max_examples`; the first `max_examples`, or with `sample_seed` a seeded
    uniform sample of that many. Every evaluation that compares methods "on the same rows"
    (napo-eval --max_examples N --sample_seed S, napo-recsys --test_max_examples N
    --test_sample_seed S) takes its rows from here.
    """
    if max_examples is None:
        return list(range(num_rows))
    if max_examples < 1:
        raise EvalError(f"max_examples must be >= 1, got {max_examples}")
    if sample_seed is not None and max_examples < num_rows:
        rng = np.random.default_rng(sample_seed)
        return np.sort(rng.choice(num_rows, size=max_examples, replace=False)).tolist()
    return list(range(min(max_examples, num_rows)))


def load_split(dataset_dir: str | os.PathLike, split: str, max_examples: int | None = None,
               sample_seed: int | None = None):
    """(rows, items, meta) of one split of a prepared dataset, cut to max_examples rows.

    The cut keeps the first rows, or, with `sample_seed`, a seeded uniform sample of rows (kept in
    split order). Splits are ordered by user, so the first rows are few users; a sample is the
    fair subset. The rows carry `row_index` (their position in the whole split), which is how
    row-aligned outputs (auxiliary scores) stay aligned.
    """
    from data_prep.prepared import load_prepared

    dataset, items, meta = load_prepared(dataset_dir)
    if split not in dataset:
        raise EvalError(f"{dataset_dir}: no split {split!r} (has {', '.join(dataset.keys())}); pick one of them")
    rows = dataset[split]
    missing = [c for c in _COLUMNS if c not in rows.column_names]
    if missing:
        raise EvalError(f"{dataset_dir}/{split}: missing column(s) {', '.join(missing)}; re-run data_prep")
    keep = sample_rows(len(rows), max_examples, sample_seed)
    if max_examples is not None:
        rows = rows.select(keep)
    if "row_index" not in rows.column_names:
        rows = rows.add_column("row_index", keep)
    return rows, items, meta


def evaluate(
    args: EvalArguments,
    rows,
    items,
    meta: dict,
    *,
    model=None,
    tokenizer=None,
    scorer: Callable | None = None,
    generator: Callable | None = None,
    model_name: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Evaluate a causal LM (or an injected scorer / generator) on rows of a prepared split.

    ``rows, items, meta`` come from :func:`load_split`. ``args.mode``: "rank" (log-likelihood
    ranking of the candidates), "generate" (greedy decoding and title matching) or "both". With
    ``model`` and ``tokenizer`` the LLM scorer / generator are built here from ``args``
    (``LikelihoodScorer``, ``GreedyGenerator``); an injected ``scorer`` / ``generator`` replaces
    them (classic recommenders, tests). ``model_name`` describes the model in the report.

    Writes OUT/metrics.json, OUT/predictions.jsonl, OUT/report.md, OUT/plots/*.png and
    OUT/run.json (main process only) when ``args.output_dir`` is set; returns the metrics dict.
    """
    wanted = args.modes
    if model is not None and not getattr(model, "hf_device_map", None):
        model.to(process_state().device)  # each process scores its shard on its own device
    if "rank" in wanted and scorer is None:
        if model is None:
            raise EvalError("mode rank needs a model (or an injected scorer)")
        from napo.eval.rank import LikelihoodScorer

        scorer = LikelihoodScorer(model, tokenizer, layout=args.scoring, length_normalize=args.length_normalize,
                                  completion_prefix=args.completion_prefix,
                                  max_prompt_length=args.max_prompt_length)
    if "generate" in wanted and generator is None:
        if model is None:
            raise EvalError("mode generate needs a model (or an injected generator)")
        from napo.eval.generate import GreedyGenerator

        generator = GreedyGenerator(model, tokenizer, max_new_tokens=args.max_new_tokens,
                                    completion_prefix=args.completion_prefix,
                                    max_prompt_length=args.max_prompt_length)
    if "rank" not in wanted:
        scorer = None
    if "generate" not in wanted:
        generator = None
    output_dir = args.output_dir
    scorer_name = getattr(scorer, "name", None) or (type(scorer).__name__ if scorer is not None else None)
    info = {
        "name": args.name or (Path(output_dir).name if output_dir is not None else "run"),
        "dataset": meta.get("dataset"),
        "dataset_dir": str(args.dataset_dir),
        "dataset_fingerprint": meta.get("fingerprint"),
        "item_format": meta.get("item_format"),
        "split": args.split,
        "scorer": scorer_name if scorer is not None else type(generator).__name__,
        "model": model_name or (getattr(getattr(model, "config", None), "name_or_path", None) or None),
    }
    if scorer is not None and hasattr(scorer, "layout"):
        info["rank_settings"] = {"layout": scorer.layout, "length_normalize": scorer.length_normalize}
    if generator is not None:
        info["containment"] = args.containment
        if hasattr(generator, "generation_config"):
            info["generation_config"] = generator.generation_config.to_diff_dict()
    metrics = evaluate_rows(rows, train_counts(items), output_dir, scorer=scorer, generator=generator,
                            batch_size=args.batch_size, ks=ks, containment=args.containment, info=info,
                            show_progress=not args.no_progress)
    if output_dir is not None:
        state = process_state()
        if state.is_main_process:
            from napo.utils import write_run_info

            settings = {k: v for k, v in asdict(args).items() if k not in ("compare", "output", "names")}
            write_run_info(output_dir, {**settings, "ks": list(ks), "num_processes": state.num_processes, **info},
                           args.seed)
        state.wait_for_everyone()
    return metrics

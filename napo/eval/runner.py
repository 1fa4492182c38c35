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

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_prep.prepared import prompt_style, train_counts
from napo.eval.config import EvalArguments, EvalError
from napo.eval.metrics import DEFAULT_KS, FULL_KS, full_ranks, top_items
from napo.eval.report import write_metrics, write_per_row, write_predictions, write_report
from napo.eval.results import POP_KS, full_results, generate_results, mode_agreement, rank_results
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


def catalogue_batch(scorer: Callable, batch: dict, indices: Sequence[int], *, num_items: int,
                    exclude_history: bool = False, top_r: int = max(POP_KS)) -> list[dict]:
    """One batch of full-catalogue ranking: the scorer's [n, num_items] scores turned at once into
    each row's pessimistic rank of the target (`full_ranks`) and its top items (`top_items`), with
    the recommenders' exclusion rule (the row's history, when `exclude_history`)."""
    scores = np.asarray(_numpy(scorer(batch, indices)), dtype=np.float64)
    if scores.shape != (len(indices), num_items):
        raise EvalError(f"catalogue scorer returned scores of shape {scores.shape}, expected "
                        f"({len(indices)}, {num_items}): one column per item id of items.jsonl")
    exclude = [list(h) for h in batch["history"]] if exclude_history else None
    ranks = full_ranks(scores, batch["target"], exclude)
    tops = top_items(scores, top_r, exclude)
    return [{"full_rank": int(r), "full_top": t.tolist()} for r, t in zip(ranks, tops, strict=True)]


def _numpy(x):
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else x


def evaluate_rows(
    rows,
    train_counts: Sequence[int],
    output_dir: str | os.PathLike | None,
    *,
    scorer: Callable | None = None,
    generator: Callable | None = None,
    generators: dict[str, Callable] | None = None,
    catalogue: Callable | None = None,
    exclude_history: bool = False,
    batch_size: int = 8,
    ks: Sequence[int] = DEFAULT_KS,
    pop_ks: Sequence[int] = POP_KS,
    containment: str = "word",
    info: dict | None = None,
    show_progress: bool = True,
) -> dict:
    """Evaluate prepared-dataset rows with a scorer (rank), a catalogue scorer (full) and/or
    generators (generate).

    Args:
        rows: a `datasets.Dataset` (or anything whose slice `rows[a:b]` is a dict of columns)
            with the contract columns. Rows are evaluated in order.
        train_counts: [num_items] training interaction counts (popularity bands).
        output_dir: where the main process writes metrics.json, predictions.jsonl, per_row.json,
            report.md and plots/ (None: write nothing).
        scorer: `CandidateScorer` -> the "rank" section (the candidates).
        catalogue: a catalogue scorer (`napo.eval.catalogue`: [n, num_items] scores) -> the "full"
            section, with the recommenders' keys, ks (`FULL_KS`) and exclusion rule
            (`exclude_history`: the row's history is not ranked, except the target).
        generator: `AnswerGenerator` -> the "generate" section; generators: section name ->
            generator (constrained decoding: "generate/candidates", "generate/catalogue").
        At least one of them.
        containment: how answers are matched to titles, "word" or "substring" (the papers').
        info: extra top-level fields of metrics.json (name, dataset, split, scorer, ...).
    Returns:
        The metrics dict (same on every process).
    """
    generators = {**({"generate": generator} if generator is not None else {}), **(generators or {})}
    if scorer is None and catalogue is None and not generators:
        raise EvalError("nothing to evaluate: give a scorer (rank), a catalogue scorer (full), a generator "
                        "(generate) or several")
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

    if catalogue is not None:
        clock = time.perf_counter()
        local = _run_batches(functools.partial(catalogue_batch, catalogue, num_items=len(counts),
                                               exclude_history=exclude_history, top_r=max(pop_ks)),
                             rows, start, end, batch_size, "full", show)
        seconds = time.perf_counter() - clock
        outputs = gather_object(local) if state.num_processes > 1 else local
        full_ranks_ = np.asarray([o["full_rank"] for o in outputs], dtype=np.int64)
        metrics["full"] = full_results(full_ranks_, np.asarray([o["full_top"] for o in outputs]), targets,
                                       counts, FULL_KS, pop_ks)
        metrics["full_settings"] = {
            "scorer": getattr(catalogue, "name", type(catalogue).__name__), "num_items": int(len(counts)),
            "exclude_history": bool(exclude_history),
            # wall time of this process's rows (scoring + ranking) per row; processes run in parallel
            "seconds_per_row": seconds / max(end - start, 1),
            **(catalogue.cost() if hasattr(catalogue, "cost") else {}),
        }
        metrics["modes"].append("full")
        for p, o in zip(predictions, outputs, strict=True):
            p.update(o)

    for name, gen in generators.items():
        local = _run_batches(gen, rows, start, end, batch_size, name, show)
        answers = gather_object(local) if state.num_processes > 1 else local
        section, per_row = generate_results(answers, batch_candidate_titles(everything), candidates,
                                            targets, counts, containment)
        metrics[name] = section
        metrics["modes"].append(name)
        for p, extra in zip(predictions, per_row, strict=True):
            if name == "generate":
                p.update(extra)
            else:  # constrained decoding: its own key per row
                p[name] = extra

    if scorer is not None and "generate" in generators:
        metrics["agreement"] = mode_agreement(predictions)

    if output_dir is not None and state.is_main_process:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_metrics(out, metrics)
        write_predictions(out, predictions)
        ranks = {}
        if scorer is not None:
            ranks["rank"] = [p["target_rank"] for p in predictions]
        if catalogue is not None:
            ranks["full"] = [p["full_rank"] for p in predictions]
        for name in generators:
            hits = [(p if name == "generate" else p[name])["hit"] for p in predictions]
            ranks[name] = [1.0 if hit else math.inf for hit in hits]
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
    catalogue: Callable | None = None,
    model_name: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Evaluate a causal LM (or an injected scorer / generator) on rows of a prepared split.

    ``rows, items, meta`` come from :func:`load_split`. ``args.mode``: "rank" (log-likelihood
    ranking of the candidates, and / or of the whole catalogue: ``args.rank_over``), "generate"
    (greedy decoding, free and / or constrained: ``args.constrain``) or "both". With ``model``
    and ``tokenizer`` the LLM scorers and generators are built here from ``args``
    (``LikelihoodScorer``, :func:`llm_catalogue`, ``GreedyGenerator``, ``ConstrainedGenerator``);
    an injected ``scorer`` / ``catalogue`` / ``generator`` (free decoding) replaces them (classic
    recommenders, tests). ``model_name`` describes the model in the report.

    Writes OUT/metrics.json, OUT/predictions.jsonl, OUT/per_row.json, OUT/report.md,
    OUT/plots/*.png and OUT/run.json (main process only) when ``args.output_dir`` is set; returns
    the metrics dict.
    """
    wanted = args.modes
    over = ("candidates", "catalogue") if args.rank_over == "both" else (args.rank_over,)
    rank_candidates = "rank" in wanted and "candidates" in over
    rank_catalogue = "rank" in wanted and "catalogue" in over
    if model is not None and not getattr(model, "hf_device_map", None):
        model.to(process_state().device)  # each process scores its shard on its own device
    if rank_candidates and scorer is None:
        if model is None:
            raise EvalError("mode rank needs a model (or an injected scorer)")
        from napo.eval.rank import LikelihoodScorer

        scorer = LikelihoodScorer(model, tokenizer, layout=args.scoring, length_normalize=args.length_normalize,
                                  completion_prefix=args.completion_prefix,
                                  max_prompt_length=args.max_prompt_length)
    if rank_catalogue and catalogue is None:
        if model is None:
            raise EvalError("rank_over catalogue needs a model (or an injected catalogue scorer)")
        catalogue = llm_catalogue(args, model, tokenizer, items, meta)
    generators = {}
    if "generate" in wanted:
        for constrain, section in zip(args.constrain, args.generate_sections, strict=True):
            if constrain == "none" and generator is not None:
                generators[section] = generator
                continue
            if model is None:
                raise EvalError("mode generate needs a model (or an injected generator)")
            settings = dict(max_new_tokens=args.max_new_tokens, completion_prefix=args.completion_prefix,
                            max_prompt_length=args.max_prompt_length)
            if constrain == "none":
                from napo.eval.generate import GreedyGenerator

                generators[section] = GreedyGenerator(model, tokenizer, **settings)
            else:
                from napo.eval.constrained import ConstrainedGenerator

                generators[section] = ConstrainedGenerator(model, tokenizer, constrain, items=items,
                                                           item_format=meta.get("item_format") or "title", **settings)
    if not rank_candidates:
        scorer = None
    if not rank_catalogue:
        catalogue = None
    output_dir = args.output_dir
    used = [x for x in (scorer, catalogue, *generators.values()) if x is not None]
    first = used[0] if used else None
    info = {
        "name": args.name or (Path(output_dir).name if output_dir is not None else "run"),
        "dataset": meta.get("dataset"),
        "dataset_dir": str(args.dataset_dir),
        "dataset_fingerprint": meta.get("fingerprint"),
        "item_format": meta.get("item_format"),
        "prompt_style": prompt_style(meta),
        "split": args.split,
        "scorer": getattr(first, "name", None) or (type(first).__name__ if first is not None else None),
        "model": model_name or (getattr(getattr(model, "config", None), "name_or_path", None) or None),
    }
    if scorer is not None and hasattr(scorer, "layout"):
        info["rank_settings"] = {"layout": scorer.layout, "length_normalize": scorer.length_normalize}
    if generators:
        info["containment"] = args.containment
        free = generators.get("generate")
        if hasattr(free, "generation_config"):
            info["generation_config"] = free.generation_config.to_diff_dict()
    metrics = evaluate_rows(rows, train_counts(items), output_dir, scorer=scorer, generators=generators,
                            catalogue=catalogue, exclude_history=args.exclude_history,
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


def llm_catalogue(args: EvalArguments, model, tokenizer, items, meta: dict) -> Callable:
    """The LLM's catalogue scorer (`napo.eval.catalogue`): item tokens -> one forward per prompt,
    titles -> the packed scorer in chunks; with ``retrieve_from`` the auxiliary model retrieves
    ``retrieve_top`` items that the LLM re-ranks. Refuses prompts that list candidates."""
    from napo.eval.catalogue import ItemTokenCatalogue, Retrieval, TitleCatalogue, aux_catalogue

    if prompt_style(meta) != "history":
        raise EvalError(f"{args.dataset_dir}: its prompts list the candidates, so ranking the whole catalogue "
                        "would score items the prompt rules out; prepare the data with --prompt-style history")
    if meta.get("item_format") == "token":
        llm = ItemTokenCatalogue(model, tokenizer, items, max_prompt_length=args.max_prompt_length)
    else:
        layout = "packed" if args.scoring == "answer" else args.scoring
        llm = TitleCatalogue(model, tokenizer, items, meta.get("item_format") or "title",
                             chunk_size=args.catalogue_chunk, layout=layout,
                             completion_prefix=args.completion_prefix, max_prompt_length=args.max_prompt_length)
    if args.retrieve_top:
        return Retrieval(aux_catalogue(args.retrieve_from, args.split, meta), llm, args.retrieve_top,
                         exclude_history=args.exclude_history)
    return llm

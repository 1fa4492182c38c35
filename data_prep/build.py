"""The data_prep pipeline: source -> sequences -> split -> candidates -> prompts -> output.

Output (the contract in docs/contracts.md, section 1): a `datasets.DatasetDict` saved to DIR
with splits train/valid/test, `DIR/items.jsonl` and `DIR/meta.json`. Everything is written to a
temporary sibling of DIR and renamed at the end, so a failed run leaves nothing at DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from data_prep import candidates as cand
from data_prep import prompts, render, sequences
from data_prep.errors import DataPrepError
from data_prep.prepared import COLUMNS, FORMAT_VERSION, SPLITS, fingerprint
from data_prep.sources import Examples, SourceData, load_source
from data_prep.writer import (
    SplitWriter,
    items_jsonl,
    templates_json,
    write_dataset_dict_json,
    write_items,
    write_meta,
)

# Arguments that change nothing in the output; they stay out of meta.json and its fingerprint.
_NOT_CONTENT = {"output_dir", "overwrite", "quiet"}
CHUNK_ROWS = 200_000
# Presplit sources whose training rows are one per sequence (its last position), which
# --train-prefixes expands to every position. lastfm-llara is released windowed already, and the
# interaction sources are windowed here under every --split.
PREFIX_DATASETS = ("seq-txt",)
# Threads that build prompt tables while the main thread samples and writes.
WORKERS = max(1, min(4, os.cpu_count() or 1))


def package_version() -> str:
    try:
        return importlib.metadata.version("napo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_output_dir(args: argparse.Namespace) -> Path:
    out = Path(args.output_dir)
    if out.exists() and not args.overwrite:
        raise DataPrepError(f"{out}: output directory exists; choose another --output-dir or pass --overwrite")
    return out


def check_args(args: argparse.Namespace) -> None:
    args.storage = getattr(args, "storage", "ids")
    if args.storage not in ("ids", "text"):
        raise DataPrepError(f"unknown --storage {args.storage!r}; use ids (text rendered on load) or text")
    if args.num_candidates < 2:
        raise DataPrepError(f"--num-candidates {args.num_candidates}: need at least 2 (the target and one negative)")
    if args.min_history < 0 or args.max_history < 1 or args.min_history > args.max_history:
        raise DataPrepError(
            f"--min-history {args.min_history} / --max-history {args.max_history}: need "
            "0 <= min-history <= max-history and max-history >= 1"
        )
    if args.split not in sequences.SPLIT_METHODS:
        raise DataPrepError(f"unknown --split '{args.split}'; choose one of: {', '.join(sequences.SPLIT_METHODS)}")
    if args.candidate_sampler not in cand.SAMPLERS:
        raise DataPrepError(f"unknown --candidate-sampler '{args.candidate_sampler}'; choose one of: {', '.join(cand.SAMPLERS)}")
    if not args.popularity_alpha >= 0:
        raise DataPrepError(f"--popularity-alpha {args.popularity_alpha}: must be >= 0 (0 is uniform)")
    if args.item_format not in prompts.ITEM_FORMATS:
        raise DataPrepError(f"unknown --item-format '{args.item_format}'; choose title or token")
    args.item_placeholders = bool(getattr(args, "item_placeholders", False))
    if args.item_placeholders and args.item_format != "title":
        raise DataPrepError("--item-placeholders goes after titles (--item-format title); item tokens take the "
                            "auxiliary vectors directly (napo-sft --item_embeddings aux)")
    args.train_prefixes = bool(getattr(args, "train_prefixes", False))
    if args.train_prefixes and args.dataset not in PREFIX_DATASETS:
        raise DataPrepError(
            f"--train-prefixes expands the one-row-per-user training lines of --dataset seq-txt; "
            f"--dataset {args.dataset} already makes every position of a training sequence a row "
            "(sliding windows), so drop the flag"
        )
    args.prompt_style = getattr(args, "prompt_style", "candidates")
    if args.prompt_style not in prompts.PROMPT_STYLES:
        raise DataPrepError(f"unknown --prompt-style '{args.prompt_style}'; choose candidates or history")


def make_examples(src: SourceData, args: argparse.Namespace) -> tuple[dict[str, Examples], np.ndarray, dict]:
    """Sequences + split. Returns (examples per split, train_count per catalogue item, counts)."""
    n_items = len(src.items)
    if src.examples is not None:
        # --train-prefixes: every position of a training line is a row (valid/test rows unchanged).
        split_ex = {s: (sequences.prefix_examples if s == "train" and args.train_prefixes
                        else sequences.clip_presplit)(src.examples[s], args.min_history, args.max_history)
                    for s in SPLITS}
        users = int(sum(len(np.unique(e.user_id)) for e in src.examples.values()))
        interactions = None
        counts = src.train_counts
    else:
        user, item, ts = sequences.sort_interactions(src.interactions, drop_duplicates=src.drop_duplicates)
        if len(user) < len(src.interactions):
            src.notes["duplicate_rows_dropped"] = len(src.interactions) - len(user)
        src.interactions = None  # the sorted arrays replace the table: free it before the windows
        n_users = int(user.max()) + 1 if len(user) else 0
        split_ex = sequences.split_windows(user, item, ts, args.split, args.seed,
                                           args.min_history, args.max_history)
        counts = sequences.train_counts(user, item, ts, args.split, args.seed, n_users, n_items)
        users, interactions = n_users, int(len(item))
    info = {"users": users, "items": n_items, "interactions": interactions}
    return split_ex, np.asarray(counts, dtype=np.int64), info


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def chunk_table(ex: Examples, start: int, stop: int, cands: np.ndarray, titles: pa.Array,
                names: pa.Array, templates: list[str], choice: np.ndarray,
                num_candidates: int, storage: str = "text", candidate_names: pa.Array | None = None) -> pa.Table:
    """Arrow table with the contract columns for rows [start, stop) of one split (the id
    columns only with storage 'ids'; the text is then rendered on load, by the same function).

    `cands` [stop - start, C] and `choice` [stop - start] belong to these rows; `titles` are
    what `chosen`/`rejected` hold, `names` what the prompt shows (both indexed by item id).
    """
    m = stop - start
    offs = ex.hist_offsets[start:stop + 1]
    hist = _list_array(offs - offs[0], pa.array(ex.hist_values[offs[0]:offs[-1]], pa.int64()))
    tgt = ex.target[start:stop]
    columns = {
        "user_id": pa.array(ex.user_id[start:stop], pa.int64()),
        "history": hist,
        "target": pa.array(tgt, pa.int64()),
        "candidates": _list_array(np.arange(m + 1) * num_candidates, pa.array(cands.reshape(-1), pa.int64())),
    }
    if storage == "text":
        columns.update(render.text_columns(hist, np.asarray(tgt, np.int64), cands, titles, names, templates, choice,
                                           candidate_names))
    return pa.table(columns)


def build(args: argparse.Namespace, timings: dict | None = None) -> dict:
    """Run the whole pipeline; returns meta (also written to DIR/meta.json).

    `timings`, when given, receives seconds per stage (load, sequences, candidates, prompts,
    write); they stay out of meta.json, which must not change between identical runs.
    """
    timings = {} if timings is None else timings
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - clock
        clock = now

    check_args(args)
    out = check_output_dir(args)
    src = load_source(args)
    if args.domain:
        src.domain = args.domain
    items = src.items.sort_values("item_id").reset_index(drop=True)
    if len(items) < args.num_candidates:
        raise DataPrepError(
            f"{args.dataset}: only {len(items)} items but --num-candidates {args.num_candidates}; "
            "lower --num-candidates or use a larger catalogue"
        )
    tmpl = prompts.load_templates(src.domain, args.template, args.prompt_style)
    lap("load")
    split_ex, counts, info = make_examples(src, args)
    split_info = {}
    for split in SPLITS:
        ex = split_ex[split]
        if len(ex) == 0:
            raise DataPrepError(
                f"{args.dataset}: the {split} split is empty after --min-history {args.min_history}; "
                "use more data or lower --min-history"
            )
        split_info[split] = {"examples": int(len(ex)), "users": int(len(np.unique(ex.user_id))),
                             "mean_history": round(float(np.diff(ex.hist_offsets).mean()), 4)}
    items_sha = hashlib.sha256(items_jsonl(items["item_id"].tolist(), items["title"].tolist(),
                                           counts.tolist())).hexdigest()
    files = {"items.jsonl": {"sha256": items_sha}}
    if args.storage == "ids":
        files[render.TEMPLATES_FILE] = {"sha256": hashlib.sha256(templates_json(tmpl.texts)).hexdigest()}
    meta = make_meta(args, src, info, split_info, tmpl, files=files)
    lap("sequences")

    catalogue = items["item_id"].to_numpy(np.int64)
    titles, names = render.item_strings(catalogue, items["title"].to_numpy(dtype=object), args.item_format)
    names, candidate_names = render.prompt_names(names, args.item_placeholders)

    # One LLaRA sampler for all splits: its cached draws depend only on (target, pool size).
    llara = cand.LlaraSampler(catalogue, args.num_candidates, args.max_history)
    with atomic_dir(out) as tmp:
        for i, split in enumerate(SPLITS):
            ex = split_ex[split]
            if args.candidate_sampler == "llara":
                sampler = llara
            else:
                w = None
                if args.candidate_sampler == "popularity":
                    w = counts.astype(np.float64) ** args.popularity_alpha
                sampler = cand.NumpySampler(catalogue, args.num_candidates, args.max_history,
                                            _seed(args.seed, 1, i), w)
            choice = render.template_choice(args.seed, i, len(tmpl.texts), len(ex))
            writer = SplitWriter(tmp / split, split, args.storage)
            # Candidates are drawn in order here (the samplers carry state); prompt tables are
            # built by worker threads (Arrow compute releases the GIL) and written in order.
            pending: deque = deque()
            with ThreadPoolExecutor(max_workers=WORKERS) as pool, \
                    tqdm(total=len(ex), desc=split, unit=" examples", leave=False,
                         disable=args.quiet) as bar:
                for start in range(0, len(ex), CHUNK_ROWS):
                    stop = min(start + CHUNK_ROWS, len(ex))
                    bar.update(stop - start)
                    c = sampler(ex.hist_offsets[start:stop + 1], ex.hist_values,
                                ex.target[start:stop], desc=split)
                    lap("candidates")
                    pending.append(pool.submit(chunk_table, ex, start, stop, c, titles, names,
                                               tmpl.texts, choice[start:stop], args.num_candidates, args.storage,
                                               candidate_names))
                    _drain(pending, WORKERS, writer, lap)
                _drain(pending, 0, writer, lap)
            writer.close(hashlib.sha256(f"{meta['fingerprint']}/{split}".encode()).hexdigest()[:16])
        write_dataset_dict_json(tmp, list(SPLITS))
        write_side_files(tmp, items, counts, meta, src, args)
        if args.storage == "ids":
            (tmp / render.TEMPLATES_FILE).write_bytes(templates_json(tmpl.texts))
        lap("write")
    return meta


def _drain(pending: deque, limit: int, writer: SplitWriter, lap) -> None:
    """Write finished chunk tables, oldest first, until at most `limit` are in flight."""
    while len(pending) > limit:
        table = pending.popleft().result()
        lap("prompts")
        writer.write(table)
        lap("write")


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(list(parts))


def make_meta(args, src: SourceData, info: dict, split_info: dict, tmpl, files: dict | None = None) -> dict:
    recorded = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_CONTENT}
    # Left out when off, so a directory prepared before the option existed keeps its fingerprint.
    if not recorded.get("item_placeholders"):
        recorded.pop("item_placeholders", None)
    if not recorded.get("train_prefixes"):
        recorded.pop("train_prefixes", None)
    # The default prompt style is left out, so a directory prepared before the option existed
    # keeps its fingerprint (and the auxiliary outputs made for it stay valid).
    if recorded.get("prompt_style") == "candidates":
        del recorded["prompt_style"]
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": args.dataset,
        "domain": src.domain,
        "num_candidates": args.num_candidates,
        "item_format": args.item_format,
        **({"item_placeholders": True} if recorded.get("item_placeholders") else {}),
        **({"prompt_style": args.prompt_style} if "prompt_style" in recorded else {}),
        # Training rows: one per prefix of each training sequence (absent: as the source gives them).
        **({"train_prefixes": True} if recorded.get("train_prefixes") else {}),
        "storage": args.storage,
        "columns": list(COLUMNS),
        "args": recorded,
        "counts": {**info, "splits": split_info},
        "sources": src.checksums,
        "templates": {"file": tmpl.path, "sha256": tmpl.sha256, "count": len(tmpl.texts),
                      "choice": "numpy.random.default_rng([seed, 2, split_index]).integers(count, size=rows)"},
        "notes": src.notes,
        "extra_files": sorted(f"{name}.csv" for name in src.extra_tables),
        "package_version": package_version(),
    }
    if files:  # checksums of side files, checked on load (an edit after writing is caught)
        meta["files"] = files
    meta["fingerprint"] = fingerprint(meta)
    return meta


@contextlib.contextmanager
def atomic_dir(out: Path):
    """Yield a temporary sibling of `out`; on success it replaces `out`, on failure it (and any
    parent folders this created) is removed, so `out` is never left half-written."""
    out = out.absolute()
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ok = False
    try:
        yield tmp
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        ok = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        if not ok:
            for p in created:  # innermost first
                try:
                    p.rmdir()
                except OSError:
                    break


def write_side_files(tmp: Path, items: pd.DataFrame, counts: np.ndarray, meta: dict,
                     src: SourceData, args) -> None:
    """items.jsonl, meta.json, id maps and run.json."""
    write_items(tmp, items["item_id"].tolist(), items["title"].tolist(), counts.tolist())
    for name, table in src.extra_tables.items():
        table.to_csv(tmp / f"{name}.csv", index=False)
    write_meta(tmp, meta)
    try:
        from napo.utils import write_run_info
    except ImportError:  # data_prep works without the napo package
        return
    write_run_info(tmp, dict(vars(args)), args.seed)


def summary_table(meta: dict) -> str:
    """Plain-text summary: users, items, examples and mean history length per split."""
    c = meta["counts"]
    lines = [
        f"{meta['dataset']}: {c['users']:,} users, {c['items']:,} items"
        + (f", {c['interactions']:,} interactions" if c.get("interactions") is not None else ""),
        f"{'split':<6} {'users':>8} {'examples':>10} {'mean history':>13}",
    ]
    for split in SPLITS:
        s = c["splits"][split]
        lines.append(f"{split:<6} {s['users']:>8,} {s['examples']:>10,} {s['mean_history']:>13.2f}")
    return "\n".join(lines)


def print_summary(meta: dict, out: Path, file=None) -> None:
    file = file or sys.stdout
    print(summary_table(meta), file=file)
    print(f"wrote {out} (fingerprint {meta['fingerprint'][:12]})", file=file)

"""--max_examples with --sample_seed: a seeded sample of rows that keeps row-aligned scores aligned."""

import json
from dataclasses import replace

import numpy as np
import torch

from napo.eval.config import EvalArguments
from napo.eval.runner import evaluate, load_split
from napo.eval.scorers import PrecomputedScorer


def _predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_sample_is_seeded_ordered_and_indexed(tiny_dataset_dir):
    full, _, _ = load_split(tiny_dataset_dir, "train")
    a, _, _ = load_split(tiny_dataset_dir, "train", max_examples=7, sample_seed=3)
    b, _, _ = load_split(tiny_dataset_dir, "train", max_examples=7, sample_seed=3)
    first, _, _ = load_split(tiny_dataset_dir, "train", max_examples=7)
    assert a["row_index"] == b["row_index"]
    assert a["row_index"] == sorted(a["row_index"]) and len(set(a["row_index"])) == 7
    assert a["row_index"] != list(range(7)) and first["row_index"] == list(range(7))
    for i, row in zip(a["row_index"], a, strict=True):
        assert row["candidates"] == full[i]["candidates"] and row["target"] == full[i]["target"]


def test_precomputed_scores_follow_the_sampled_rows(tiny_dataset_dir, tmp_path):
    full, _, _ = load_split(tiny_dataset_dir, "test")
    n, c = len(full), len(full[0]["candidates"])
    scores = torch.as_tensor(np.random.default_rng(0).normal(size=(n, c)))
    out_full, out_sample = tmp_path / "full", tmp_path / "sample"
    args = EvalArguments(popularity=True, dataset_dir=str(tiny_dataset_dir), output_dir=str(out_full),
                         no_progress=True)
    evaluate(args, *load_split(tiny_dataset_dir, "test"), scorer=PrecomputedScorer(scores))
    args = replace(args, output_dir=str(out_sample), max_examples=n // 2, sample_seed=1)
    rows, items, meta = load_split(tiny_dataset_dir, "test", args.max_examples, args.sample_seed)
    metrics = evaluate(args, rows, items, meta, scorer=PrecomputedScorer(scores))
    sample_rows, _, _ = load_split(tiny_dataset_dir, "test", max_examples=n // 2, sample_seed=1)
    by_row = _predictions(out_full)
    sampled = _predictions(out_sample)
    assert metrics["num_examples"] == n // 2
    for i, pred in zip(sample_rows["row_index"], sampled, strict=True):
        assert pred == by_row[i]

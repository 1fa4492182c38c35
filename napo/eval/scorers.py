"""The injection seam of the evaluator: anything that scores or answers a batch of examples.

The evaluator (`napo.eval.runner.evaluate`) never asks how scores are made. It hands a scorer a
batch of dataset rows and their row indices in the split, and gets back one score per candidate.
The LLM scorer (`napo.eval.rank.LikelihoodScorer`), the classic recommenders below and the stubs
in the tests all go through the same metrics, predictions and report code.

- CandidateScorer: `scorer(batch, indices) -> scores` float [n, C], higher is better, column c
  aligned with `batch["candidates"][i][c]`.
- AnswerGenerator: `generator(batch, indices) -> answers` list of n strings (free text that
  `napo.eval.matching.match_answer` maps to a candidate).

`batch` is a dict of columns (lists of length n) as in the prepared dataset (contracts.md §1);
`indices` are the rows' positions in the split, which is how row-aligned outputs (auxiliary
candidate scores) are looked up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


class CandidateScorer(Protocol):
    def __call__(self, batch: dict[str, list], indices: Sequence[int]) -> torch.Tensor: ...


class AnswerGenerator(Protocol):
    def __call__(self, batch: dict[str, list], indices: Sequence[int]) -> list[str]: ...


class PopularityScorer:
    """Most-popular baseline: score of a candidate = its training interaction count.

    train_counts: [num_items] (items.jsonl `train_count`, indexed by item id). Ties are broken
    pessimistically by the metrics, so a target tied with others ranks after them.
    """

    name = "Popularity"

    def __init__(self, train_counts: Sequence[int] | torch.Tensor):
        self.train_counts = torch.as_tensor(train_counts, dtype=torch.float64)

    def __call__(self, batch: dict[str, list], indices: Sequence[int]) -> torch.Tensor:
        candidates = torch.as_tensor(batch["candidates"], dtype=torch.long)  # [n, C]
        return self.train_counts[candidates]


class PrecomputedScorer:
    """Scores computed elsewhere for every row of the split, e.g. an auxiliary SASRec's raw
    candidate logits (contracts.md §2): scores [N_split, C], row i = row i of the split."""

    def __init__(self, scores: torch.Tensor | Any, name: str = "precomputed"):
        self.scores = torch.as_tensor(scores)
        if self.scores.dim() != 2:
            raise ValueError(f"precomputed scores must be [N, C], got shape {tuple(self.scores.shape)}")
        self.name = name

    def __call__(self, batch: dict[str, list], indices: Sequence[int]) -> torch.Tensor:
        # Rows cut from a split carry their position in the whole split (runner.load_split).
        idx = torch.as_tensor(list(batch.get("row_index", indices)), dtype=torch.long)
        if len(idx) and int(idx.max()) >= self.scores.shape[0]:
            raise ValueError(
                f"row {int(idx.max())} asked for but the precomputed scores hold "
                f"{self.scores.shape[0]} rows; were they made for this split?"
            )
        out = self.scores[idx]
        width = len(batch["candidates"][0]) if len(idx) else out.shape[1]
        if out.shape[1] != width:
            raise ValueError(
                f"precomputed scores have {out.shape[1]} columns but the examples have {width} candidates"
            )
        return out


def popularity_scorer(items) -> PopularityScorer:
    """Popularity from a prepared dataset's items table (item_id, train_count)."""
    from data_prep.prepared import train_counts

    return PopularityScorer(train_counts(items))


def aux_scorer(aux_dir, split: str, meta: dict) -> PrecomputedScorer:
    """The auxiliary recommender's raw candidate logits (recipes/recsys.py output, contracts.md §2)
    as a scorer for `split`; the fingerprint and row count are checked by `load_aux`."""
    import json
    from pathlib import Path

    from napo.auxiliary import load_aux

    _, candidate_scores = load_aux(aux_dir, split, meta)
    model = json.loads((Path(aux_dir) / "meta.json").read_text()).get("model") or "aux"
    return PrecomputedScorer(candidate_scores, name=str(model))

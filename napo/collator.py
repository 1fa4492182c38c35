"""Listwise preference batches: one prompt, the chosen completion and K rejected ones.

A prepared split (docs/contracts.md, section 1) is tokenized once by
:func:`tokenize_preference_dataset` into these columns (R = number of `rejected` titles, 19 in the
20-candidate protocol; slot 0 is always the chosen completion):

    prompt_ids       list[int]             the prompt, shared by every completion
    completion_ids   list[list[int]] (1+R) chosen, then the rejected titles in candidate order
    item_ids         list[int] (1+R)       item id of each completion (target, then negatives)
    example_idx      int                   row index in the split (joins auxiliary outputs)

Optional columns: ``aux_user_vector`` [d] and ``aux_scores`` [1+R] (auxiliary recommender outputs,
added by :func:`add_aux_columns`, scores in completion order), ``ref_logps`` [1+R] (precomputed
reference log-probs).

:class:`ListwiseCollator` draws K of the R negatives per example (fixed per example, or anew
each epoch), and turns the rows into model inputs with ``napo.scoring.collate_listwise`` plus the
per-example side information the trainer needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napo.scoring import collate_listwise, tokenize_listwise

AUX_VECTOR = "aux_user_vector"
AUX_SCORES = "aux_scores"
REF_LOGPS = "ref_logps"
TOKENIZED_COLUMNS = ("prompt_ids", "completion_ids", "item_ids", "example_idx")


def completion_item_ids(target: int, candidates: Sequence[int]) -> list[int]:
    """Item ids in completion order: the target, then the other candidates in candidate order.

    The `rejected` titles of a prepared row are the non-target candidates in candidate order, so
    slot m of `completion_ids` is the item `completion_item_ids(...)[m]`.
    """
    return [int(target)] + [int(c) for c in candidates if int(c) != int(target)]


def tokenize_preference_dataset(dataset, tokenizer, *, max_prompt_length: int | None = None,
                                max_completion_length: int | None = None, num_proc: int | None = None,
                                desc: str = "Tokenizing"):
    """Add the tokenized columns (see the module docstring) to a prepared split; idempotent.

    The text columns are kept (evaluation and logging may want them); ``example_idx`` is the row
    index *before* any later filtering, so auxiliary outputs stay joinable.
    """
    if all(c in dataset.column_names for c in TOKENIZED_COLUMNS):
        return dataset
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"preference dataset lacks column(s) {missing}; it needs prompt, chosen and rejected "
            "(a prepared split, see docs/contracts.md)"
        )
    has_ids = "target" in dataset.column_names and "candidates" in dataset.column_names

    def tokenize(batch, indices):
        completions = [[c, *r] for c, r in zip(batch["chosen"], batch["rejected"], strict=True)]
        rows = tokenize_listwise(
            tokenizer, batch["prompt"], completions,
            max_prompt_length=max_prompt_length, max_completion_length=max_completion_length,
        )
        if has_ids:
            item_ids = [completion_item_ids(t, c) for t, c in zip(batch["target"], batch["candidates"], strict=True)]
        else:  # no ids: items are unknown, so sharing cannot exclude collisions (-1 = unknown)
            item_ids = [[-1] * len(c) for c in completions]
        for i, (ids, comps) in enumerate(zip(item_ids, completions, strict=True)):
            if len(ids) != len(comps):
                raise ValueError(
                    f"row {indices[i]}: {len(comps) - 1} rejected titles but {len(ids) - 1} non-target "
                    "candidates; the prepared split is inconsistent, rebuild it with data_prep"
                )
        return {
            "prompt_ids": [r["prompt_ids"] for r in rows],
            "completion_ids": [r["completion_ids"] for r in rows],
            "item_ids": item_ids,
            "example_idx": list(indices),
        }

    kwargs = {"num_proc": num_proc, "desc": desc} if hasattr(dataset, "_fingerprint") else {}
    return dataset.map(tokenize, batched=True, with_indices=True, **kwargs)


def add_aux_columns(dataset, user_vectors: torch.Tensor, candidate_scores: torch.Tensor):
    """Join auxiliary recommender outputs (``napo.auxiliary.load_aux``) to a prepared split.

    Args:
        user_vectors: [N, d] float, row i = row i of the split.
        candidate_scores: [N, C] float, aligned with the row's `candidates`.

    Adds ``aux_user_vector`` [d] and ``aux_scores`` [1+R] (reordered to completion order: the
    target's score first, then the negatives' in candidate order).
    """
    n = len(dataset)
    if user_vectors.shape[0] != n or candidate_scores.shape[0] != n:
        raise ValueError(
            f"auxiliary outputs have {user_vectors.shape[0]} / {candidate_scores.shape[0]} rows but the "
            f"split has {n}; rebuild them with recipes/recsys.py on this prepared dataset"
        )
    vectors = user_vectors.float().numpy()
    scores = candidate_scores.float().numpy()

    def join(batch, indices):
        out_vec, out_scores = [], []
        for i, target, cands in zip(indices, batch["target"], batch["candidates"], strict=True):
            cands = [int(c) for c in cands]
            order = [cands.index(int(target))] + [j for j, c in enumerate(cands) if c != int(target)]
            out_vec.append(vectors[i].tolist())
            out_scores.append(scores[i, order].tolist())
        return {AUX_VECTOR: out_vec, AUX_SCORES: out_scores}

    return dataset.map(join, batched=True, with_indices=True, desc="Joining auxiliary outputs")


def draw_negatives(num_rejected: int, k: int, *, seed: int, example_idx: int, epoch: int | None = None) -> list[int]:
    """Indices (0-based, among the R rejected) of the K negatives of one example, sorted.

    Deterministic in (seed, example_idx) - and epoch when given - so every process and every
    run draws the same negatives whatever the batch order. All R when K >= R.
    """
    if k >= num_rejected:
        return list(range(num_rejected))
    key = [int(seed), int(example_idx)] if epoch is None else [int(seed), int(epoch), int(example_idx)]
    rng = np.random.default_rng(key)
    return sorted(int(j) for j in rng.choice(num_rejected, size=k, replace=False))


@dataclass
class ListwiseCollator:
    """Rows of a tokenized preference split -> one listwise batch.

    Output keys (B examples, M = 1 + K completion slots, slot 0 = chosen):
        the model inputs of ``napo.scoring.collate_listwise`` (``layout``, ``input_ids``, ...,
        ``completion_mask`` [B, M] bool);
        ``item_ids`` [B, M] long (-1 on empty slots); ``example_idx`` [B] long;
        ``aux_user_vector`` [B, d] and ``aux_scores`` [B, M] float when the rows have them;
        ``ref_logps`` [B, M] float when precomputed;
        ``listwise`` (only with ``defer_collation``, for ``share_mode: rescore``): per example the
        token ids of the selected completions, its prompt text and their titles; the model inputs
        are then NOT built here (only ``completion_mask``), because the trainer adds the borrowed
        completions first and collates once.

    ``num_negatives=None`` keeps every negative (used to precompute reference log-probs).
    ``epoch`` is set by the trainer at each epoch start when ``resample`` is on.
    """

    pad_token_id: int
    num_negatives: int | None = 3
    layout: str = "packed"
    negative_sampling: str = "fixed"
    seed: int = 0
    epoch: int = 0
    defer_collation: bool = False

    def select(self, row: dict) -> list[int]:
        """Completion slots of one row: [0] + 1 + the drawn negatives."""
        num_rejected = len(row["completion_ids"]) - 1
        if self.num_negatives is None:
            return list(range(num_rejected + 1))
        epoch = self.epoch if self.negative_sampling == "resample" else None
        picks = draw_negatives(num_rejected, self.num_negatives, seed=self.seed,
                               example_idx=row["example_idx"], epoch=epoch)
        return [0] + [1 + j for j in picks]

    def __call__(self, rows: list[dict]) -> dict:
        slots = [self.select(row) for row in rows]
        listwise = [
            {"prompt_ids": list(row["prompt_ids"]), "completion_ids": [list(row["completion_ids"][s]) for s in sel]}
            for row, sel in zip(rows, slots, strict=True)
        ]
        if self.defer_collation:
            num_slots = max(len(sel) for sel in slots)
            batch = {"completion_mask": torch.tensor([[m < len(sel) for m in range(num_slots)] for sel in slots])}
            for example, row, sel in zip(listwise, rows, slots, strict=True):
                titles = [row["chosen"], *row["rejected"]]
                example.update(prompt=row["prompt"], titles=[titles[s] for s in sel])
            batch["listwise"] = listwise
        else:
            batch = collate_listwise(listwise, self.pad_token_id, self.layout)
            num_slots = batch["completion_mask"].shape[1]

        def per_slot(values, fill, dtype):
            out = torch.full((len(rows), num_slots), fill, dtype=dtype)
            for b, (vals, sel) in enumerate(zip(values, slots, strict=True)):
                out[b, : len(sel)] = torch.tensor([vals[s] for s in sel], dtype=dtype)
            return out

        batch["item_ids"] = per_slot([row["item_ids"] for row in rows], -1, torch.long)
        batch["example_idx"] = torch.tensor([int(row["example_idx"]) for row in rows], dtype=torch.long)
        if AUX_VECTOR in rows[0]:
            batch[AUX_VECTOR] = torch.tensor([row[AUX_VECTOR] for row in rows], dtype=torch.float32)
        if AUX_SCORES in rows[0]:
            batch[AUX_SCORES] = per_slot([row[AUX_SCORES] for row in rows], 0.0, torch.float32)
        if REF_LOGPS in rows[0]:
            batch[REF_LOGPS] = per_slot([row[REF_LOGPS] for row in rows], 0.0, torch.float32)
        return batch

"""Listwise preference batches: one prompt, the chosen completion and K rejected ones.

A prepared split (docs/contracts.md, section 1), or any preference dataset in TRL's formats, is
tokenized once by :func:`tokenize_preference_dataset`. Its text is first brought to one shape by
:func:`listwise_text` (the one place that reads TRL's formats): ``rejected`` as ONE string (TRL's
pairs) is one negative, a list of strings is K of them, conversational rows (role/content
messages) are rendered with the tokenizer's chat template by TRL's ``apply_chat_template``, and
rows without a ``prompt`` get TRL's ``extract_prompt``. The tokenized columns (R = number of `rejected` titles, 19 in the
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

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napo.data import TrainingDataError, cell_kind, check_chat_template
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


def _chat_completions(tokenizer, prompt: list, chosen: list, rejected: list[list]) -> tuple[str, str, list[str]]:
    """(prompt, chosen, rejected texts) of one conversational row, rendered by TRL's
    ``apply_chat_template`` once per negative. The shared prompt is the common prefix of the
    per-negative prompts (identical for ordinary templates); each completion is the rest of its text."""
    from trl.data_utils import apply_chat_template

    rendered = [apply_chat_template({"prompt": prompt, "chosen": chosen, "rejected": r}, tokenizer) for r in rejected]
    prompts = [r["prompt"] for r in rendered]
    shared = os.path.commonprefix(prompts)
    chosen_text = (prompts[0] + rendered[0]["chosen"])[len(shared):]
    return shared, chosen_text, [(p + r["rejected"])[len(shared):] for p, r in zip(prompts, rendered, strict=True)]


def listwise_text(dataset, tokenizer=None, *, desc: str = "Preference rows"):
    """A preference dataset with ``prompt`` and ``chosen`` strings and ``rejected`` a list of strings.

    - ``rejected`` one string (TRL's pairs): a one-element list, so the row trains ONE negative
      (iterated as a string it would be one negative per character: " Heat" -> 5 completions);
    - ``rejected`` a list of strings (prepared splits): unchanged (no copy is made);
    - conversational rows (``prompt``, ``chosen`` and each negative lists of role/content messages):
      rendered with ``tokenizer``'s chat template as TRL does (``trl.data_utils.apply_chat_template``:
      the prompt with the generation prompt, each completion the rest of its conversation);
      ``rejected`` may be one conversation or a list of them;
    - no ``prompt`` column (TRL's implicit prompt): TRL's ``maybe_extract_prompt`` first.

    Anything else (missing columns, other types, chat rows without a chat template) raises
    ``TrainingDataError`` with one line.
    """
    columns = set(dataset.column_names)
    if "prompt" not in columns and {"chosen", "rejected"} <= columns and len(dataset):
        from trl.data_utils import maybe_extract_prompt

        if cell_kind(dataset[0]["rejected"]) in ("text", "messages"):  # TRL's pairs with the prompt inside
            dataset = dataset.map(maybe_extract_prompt, desc=f"{desc}: extracting the shared prompt")
            columns = set(dataset.column_names)
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in columns]
    if missing:
        raise TrainingDataError(
            f"preference dataset lacks column(s) {missing} (has {', '.join(dataset.column_names)}): it needs "
            "prompt, chosen and rejected (a string, a list of strings, or chat messages)"
        )
    if len(dataset) == 0:
        return dataset
    first = dataset[0]
    kinds = (cell_kind(first["prompt"]), cell_kind(first["chosen"]), cell_kind(first["rejected"]))
    if kinds == ("text", "text", "texts"):
        return dataset
    import datasets

    features = dataset.features.copy()
    for column in ("prompt", "chosen"):
        features[column] = datasets.Value("string")
    features["rejected"] = datasets.Sequence(datasets.Value("string"))  # a List in datasets >= 4
    if kinds == ("text", "text", "text"):
        return dataset.map(lambda batch: {"rejected": [[r] for r in batch["rejected"]]}, batched=True,
                           features=features, desc=f"{desc}: one negative per row (string `rejected`)")
    if kinds[:2] == ("messages", "messages") and kinds[2] in ("messages", "conversations"):
        check_chat_template(tokenizer, "preference rows")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        one = kinds[2] == "messages"
        # A template that writes BOS itself, for a tokenizer that adds it too, would give two BOS.
        bos = getattr(tokenizer, "bos_token", None)
        adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]

        def render(batch):
            out = {"prompt": [], "chosen": [], "rejected": []}
            for p, c, r in zip(batch["prompt"], batch["chosen"], batch["rejected"], strict=True):
                prompt, chosen, rejected = _chat_completions(tokenizer, p, c, [r] if one else r)
                if adds_bos and prompt.startswith(bos):
                    prompt = prompt[len(bos):]
                out["prompt"].append(prompt)
                out["chosen"].append(chosen)
                out["rejected"].append(rejected)
            return out

        return dataset.map(render, batched=True, features=features, desc=f"{desc}: applying the chat template")
    names = {"text": "a string", "texts": "a list of strings", "messages": "chat messages",
             "conversations": "a list of conversations", "other": "another type"}
    raise TrainingDataError(
        f"preference rows hold prompt {names[kinds[0]]}, chosen {names[kinds[1]]}, rejected {names[kinds[2]]}: give "
        "prompt and chosen as strings and rejected as a string or a list of strings, or all three as chat messages"
    )


def tokenize_preference_dataset(dataset, tokenizer, *, max_prompt_length: int | None = None,
                                max_completion_length: int | None = None, num_proc: int | None = None,
                                desc: str = "Tokenizing"):
    """Add the tokenized columns (see the module docstring) to a preference split; idempotent.

    The text is first made listwise by :func:`listwise_text` (TRL's pairs: one negative per row;
    chat rows: the tokenizer's chat template). The text columns are kept (evaluation and logging
    may want them); ``example_idx`` is the row index *before* any later filtering, so auxiliary
    outputs stay joinable.
    """
    if all(c in dataset.column_names for c in TOKENIZED_COLUMNS):
        return dataset
    dataset = listwise_text(dataset, tokenizer)
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


def rejected_counts(dataset) -> tuple[int, int] | None:
    """(fewest, most) rejected completions per row of a tokenized split, or None (no rows / not tokenized)."""
    if dataset is None or not hasattr(dataset, "column_names") or "item_ids" not in dataset.column_names \
            or len(dataset) == 0:
        return None
    import pyarrow.compute as pc

    lengths = pc.list_value_length(dataset.with_format("arrow")["item_ids"])  # the selected rows only
    return int(pc.min(lengths).as_py()) - 1, int(pc.max(lengths).as_py()) - 1


def check_num_negatives(dataset, num_negatives: int | None, name: str = "train") -> None:
    """Refuse a K that no row can give: ``num_negatives`` above the most rejected completions of any
    row of a tokenized split (19 in the 20-candidate protocol, 1 for TRL's pairs). Rows with fewer
    than K (ragged listwise data) train all of theirs."""
    counts = rejected_counts(dataset)
    if num_negatives is None or counts is None:
        return
    most = counts[1]
    if num_negatives > most:
        hint = " (TRL's pairs have one: set num_negatives 1, e.g. loss_type dpo)" if most == 1 else ""
        raise TrainingDataError(
            f"num_negatives {num_negatives} > {most}: the rows of the {name} dataset have at most {most} rejected "
            f"completion(s) to draw from; set num_negatives to at most {most}{hint}"
        )


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

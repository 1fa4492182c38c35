"""Prepared splits -> the datasets the trainers read (SFT prompt/completion, listwise preferences).

The completion is the target title (or item token) joined to the prompt verbatim: training text
= ``prompt + chosen + EOS``. This is the same join as ``napo.scoring.tokenize_listwise`` (the
preference stage and evaluation), so SFT, DPO/S-DPO/NAPO and ranking all see the same tokens.
TRL's SFTTrainer appends the EOS token to each completion and, for a prompt/completion dataset,
puts the loss on the completion tokens (title + EOS) only.
"""

from __future__ import annotations

from typing import Any

from data_prep.errors import UserError
from data_prep.prompts import item_token


class TrainingDataError(UserError):
    """A one-line, user-facing mismatch between the dataset and the tokenizer."""


def to_prompt_completion(split: Any, max_samples: int | None = None) -> Any:
    """A prepared split reduced to TRL's prompt/completion format.

    Args:
        split: ``datasets.Dataset`` with ``prompt`` and ``chosen`` (docs/contracts.md).
        max_samples: keep only the first rows (row order is the contract, so this is
            deterministic); None keeps all.
    Returns:
        ``datasets.Dataset`` with exactly two string columns, ``prompt`` and ``completion``.
    """
    missing = [c for c in ("prompt", "chosen") if c not in split.column_names]
    if missing:
        raise TrainingDataError(
            f"the split lacks column(s) {missing}: pass a prepared dataset directory (see docs/contracts.md)"
        )
    if max_samples is not None:
        split = split.select(range(min(max_samples, len(split))))
    extra = [c for c in split.column_names if c not in ("prompt", "chosen")]
    return split.remove_columns(extra).rename_column("chosen", "completion")


def check_item_tokens(tokenizer: Any, meta: dict, items: Any) -> None:
    """Fail clearly when an item-token dataset meets a tokenizer without those tokens.

    Without them every ``<item_N>`` would be split into several sub-word pieces and the model
    would learn spelling instead of items.
    """
    if meta.get("item_format") != "token" or len(items) == 0:
        return
    vocab = tokenizer.get_vocab()
    missing = [item_token(i) for i in items["item_id"] if item_token(i) not in vocab]
    if missing:
        raise TrainingDataError(
            f"the dataset writes items as tokens (item_format 'token') but the tokenizer lacks "
            f"{len(missing)} of them (e.g. {missing[0]}): build the model with "
            "`python -m napo.models.tiny --item-tokens` or use a title-format dataset"
        )


def preference_splits(dataset, meta: dict, data_args, aux_dir: str | None, *, with_eval: bool) -> dict:
    """{"train": split[, "eval": split]} of a prepared dataset for NAPOTrainer.

    The auxiliary recommender's user vectors and candidate scores (``aux_dir``) are joined by row
    index, so before any truncation to ``max_train_samples`` / ``max_eval_samples``.
    """
    from napo.auxiliary import load_aux
    from napo.collator import add_aux_columns

    roles = {"train": (data_args.train_split, data_args.max_train_samples)}
    if with_eval:
        roles["eval"] = (data_args.eval_split, data_args.max_eval_samples)
    out = {}
    for role, (split, limit) in roles.items():
        if split not in dataset:
            raise TrainingDataError(f"{data_args.dataset_dir}: no split {split!r} (has {', '.join(dataset)})")
        rows = dataset[split]
        if aux_dir:
            rows = add_aux_columns(rows, *load_aux(aux_dir, split, meta, num_rows=len(rows)))
        out[role] = rows.select(range(min(limit, len(rows)))) if limit is not None else rows
    return out

"""Datasets -> what the trainers read (SFT prompt/completion, listwise preferences).

Two sources (``napo.config.DatasetArguments``): a prepared directory (``dataset_dir``, the
contract of docs/contracts.md: item ids, ``meta.json``) or any dataset ``datasets.load_dataset``
reads (``dataset_name``: a Hub id or a local path) in TRL's standard formats. TRL's preference rows
have ``rejected`` as ONE string; ours have a list of titles. :func:`as_listwise` turns the first
into the second (a one-element list), so a string is never iterated character by character.

The completion is the target title (or item token) joined to the prompt verbatim: training text
= ``prompt + chosen + EOS``. This is the same join as ``napo.scoring.tokenize_listwise`` (the
preference stage and evaluation), so SFT, DPO/S-DPO/NAPO and ranking all see the same tokens.
TRL's SFTTrainer appends the EOS token to each completion and, for a prompt/completion dataset,
puts the loss on the completion tokens (title + EOS) only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.errors import UserError
from data_prep.prompts import item_token


class TrainingDataError(UserError):
    """A one-line, user-facing mismatch between the dataset and the tokenizer."""


ID_COLUMNS = ("target", "candidates")  # what makes a row's items known (sharing, margin, aux join)


def load_training_data(data_args: Any) -> tuple[Any, Any, dict]:
    """(DatasetDict, items DataFrame, meta) of ``data_args.dataset_dir`` or ``data_args.dataset_name``.

    A prepared directory goes through ``data_prep.prepared.load_prepared`` (checked against its
    ``meta.json``). A ``dataset_name`` is read with ``datasets.load_dataset`` (a directory written
    by ``save_to_disk`` with ``load_from_disk``); its meta says only where it came from, and its
    items table is empty (such data has no item ids).
    """
    import pandas as pd

    if data_args.dataset_dir is not None:
        from data_prep.prepared import load_prepared

        return load_prepared(data_args.dataset_dir)
    import datasets

    name = data_args.dataset_name
    try:
        if (Path(name) / "dataset_dict.json").is_file() or (Path(name) / "dataset_info.json").is_file():
            dataset = datasets.load_from_disk(name)
        else:
            dataset = datasets.load_dataset(name, data_args.dataset_config, revision=data_args.dataset_revision)
    except (OSError, ValueError, FileNotFoundError, ConnectionError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise TrainingDataError(
            f"cannot load dataset_name {name!r}: {first} (check the Hub id or path, and network access "
            "for Hub ids)"
        ) from err
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({data_args.train_split: dataset})
    meta = {"dataset": name, "item_format": None, "fingerprint": None, "num_candidates": None}
    items = pd.DataFrame({"item_id": [], "title": []})
    side = _side_file(name, "meta.json", data_args.dataset_revision)
    if side is not None:  # a prepared dataset published by data_prep.push: its meta and items
        meta = json.loads(Path(side).read_text())
        items_file = _side_file(name, "items.jsonl", data_args.dataset_revision)
        if items_file is not None:
            items = pd.read_json(items_file, lines=True)
    meta.update({"source": "dataset_name", "config": data_args.dataset_config})
    return dataset, items, meta


def _side_file(name: str, filename: str, revision: str | None) -> str | None:
    """``filename`` beside the data of a local path or a Hub dataset repo, or None."""
    if Path(name).exists():
        path = Path(name) / filename
        return str(path) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(name, filename, repo_type="dataset", revision=revision)
    except Exception:  # absent file, offline, not a repo: a dataset without side files
        return None


def _is_text(feature: Any) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _string_column(split: Any, column: str) -> bool:
    """True when ``column`` holds plain strings (not lists, not chat messages)."""
    return _is_text(split.features.get(column))


def _string_list_column(split: Any, column: str) -> bool:
    """True when ``column`` holds lists of plain strings."""
    return _is_text(getattr(split.features.get(column), "feature", None))


def _conversational_hint(split: Any, columns: tuple[str, ...]) -> str | None:
    """One line when ``columns`` hold chat messages instead of text, else None."""
    for column in columns:
        feature = split.features.get(column)
        inner = getattr(feature, "feature", feature)
        if isinstance(inner, dict) and {"role", "content"} <= set(inner):
            return (
                f"column {column!r} holds chat messages (role/content), which this toolkit does not "
                "template: render each row to plain-text prompt/chosen/rejected first (e.g. with "
                "tokenizer.apply_chat_template) or use a prepared dataset_dir"
            )
    return None


def to_prompt_completion(split: Any, max_samples: int | None = None, keep: tuple[str, ...] = ()) -> Any:
    """A split reduced to TRL's prompt/completion format (for SFT).

    Args:
        split: ``datasets.Dataset`` with string ``prompt`` and ``completion`` (TRL's format) or
            ``prompt`` and ``chosen`` (a prepared split, docs/contracts.md, or TRL preference rows).
        max_samples: keep only the first rows (row order is the contract, so this is
            deterministic); None keeps all.
        keep: other columns to keep (LLaRA's placeholders need ``history`` and ``candidates``).
    Returns:
        ``datasets.Dataset`` with the string columns ``prompt`` and ``completion`` (and ``keep``).
    """
    answer = "completion" if "completion" in split.column_names else "chosen"
    hint = _conversational_hint(split, ("prompt", answer, "messages"))
    if hint is not None:
        raise TrainingDataError(hint)
    missing = [c for c in ("prompt", answer) if c not in split.column_names]
    if missing:
        raise TrainingDataError(
            f"the split lacks column(s) {missing} (has {', '.join(split.column_names)}): SFT needs "
            "prompt and completion (or prompt and chosen) strings, or a prepared dataset_dir"
        )
    not_text = [c for c in ("prompt", answer) if not _string_column(split, c)]
    if not_text:
        raise TrainingDataError(f"column(s) {not_text} must hold strings for SFT (got {split.features[not_text[0]]})")
    if max_samples is not None:
        split = split.select(range(min(max_samples, len(split))))
    extra = [c for c in split.column_names if c not in ("prompt", answer, *keep)]
    split = split.remove_columns(extra)
    return split.rename_column(answer, "completion") if answer != "completion" else split


def as_listwise(split: Any) -> Any:
    """A preference split with ``rejected`` as a list of strings (one entry per negative).

    TRL's standard preference format has ``rejected`` as one string: it becomes a one-element
    list, so the row trains exactly one negative. (Left as a string, the tokenizer loop would see
    one negative per CHARACTER: "Heat" -> "H", "e", "a", "t".) A list of strings is returned as
    is; chat messages, missing columns or other types end with one line.
    """
    hint = _conversational_hint(split, ("prompt", "chosen", "rejected"))
    if hint is not None:
        raise TrainingDataError(hint)
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in split.column_names]
    if missing:
        raise TrainingDataError(
            f"the preference split lacks column(s) {missing} (has {', '.join(split.column_names)}): it "
            "needs prompt, chosen and rejected (a string, or a list of strings)"
        )
    not_text = [c for c in ("prompt", "chosen") if not _string_column(split, c)]
    if not_text:
        raise TrainingDataError(f"column(s) {not_text} must hold strings (got {split.features[not_text[0]]})")
    if _string_list_column(split, "rejected"):
        return split
    if not _string_column(split, "rejected"):
        raise TrainingDataError(
            f"column 'rejected' must hold a string or a list of strings (got {split.features['rejected']})"
        )
    from datasets import Sequence, Value  # Sequence: datasets 3.x; a List in datasets >= 4

    features = split.features.copy()
    features["rejected"] = Sequence(Value("string"))
    return split.map(lambda row: {"rejected": [row["rejected"]]}, features=features,
                     desc="One negative per row (string `rejected`)")


def has_item_ids(split: Any) -> bool:
    """True when rows name their items (``target``, ``candidates``): a prepared split."""
    return all(c in split.column_names for c in ID_COLUMNS)


def check_objective_data(training_args: Any, split: Any, source: str) -> None:
    """Refuse settings that need item ids (sharing, the dynamic margin, aux outputs) on data
    without them, rather than silently training something else."""
    if has_item_ids(split):
        return
    needs = [name for name, on in (
        ("share_negatives", getattr(training_args, "share_negatives", False)),
        ("margin_alpha > 0", (getattr(training_args, "margin_alpha", 0.0) or 0.0) > 0),
        ("aux_dir", bool(getattr(training_args, "aux_dir", None))),
    ) if on]
    if needs:
        raise TrainingDataError(
            f"{source} has no item ids (columns target, candidates), which {', '.join(needs)} need: "
            "set share_negatives false, margin_alpha 0 and no aux_dir (e.g. loss_type dpo or sdpo), "
            "or train on a prepared dataset_dir"
        )


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
    """{"train": split[, "eval": split]} for NAPOTrainer, ``rejected`` always a list (:func:`as_listwise`).

    The auxiliary recommender's user vectors and candidate scores (``aux_dir``) are joined by row
    index: the truncation to ``max_train_samples`` / ``max_eval_samples`` keeps the first rows, so
    row i takes the outputs of row i of the whole split (only the kept rows are joined).
    """
    from napo.auxiliary import load_aux
    from napo.collator import add_aux_columns

    source = getattr(data_args, "source", data_args.dataset_dir)
    roles = {"train": (data_args.train_split, data_args.max_train_samples)}
    if with_eval:
        roles["eval"] = (data_args.eval_split, data_args.max_eval_samples)
    out = {}
    for role, (split, limit) in roles.items():
        if split not in dataset:
            fix = "set train_split" if role == "train" else "set eval_split, or eval_strategy no"
            raise TrainingDataError(f"{source}: no split {split!r} (has {', '.join(dataset)}); {fix}")
        rows = as_listwise(dataset[split])
        num_rows = len(rows)
        if limit is not None:  # the first rows: the join below is by row index, so it is unchanged
            rows = rows.select(range(min(limit, num_rows)))
        if aux_dir:
            user_vectors, candidate_scores = load_aux(aux_dir, split, meta, num_rows=num_rows)
            rows = add_aux_columns(rows, user_vectors[:len(rows)], candidate_scores[:len(rows)])
        out[role] = rows
    return out

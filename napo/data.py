"""Datasets -> what the trainers read (SFT prompt/completion, listwise preferences).

Two sources (``napo.config.DatasetArguments``): a prepared directory (``dataset_dir``, the
contract of docs/contracts.md: item ids, ``meta.json``) or any dataset ``datasets.load_dataset``
reads (``dataset_name``: a Hub id or a local path) in TRL's standard formats. Preference rows are
read by the trainer's own tokenization (``napo.collator.listwise_text``: TRL's pairs train one
negative per row, chat rows get the tokenizer's chat template), so the scripts and a Python user
of ``NAPOTrainer`` see the same thing; SFT rows go to TRL's SFTTrainer, which templates chat rows.

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


def cell_kind(value: Any) -> str:
    """What one cell of a text column holds: 'text', 'texts' (a list of strings), 'messages' (one
    conversation of role/content dicts), 'conversations' (a list of them) or 'other'."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        first = value[0] if value else ""
        if isinstance(first, str):
            return "texts"
        if isinstance(first, dict) and "role" in first:
            return "messages"
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], dict) and "role" in first[0]:
            return "conversations"
    return "other"


def check_chat_template(tokenizer: Any, what: str = "rows") -> None:
    """Conversational rows need a chat template to become text: one line when the tokenizer has none."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TrainingDataError(
            f"the {what} are conversational (role/content messages) but the tokenizer has no chat template: "
            "use a chat model's tokenizer, set tokenizer.chat_template, or give plain-text rows"
        )


def to_prompt_completion(split: Any, max_samples: int | None = None, tokenizer: Any = None,
                         extra: tuple[str, ...] = ()) -> Any:
    """A split reduced to one of TRL's SFT formats.

    Args:
        split: ``datasets.Dataset`` with ``prompt`` and ``completion`` (TRL's format) or ``prompt``
            and ``chosen`` (a prepared split, docs/contracts.md, or TRL preference rows), both
            strings or both chat messages; or a ``messages`` column (TRL's conversational
            language-modeling format).
        max_samples: keep only the first rows (row order is the contract, so this is
            deterministic); None keeps all.
        tokenizer: checked for a chat template when the rows are conversational (TRL's
            SFTTrainer renders them with it).
        extra: other columns to keep (LLaRA's placeholders need ``history`` and ``candidates``).
    Returns:
        ``datasets.Dataset`` with exactly ``prompt`` and ``completion`` (strings or messages), or
        exactly ``messages``; plus the ``extra`` columns.
    """
    if "messages" in split.column_names and "prompt" not in split.column_names:
        keep = ["messages"]
        if len(split) and cell_kind(split[0]["messages"]) != "messages":
            raise TrainingDataError("column 'messages' must hold chat messages (lists of role/content dicts)")
    else:
        answer = "completion" if "completion" in split.column_names else "chosen"
        missing = [c for c in ("prompt", answer) if c not in split.column_names]
        if missing:
            raise TrainingDataError(
                f"the split lacks column(s) {missing} (has {', '.join(split.column_names)}): SFT needs "
                "prompt and completion (or prompt and chosen), or messages, or a prepared dataset_dir"
            )
        keep = ["prompt", answer]
        if len(split):
            kinds = {c: cell_kind(split[0][c]) for c in keep}
            if set(kinds.values()) not in ({"text"}, {"messages"}):
                raise TrainingDataError(
                    f"column(s) {keep} must both hold strings or both chat messages for SFT (got "
                    f"{', '.join(f'{c}: {k}' for c, k in kinds.items())})"
                )
    if len(split) and any(cell_kind(split[0][c]) == "messages" for c in keep):
        check_chat_template(tokenizer, "SFT rows")
    if max_samples is not None:
        split = split.select(range(min(max_samples, len(split))))
    split = split.remove_columns([c for c in split.column_names if c not in (*keep, *extra)])
    return split.rename_column("chosen", "completion") if "chosen" in keep else split


def has_item_ids(split: Any) -> bool:
    """True when rows name their items (``target``, ``candidates``): a prepared split."""
    return all(c in split.column_names for c in ID_COLUMNS)


def objective_needs_item_ids(source: str, needs: str, split: Any = None) -> str:
    """The one line for settings that need item ids (sharing, the margin, aux outputs) on data without
    them; with ``split``, TRL's pairs (one string ``rejected``) are told to set num_negatives 1."""
    pairs = split is not None and len(split) > 0 and "rejected" in split.column_names \
        and cell_kind(split[0]["rejected"]) in ("text", "messages")
    k = ", num_negatives 1 (one rejected per row)" if pairs else ""
    return (
        f"{source} has no item ids (columns target, candidates), so {needs} cannot work on it: sharing borrows "
        "negatives between similar users item by item, and the dynamic margin and aux_dir read an auxiliary "
        f"recommender's per-item outputs. What works on this data: loss_type dpo or sdpo (against a reference{k}), "
        f"or loss_type napo with share_negatives false and margin_alpha 0 (reference-free, fixed margin gamma0{k}); "
        "for sharing and the margin, prepare the data with data_prep and train on the dataset_dir"
    )


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
        raise TrainingDataError(objective_needs_item_ids(source, ", ".join(needs), split))


def explain_missing_item_ids(error: ValueError, argv: list[str]) -> str | None:
    """For ``ScriptParser.parse(explain=...)``: when the settings ask for auxiliary outputs (no
    aux_dir) and ``dataset_name`` names data without item ids, the line that helps is that this
    data cannot have them, not "set aux_dir". None otherwise (the settings' own line stands)."""
    from napo.config import AuxOutputsNeeded, DatasetArguments
    from napo.scripts.parser import peek

    name = peek(argv, "dataset_name")
    if not isinstance(error, AuxOutputsNeeded) or not name:
        return None
    data_args = DatasetArguments(dataset_name=name, dataset_config=peek(argv, "dataset_config"),
                                 dataset_revision=peek(argv, "dataset_revision"))
    split = peek(argv, "train_split") or data_args.train_split
    try:
        dataset, _, _ = load_training_data(data_args)
    except UserError:
        return None  # the run itself will say why the data cannot be read
    if split not in dataset or has_item_ids(dataset[split]):
        return None
    return objective_needs_item_ids(name, "loss_type napo's negative sharing and dynamic margin", dataset[split])


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
    """{"train": split[, "eval": split]} for NAPOTrainer (which reads TRL's formats itself).

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
        rows = dataset[split]
        num_rows = len(rows)
        if limit is not None:  # the first rows: the join below is by row index, so it is unchanged
            rows = rows.select(range(min(limit, num_rows)))
        if aux_dir:
            user_vectors, candidate_scores = load_aux(aux_dir, split, meta, num_rows=num_rows)
            rows = add_aux_columns(rows, user_vectors[:len(rows)], candidate_scores[:len(rows)])
        out[role] = rows
    return out

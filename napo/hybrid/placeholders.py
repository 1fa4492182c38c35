"""LLaRA's hybrid prompt: a placeholder token after each title, its input embedding replaced by the
projection of that item's auxiliary vector.

Data (``python -m data_prep --item-placeholders``): every history title is followed by
``[HistoryEmb]`` and every candidate title by ``[CansEmb]`` (``data_prep.prompts``); completions
stay titles. At the forward, the k-th ``[HistoryEmb]`` counted from the END of the sequence gets
the k-th history item counted from the end (so a prompt truncated from the left keeps its
alignment), likewise ``[CansEmb]`` with the candidates. :func:`position_items` gives that map as
one item id per position ([R, T], -1 elsewhere); :func:`embed` turns input ids into
``inputs_embeds`` with the projections in place. The model is then called with ``inputs_embeds``
(training, ``napo.scoring``, generation).

Curriculum (LLaRA): a training batch is hybrid with probability ``step / max_steps`` (``linear``),
else text-only: the placeholder tokens are removed from its ids, so the projector receives no
gradient from it (AdamW skips parameters without a gradient: they do not move).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data_prep.prompts import PLACEHOLDERS
from napo.hybrid.encoder import HybridError, ItemEncoder, encoder_of, transformers_model
from napo.hybrid.encoder import attach as _attach

KINDS = ("history", "candidates")


def add_placeholder_tokens(model, tokenizer) -> None:
    """Add the placeholder tokens to ``tokenizer`` (special: never split, dropped when decoding
    answers) and grow the model's embeddings to the tokenizer when they were new."""
    missing = [t for t in PLACEHOLDERS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    rows = transformers_model(model).get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        transformers_model(model).resize_token_embeddings(len(tokenizer))


def placeholder_ids(tokenizer) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    missing = [t for t in PLACEHOLDERS.values() if t not in vocab]
    if missing:
        raise HybridError(f"the tokenizer lacks the placeholder token {missing[0]}; train with item_embeddings aux "
                          "(napo-sft adds them) or build the tiny model from the placeholder data")
    return {kind: int(vocab[token]) for kind, token in PLACEHOLDERS.items()}


def text_row_norm(model, tokenizer) -> float:
    weight = transformers_model(model).get_input_embeddings().weight.detach()
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[list(placeholder_ids(tokenizer).values())] = False
    return float(weight[keep].float().norm(dim=-1).mean())


def attach(model, encoder: ItemEncoder) -> ItemEncoder:
    if encoder.form != "placeholders":
        raise HybridError(f"encoder of form {encoder.form!r} is not a placeholder encoder")
    return _attach(model, encoder)


def uses_placeholders(model) -> bool:
    encoder = encoder_of(model)
    return encoder is not None and encoder.form == "placeholders"


def position_items(input_ids: torch.Tensor, rows_items: Sequence[dict[str, Sequence[int]]],
                   ids: dict[str, int]) -> torch.Tensor:
    """Item id per position [R, T] (-1 where no placeholder), see the module docstring.

    input_ids [R, T]; rows_items[r] = {"history": [ids], "candidates": [ids]} of row r's example.
    A row with more placeholders of a kind than items of that kind is an error (wrong data).
    """
    out = torch.full(input_ids.shape, -1, dtype=torch.long)
    cpu = input_ids.detach().cpu()
    for r, items in enumerate(rows_items):
        for kind in KINDS:
            where = (cpu[r] == ids[kind]).nonzero().flatten()
            values = list(items[kind])
            n = len(where)
            if n > len(values):
                raise HybridError(f"a prompt holds {n} {kind} placeholders for {len(values)} {kind} items: the "
                                  "placeholders do not match the row's items; prepare the data again")
            if n:
                out[r, where] = torch.tensor(values[len(values) - n:], dtype=torch.long)
    return out.to(input_ids.device)


def embed(model, input_ids: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """inputs_embeds [R, T, d]: the model's embeddings, with the projection of ``items[r, t]`` at
    every position where it is >= 0."""
    encoder = encoder_of(model)
    if encoder is None:
        raise HybridError("position items given but the model has no hybrid item encoder")
    embeddings = transformers_model(model).get_input_embeddings()(input_ids)
    where = (items >= 0).nonzero(as_tuple=True)
    if where[0].numel() == 0:
        return embeddings
    projected = encoder.project(items[where].to(encoder.item_vectors.device)).to(embeddings.dtype)
    return embeddings.index_put(where, projected)


def row_examples(batch: dict) -> torch.Tensor:
    """[R]: the example each row of a ``napo.scoring`` batch belongs to (packed: one row each;
    naive: one row per real completion, in order)."""
    counts = batch["completion_mask"].sum(1).cpu()
    if batch["layout"] == "packed":
        return torch.arange(len(counts))
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def scoring_items(batch: dict, histories: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]],
                  ids: dict[str, int]) -> torch.Tensor:
    """``position_items`` of a collated ``napo.scoring`` batch (any layout)."""
    owners = row_examples(batch).tolist()
    rows = [{"history": histories[b], "candidates": candidates[b]} for b in owners]
    return position_items(batch["input_ids"], rows, ids)


# --------------------------------------------------------------------------- SFT curriculum


def hybrid_share(curriculum: str, step: int, max_steps: int) -> float:
    """Probability that a batch is hybrid: ``step / max_steps`` (linear, LLaRA) or 1 (none)."""
    if curriculum == "none":
        return 1.0
    if curriculum != "linear":
        raise HybridError(f"hybrid_curriculum {curriculum!r}: use linear or none")
    return min(1.0, max(0.0, step / max(max_steps, 1)))


class CurriculumCollator:
    """Wraps TRL's SFT collator: each batch is hybrid (placeholders kept, ``position_items`` added)
    or text-only (placeholder ids removed), drawn with :func:`hybrid_share` of the current step.

    ``step`` / ``max_steps`` are set by :class:`CurriculumCallback`; the draw for batch number b is
    ``default_rng([seed, b])``, so a run is reproducible.
    """

    item_keys = ("history", "candidates")

    def __init__(self, base, ids: dict[str, int], curriculum: str = "linear", seed: int = 0):
        self.base, self.ids, self.curriculum, self.seed = base, dict(ids), curriculum, seed
        self.step, self.max_steps, self.batches = 0, 1, 0
        self.counts = {"hybrid": 0, "text": 0}

    def __call__(self, examples: list[dict]) -> dict:
        share = hybrid_share(self.curriculum, self.step, self.max_steps)
        hybrid = bool(np.random.default_rng([self.seed, self.batches]).random() < share)
        self.batches += 1
        self.counts["hybrid" if hybrid else "text"] += 1
        rows = [{k: ex[k] for k in self.item_keys} for ex in examples]
        plain = [{k: v for k, v in ex.items() if k not in self.item_keys} for ex in examples]
        if not hybrid:
            plain = [strip_placeholders(ex, set(self.ids.values())) for ex in plain]
        batch = self.base(plain)
        if hybrid:
            batch["position_items"] = position_items(batch["input_ids"], rows, self.ids)
        return batch


def strip_placeholders(example: dict, ids: set[int]) -> dict:
    """The example without its placeholder tokens (every per-token list shortened alike)."""
    tokens = list(example["input_ids"])
    keep = [i for i, t in enumerate(tokens) if t not in ids]
    if len(keep) == len(tokens):
        return example
    out = dict(example)
    for key, value in example.items():
        if isinstance(value, (list, tuple)) and len(value) == len(tokens):
            out[key] = [value[i] for i in keep]
    return out


def curriculum_callback(collator: CurriculumCollator):
    from transformers import TrainerCallback

    class CurriculumCallback(TrainerCallback):
        """Tells the collator where training stands (the step decides the hybrid share)."""

        def on_step_begin(self, args, state, control, **kwargs):
            collator.step, collator.max_steps = state.global_step, state.max_steps

        def on_train_begin(self, args, state, control, **kwargs):
            collator.step, collator.max_steps = state.global_step, state.max_steps

    return CurriculumCallback()

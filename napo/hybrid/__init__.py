"""Hybrid item representations: the LLM starts from what the auxiliary recommender knows.

The auxiliary model (SASRec, GRU4Rec, Caser: ``napo-recsys``) writes its item vectors to
``AUX/items.safetensors``; a projector (LLaRA's Linear, GELU, Linear) maps them into the LLM's
embedding space. Two forms, one setting (``item_embeddings: aux``):

- item tokens (``data_prep --item-format token``): the ``<item_N>`` token's embedding row, input
  and output, is the projected vector (:mod:`napo.hybrid.tokens`), ``frozen`` (aux vectors fixed,
  projector trained, rows always equal to the projection) or ``trainable`` (rows initialised from
  the projection, then trained as ordinary weights);
- titles with placeholders (``data_prep --item-placeholders``): LLaRA's own form, a placeholder
  token after each title whose input embedding is replaced by the projection of that item's
  vector, with LLaRA's curriculum (:mod:`napo.hybrid.placeholders`).

The encoder (vectors + projector) is saved beside the model or adapter
(:mod:`napo.hybrid.encoder`) and restored by ``napo.models.loading``, so SFT -> DPO / S-DPO / NAPO
-> napo-eval carries it through; in a LoRA stage the projector is a PEFT ``modules_to_save``
module (trained in the policy, untouched in the adapter-disabled reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napo.hybrid.encoder import (
    CONFIG_FILE,
    ENCODER_ATTR,
    MODES,
    PROJECTOR_NAME,
    WEIGHTS_FILE,
    HybridError,
    ItemEncoder,
    describe_source,
    encoder_of,
    has_files,
    load_encoder,
    read_record,
    save_files,
)

__all__ = [
    "CONFIG_FILE", "ENCODER_ATTR", "PROJECTOR_NAME", "WEIGHTS_FILE", "HybridArguments", "HybridError",
    "ItemEncoder", "encoder_of", "has_files", "prepare", "restore", "save", "peft_settings",
]

CHOICES = ("none", "aux")
CURRICULA = ("linear", "none")


@dataclass
class HybridArguments:
    """Item embeddings from the auxiliary recommender (napo-sft, napo-train)."""

    item_embeddings: str | None = field(
        default=None,
        metadata={
            "help": "'aux': item tokens' embedding rows (or LLaRA's placeholders after titles) are the "
            "auxiliary model's item vectors through a learned projector; 'none': the model's own rows. "
            "None: as the starting model was saved (hybrid_items.json beside it), else none.",
            "choices": [*CHOICES, None],
        },
    )
    item_embeddings_mode: str = field(
        default="frozen",
        metadata={
            "help": "'frozen': aux vectors fixed, projector trained, each item row IS the projection; "
            "'trainable': rows initialised from the projection, then trained as ordinary weights "
            "(item tokens only).",
            "choices": list(MODES),
        },
    )
    item_aux_dir: str | None = field(
        default=None,
        metadata={"help": "OUT/aux of napo-recsys holding items.safetensors (None: aux_dir, where the "
                  "settings have one)."},
    )
    hybrid_curriculum: str = field(
        default="linear",
        metadata={
            "help": "Placeholder prompts only: 'linear' (LLaRA) makes a batch hybrid with probability "
            "step / max_steps, else text-only (placeholders removed, projector untouched); 'none': "
            "every batch hybrid.",
            "choices": list(CURRICULA),
        },
    )


def _form(meta: dict) -> str:
    from data_prep.prompts import has_placeholders

    if meta.get("item_format") == "token":
        return "tokens"
    if has_placeholders(meta):
        return "placeholders"
    raise HybridError("item_embeddings aux needs item tokens (data_prep --item-format token) or title "
                      "prompts with placeholders (data_prep --item-placeholders); this dataset has neither")


def _token_ids(tokenizer, items) -> torch.Tensor:
    from data_prep.prompts import item_token

    names = [item_token(int(i)) for i in items["item_id"]]
    ids = tokenizer.convert_tokens_to_ids(names)
    unknown = [n for n, i in zip(names, ids, strict=True) if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise HybridError(f"the tokenizer lacks item token {unknown[0]}: build the model with item tokens")
    return torch.tensor(ids, dtype=torch.long)


def build_encoder(model, tokenizer, *, meta: dict, items, aux_dir: str, mode: str, seed: int) -> ItemEncoder:
    """A new encoder over ``aux_dir``'s item vectors for ``model`` (projector seeded by ``seed``)."""
    from napo.auxiliary import load_item_vectors
    from napo.hybrid import placeholders as ph
    from napo.hybrid import tokens

    form = _form(meta)
    if form == "placeholders" and mode != "frozen":
        raise HybridError("item_embeddings_mode trainable applies to item tokens; placeholders are always "
                          "the projection (use frozen)")
    item_ids = [int(i) for i in items["item_id"]]
    vectors = load_item_vectors(aux_dir, num_items=max(item_ids) + 1 if item_ids else None)
    source = {**describe_source(aux_dir), "dataset_fingerprint_of_data": meta.get("fingerprint")}
    hidden = model.get_input_embeddings().weight.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if form == "tokens":
            token_ids = _token_ids(tokenizer, items)
            encoder = ItemEncoder(vectors[item_ids], hidden, form=form, mode=mode, token_ids=token_ids, source=source)
            scale = encoder.match_scale(tokens.text_row_norm(model, token_ids))
        else:
            encoder = ItemEncoder(vectors, hidden, form=form, mode=mode,
                                  placeholders=ph.placeholder_ids(tokenizer), source=source)
            scale = encoder.match_scale(ph.text_row_norm(model, tokenizer))
    encoder.source["init_scale"] = scale
    return encoder


def prepare(model, tokenizer, args: HybridArguments, *, meta: dict, items, aux_dir: str | None,
            seed: int) -> ItemEncoder | None:
    """Set up the model's item embeddings for training as ``args`` asks; returns the attached encoder
    (or, for trainable rows, the encoder they were initialised from), or None.

    A model loaded with its encoder (restored by ``napo.models.loading`` from hybrid_items.json)
    keeps it unless ``item_embeddings: none`` (then the projected rows are baked in and it trains
    as a plain model); ``aux`` on a plain model builds a new encoder from ``aux_dir``.
    """
    from napo.hybrid import placeholders as ph
    from napo.hybrid import tokens

    attached = encoder_of(model)
    wanted = args.item_embeddings
    if attached is not None:
        if wanted == "none":
            if attached.form == "placeholders":
                raise HybridError("this model reads its placeholders through the projector; it cannot drop it "
                                  "(item_embeddings none); leave item_embeddings unset")
            tokens.materialize(model)
            return None
        if _form(meta) != attached.form:
            raise HybridError(f"the model's hybrid item embeddings are of form {attached.form!r}, the data needs "
                              f"{_form(meta)!r}; use data prepared like the model's training data")
        return attached
    if wanted != "aux":
        return None
    if not aux_dir:
        raise HybridError("item_embeddings aux needs the auxiliary item vectors: set item_aux_dir (OUT/aux of napo-recsys)")
    if _form(meta) == "placeholders":
        ph.add_placeholder_tokens(model, tokenizer)
    encoder = build_encoder(model, tokenizer, meta=meta, items=items, aux_dir=aux_dir,
                            mode=args.item_embeddings_mode, seed=seed)
    if encoder.form == "placeholders":
        ph.attach(model, encoder)
    elif encoder.mode == "frozen":
        tokens.attach_frozen(model, encoder)
    else:
        tokens.init_trainable(model, encoder)
        model.napo_hybrid_init = encoder.record()  # recorded beside the saved model, nothing attached
    return encoder


def peft_settings(peft_config, model, encoder: ItemEncoder | None) -> Any:
    """Make a LoRA config train the hybrid part too: the projector as ``modules_to_save`` (frozen
    rows, placeholders). Trainable rows under LoRA are refused: PEFT's trainable tokens wrap the
    LM head in a module that TRL's fused LM head cannot read (no ``bias``, base weight only), so
    the SFT loss would not see them; full fine-tuning trains the rows as ordinary weights."""
    if peft_config is None or encoder is None:
        return peft_config
    if encoder_of(model) is not None:
        modules = list(peft_config.modules_to_save or [])
        if PROJECTOR_NAME not in modules:
            peft_config.modules_to_save = [*modules, PROJECTOR_NAME]
    elif encoder.mode == "trainable":
        raise HybridError("item_embeddings_mode trainable with LoRA (use_peft) is not supported: the adapter could "
                          "not train the item rows; use item_embeddings_mode frozen, or full fine-tuning (use_peft false)")
    return peft_config


def save(model, out_dir: str | Path) -> None:
    """Write the encoder files beside a saved model / adapter (nothing for a plain model)."""
    import json

    encoder = encoder_of(model)
    if encoder is not None:
        save_files(encoder, out_dir)
        return
    record = getattr(_inner(model), "napo_hybrid_init", None)
    if record is not None:  # trainable rows: provenance only, the rows are in the weights
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _inner(model):
    from napo.hybrid.encoder import transformers_model

    return transformers_model(model)


def restore(model, directory: str | Path) -> ItemEncoder | None:
    """Attach the encoder saved in ``directory`` (if any) to a freshly loaded model.

    Frozen item tokens: parametrized again, projector as saved (the saved rows already equal its
    projection, so scores do not move); placeholders: attached; trainable rows: nothing to do.
    """
    from napo.hybrid import placeholders as ph
    from napo.hybrid import tokens

    if not has_files(directory) or encoder_of(model) is not None:
        return encoder_of(model)
    record = read_record(directory)
    if record["mode"] == "trainable":
        return None
    encoder = load_encoder(directory)
    if encoder.form == "tokens":
        tokens.attach_frozen(model, encoder)
    else:
        ph.attach(model, encoder)
    return encoder

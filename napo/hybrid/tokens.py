"""Hybrid item tokens: each ``<item_N>`` token's embedding row is the projected auxiliary vector.

Two modes (``item_embeddings_mode``):

- ``frozen``: the auxiliary vectors stay fixed and the projector trains. The item rows of the input
  embedding (and of the LM head: the same matrix when tied, the same projection when untied) ARE
  ``projector(aux_vector(item))`` at every step. This is a ``torch.nn.utils.parametrize``
  parametrization of the ``weight`` of both modules, so everything that reads ``.weight`` (the
  embedding lookup, the LM head, TRL's fused LM head, generation, ``napo.scoring``) sees the
  projected rows and passes gradients to the projector; the text rows are the model's own.
- ``trainable``: the rows are written once from the projection (no gradient) and are ordinary
  weights from then on; nothing is attached to the model.

Saving (:func:`plain_state_dict`) writes the standard layout: ``embed_tokens.weight`` holding the
projected rows, no parametrization keys, no encoder keys; the encoder goes to its own file
(:mod:`napo.hybrid.encoder`). A plain ``from_pretrained`` of the saved model therefore scores
exactly as the hybrid model did; :func:`napo.hybrid.restore` re-attaches the encoder when training
goes on (the preference stage) so that the projector keeps training.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from napo.hybrid.encoder import ENCODER_ATTR, HybridError, ItemEncoder, attach, transformers_model


class ItemRows(nn.Module):
    """Parametrization of an embedding matrix [V, d]: rows ``token_ids`` replaced by the projection.

    The encoder is held outside the module tree (it is registered once, as ``napo_item_encoder``),
    and looked up at every call so that PEFT's wrapper around the projector is the one used.
    """

    def __init__(self, encoder: ItemEncoder):
        super().__init__()
        object.__setattr__(self, "_encoder", encoder)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        encoder = self._encoder
        rows = encoder.project().to(weight.dtype)  # [num_items, d]
        return weight.index_copy(0, encoder.token_ids, rows)


def _modules(model: nn.Module) -> list[nn.Module]:
    """The input embedding and the output head (if any; tied or not)."""
    inner = transformers_model(model)
    embed, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    return [embed] + ([head] if head is not None and head is not embed else [])


def _check(model: nn.Module, encoder: ItemEncoder) -> None:
    for module in _modules(model):
        weight = module.weight
        if weight.shape[1] != encoder.hidden_size:
            raise HybridError(f"the model's embedding width is {weight.shape[1]}, the projector's {encoder.hidden_size}")
        if int(encoder.token_ids.max()) >= weight.shape[0]:
            raise HybridError(f"item token id {int(encoder.token_ids.max())} is outside the model's "
                              f"{weight.shape[0]} embedding rows; resize the embeddings to the tokenizer")


def text_row_norm(model: nn.Module, token_ids: torch.Tensor) -> float:
    """Mean norm of the input-embedding rows that are not item tokens."""
    weight = transformers_model(model).get_input_embeddings().weight.detach()
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[token_ids.to(weight.device)] = False
    return float(weight[keep].float().norm(dim=-1).mean())


def attach_frozen(model: nn.Module, encoder: ItemEncoder) -> ItemEncoder:
    """Attach ``encoder`` and parametrize the item rows of the embedding and the LM head."""
    _check(model, encoder)
    attach(model, encoder)
    parametrization = ItemRows(encoder)
    for module in _modules(model):
        # A tied head shares the Parameter with the embedding: both get the same parametrization
        # (one `original` Parameter, one projector), so input and output rows stay one matrix.
        parametrize.register_parametrization(module, "weight", parametrization)
    return encoder


def init_trainable(model: nn.Module, encoder: ItemEncoder) -> None:
    """Write the projection into the item rows once (trainable mode); nothing stays attached."""
    _check(model, encoder)
    with torch.no_grad():
        rows = encoder.project()
        for module in _modules(model):
            module.weight[encoder.token_ids.to(module.weight.device)] = rows.to(module.weight)


def is_parametrized(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m, "weight") for m in _modules(model))


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in the standard layout: parametrized weights as their current value
    (item rows = the projection) under their usual key, no encoder keys (see module docstring)."""
    inner = transformers_model(model)
    out: dict[str, torch.Tensor] = {}
    marker = ".parametrizations.weight."
    seen: set[int] = set()  # a tied head shares its `original` with the embedding: saved once, as usual
    for key, value in inner.state_dict(keep_vars=True).items():
        if key.startswith(ENCODER_ATTR + "."):
            continue
        if marker in key:
            if key.endswith(marker + "original") and id(value) not in seen:
                seen.add(id(value))
                name = key[: -len(marker + "original")]
                with torch.no_grad():
                    out[f"{name}.weight"] = inner.get_submodule(name).weight.detach().clone()
            continue
        out[key] = value.detach()
    return out


def load_plain_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a standard-layout state dict (a checkpoint written with :func:`plain_state_dict`) into a
    model whose item rows are parametrized: ``X.weight`` goes to ``X``'s ``original`` (its item rows
    are then overridden by the projection, as before saving). Every key must match."""
    inner = transformers_model(model)
    parametrized = {f"{name}.weight": module for name, module in inner.named_modules()
                    if parametrize.is_parametrized(module, "weight")}
    mapped = {}
    for key, value in state.items():
        if key in parametrized:
            key = key[: -len("weight")] + "parametrizations.weight.original"
        mapped[key] = value
    own = {k for k in inner.state_dict() if not k.startswith(ENCODER_ATTR + ".")}
    tied_heads = {k for k in own if k.endswith("parametrizations.weight.original")} - set(mapped)
    missing = own - set(mapped) - tied_heads
    unexpected = set(mapped) - own
    if missing or unexpected:
        raise HybridError(f"checkpoint does not match the hybrid model (missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}); resume with the settings that wrote it")
    inner.load_state_dict(mapped, strict=False)


def materialize(model: nn.Module) -> nn.Module:
    """Bake the projected rows into the weights and detach the encoder: a plain model that scores
    exactly as the hybrid one (for evaluation: no projection per forward)."""
    inner = transformers_model(model)
    with torch.no_grad():
        for module in _modules(inner):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    if hasattr(inner, ENCODER_ATTR):
        delattr(inner, ENCODER_ATTR)
    head = inner.get_output_embeddings()
    if head is not None and head.weight is inner.get_input_embeddings().weight:
        # Still one Parameter: say so. PEFT's merge_and_unload compares the data pointers of the
        # two parametrized weights (computed anew on every access, so they always differ) and
        # writes tie_word_embeddings false, which a saved model would then be loaded with.
        inner.config.tie_word_embeddings = True
    return model

"""The auxiliary recommender's item vectors projected into the LLM's embedding space.

LLaRA (SIGIR 2024; ``shared/papers/llara-hybrid.md``) feeds an LLM the item representations of a
trained sequential recommender through a small projector: Linear(d_aux -> d_llm), GELU,
Linear(d_llm -> d_llm). This module holds that projector and the frozen item vectors
(``AUX/items.safetensors``, written by napo-recsys), and the files that carry both beside a saved
model or adapter:

    OUT/hybrid_items.json         {"format": 1, "form": "tokens" | "placeholders",
                                   "mode": "frozen" | "trainable", "num_items", "aux_dim",
                                   "hidden_size", "placeholders": {...} | null, "source": {...}}
    OUT/hybrid_items.safetensors  item_vectors float32 [num_items, aux_dim], token_ids int64
                                  [num_items] (tokens form), item_projector.* (the projector's
                                  weights as trained)

A model with its encoder attached carries it as the submodule ``napo_item_encoder`` (one path, so
PEFT's ``modules_to_save=["item_projector"]`` wraps the projector exactly once). The two ways the
projection enters the model live in :mod:`napo.hybrid.tokens` (item-token rows) and
:mod:`napo.hybrid.placeholders` (LLaRA's placeholder positions).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data_prep.errors import UserError

CONFIG_FILE = "hybrid_items.json"
WEIGHTS_FILE = "hybrid_items.safetensors"
FORMAT = 1
ENCODER_ATTR = "napo_item_encoder"
PROJECTOR_NAME = "item_projector"
FORMS = ("tokens", "placeholders")
MODES = ("frozen", "trainable")


class HybridError(UserError):
    """A one-line problem with hybrid item embeddings (files, settings, data)."""


class ItemProjector(nn.Sequential):
    """LLaRA's projector: [.., d_aux] -> [.., d_llm] through Linear, GELU, Linear."""

    def __init__(self, aux_dim: int, hidden_size: int):
        super().__init__(nn.Linear(aux_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))


class ItemEncoder(nn.Module):
    """Frozen item vectors and the trainable projector that maps them into the LLM's space.

    Args:
        item_vectors: [num_items, aux_dim], row i = the auxiliary model's vector of item id i.
        hidden_size: the LLM's embedding width.
        form: "tokens" (one token per item, ``token_ids``) or "placeholders" (LLaRA's
            placeholder tokens after each title, ``placeholders`` = {kind: token id}).
        mode: "frozen" (rows are the projection at every step) or "trainable" (rows initialised
            from the projection, then ordinary weights).
    """

    def __init__(self, item_vectors: torch.Tensor, hidden_size: int, *, form: str, mode: str = "frozen",
                 token_ids: torch.Tensor | None = None, placeholders: dict[str, int] | None = None,
                 source: dict | None = None):
        super().__init__()
        if form not in FORMS:
            raise HybridError(f"hybrid form {form!r}: use one of {', '.join(FORMS)}")
        if mode not in MODES:
            raise HybridError(f"item_embeddings_mode {mode!r}: use one of {', '.join(MODES)}")
        self.form, self.mode = form, mode
        self.placeholders = dict(placeholders or {})
        self.source = dict(source or {})
        self.hidden_size = int(hidden_size)
        # Not persistent: the encoder's own file carries them, the model's state dict never does.
        self.register_buffer("item_vectors", item_vectors.detach().float().clone(), persistent=False)
        ids = token_ids if token_ids is not None else torch.zeros(0, dtype=torch.long)
        self.register_buffer("token_ids", ids.detach().long().clone(), persistent=False)
        setattr(self, PROJECTOR_NAME, ItemProjector(item_vectors.shape[1], hidden_size))

    @property
    def num_items(self) -> int:
        return int(self.item_vectors.shape[0])

    @property
    def projector(self) -> nn.Module:
        """The projector as the model sees it now (PEFT may have wrapped it: modules_to_save)."""
        return getattr(self, PROJECTOR_NAME)

    def project(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Projected vectors [..., hidden_size] of ``item_ids`` (any shape), or of every item [num_items, h]."""
        vectors = self.item_vectors if item_ids is None else self.item_vectors[item_ids]
        weight = _first_weight(self.projector)
        return self.projector(vectors.to(weight.dtype))

    def match_scale(self, target_norm: float) -> float:
        """Scale the projector's last layer so that the mean projected row norm is ``target_norm``
        (the mean norm of the model's other embedding rows): the item rows start on the scale of
        the rows beside them. Returns the factor applied."""
        with torch.no_grad():
            norm = float(self.project().norm(dim=-1).mean())
            factor = target_norm / norm if norm > 0 else 1.0
            last = _last_linear(self.projector)
            last.weight.mul_(factor)
            last.bias.mul_(factor)
        return factor

    def record(self) -> dict:
        return {"format": FORMAT, "form": self.form, "mode": self.mode, "num_items": self.num_items,
                "aux_dim": int(self.item_vectors.shape[1]), "hidden_size": self.hidden_size,
                "placeholders": self.placeholders or None, "source": self.source}


def _first_weight(module: nn.Module) -> torch.Tensor:
    return next(p for p in module.parameters())


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


# --------------------------------------------------------------------------- the model's encoder


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT / DDP wrappers (where the encoder is attached)."""
    from napo.scoring import _unwrap

    return _unwrap(model)


def encoder_of(model: nn.Module) -> ItemEncoder | None:
    """The encoder attached to ``model`` (through wrappers), or None."""
    return getattr(transformers_model(model), ENCODER_ATTR, None)


def attach(model: nn.Module, encoder: ItemEncoder) -> ItemEncoder:
    """Register ``encoder`` as the submodule ``napo_item_encoder`` of the transformers model,
    on the device and in the dtype of its input embeddings (item vectors stay float32)."""
    inner = transformers_model(model)
    if getattr(inner, ENCODER_ATTR, None) is not None:
        raise HybridError("the model already has hybrid item embeddings attached")
    weight = inner.get_input_embeddings().weight
    encoder.to(device=weight.device)
    encoder.projector.to(dtype=weight.dtype)
    setattr(inner, ENCODER_ATTR, encoder)
    return encoder


def projector_state(encoder: ItemEncoder) -> dict[str, torch.Tensor]:
    """The projector's weights as the model uses them now: under PEFT's modules_to_save the active
    adapter's copy (what training updated), else the projector itself."""
    module = encoder.projector
    active = getattr(module, "modules_to_save", None)
    if active is not None:  # peft ModulesToSaveWrapper
        name = module.active_adapter
        name = name[0] if isinstance(name, (list, tuple)) else name
        if name in active and not getattr(module, "disable_adapters", False):
            module = active[name]
        else:
            module = module.original_module
    return {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}


def save_files(encoder: ItemEncoder, out_dir: str | os.PathLike) -> Path:
    """Write OUT/hybrid_items.json and OUT/hybrid_items.safetensors (module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"item_vectors": encoder.item_vectors.detach().float().cpu().contiguous(),
               "token_ids": encoder.token_ids.detach().cpu().contiguous()}
    tensors.update({f"{PROJECTOR_NAME}.{k}": v for k, v in projector_state(encoder).items()})
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(encoder.record(), indent=2, sort_keys=True) + "\n")
    return out / CONFIG_FILE


def has_files(directory: str | os.PathLike | None) -> bool:
    return directory is not None and (Path(directory) / CONFIG_FILE).is_file()


def read_record(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HybridError(f"{path}: unreadable ({err}); re-save the model") from None
    if record.get("format") != FORMAT or record.get("form") not in FORMS or record.get("mode") not in MODES:
        raise HybridError(f"{path}: not a hybrid item-embedding record of format {FORMAT}; re-save the model")
    return record


def load_encoder(directory: str | os.PathLike) -> ItemEncoder:
    """The encoder saved in ``directory`` (module docstring), projector weights restored."""
    record = read_record(directory)
    path = Path(directory) / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except Exception as err:  # missing, truncated or foreign: safetensors raises several types
        raise HybridError(f"{path}: cannot read ({str(err).splitlines()[0]}); re-save the model") from None
    encoder = ItemEncoder(tensors["item_vectors"], record["hidden_size"], form=record["form"], mode=record["mode"],
                          token_ids=tensors["token_ids"], placeholders=record.get("placeholders"),
                          source=record.get("source"))
    prefix = PROJECTOR_NAME + "."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    encoder.projector.load_state_dict(state)
    return encoder


def describe_source(aux_dir: str | os.PathLike, model: Any = None) -> dict:
    """Where the item vectors came from (recorded in hybrid_items.json)."""
    meta_path = Path(aux_dir) / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {"aux_dir": str(aux_dir), "model": meta.get("model"), "dataset_fingerprint": meta.get("dataset_fingerprint")}

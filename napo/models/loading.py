"""Load a causal LM and its tokenizer the same way in every recipe (SFT, DPO/S-DPO/NAPO, eval).

``model_name_or_path`` may be
- a Hub id or a full local checkpoint (e.g. one written by ``napo.models.tiny``), or
- a PEFT adapter directory (e.g. the output of ``recipes/sft.py``): its base model is loaded from
  ``adapter_config.json`` and the adapter applied on top. By default the adapter is merged into
  the base weights, so that a new LoRA for the preference stage sees the SFT model as its frozen
  base (the reference of DPO / S-DPO = the adapter-disabled policy = the SFT model).

What is honoured: ``dtype``, ``attn_implementation``, ``model_revision`` and QLoRA flags
(``load_in_4bit`` / ``load_in_8bit`` ... through ``trl.get_quantization_config``) from
``ModelConfig``; ``trust_remote_code``, ``gradient_checkpointing`` (turns off the KV cache) and
``model_init_kwargs`` from the training config. ``trust_remote_code`` is False unless asked for.

Hybrid item embeddings (``napo.hybrid``): a model or adapter directory saved with
``hybrid_items.json`` gets its item encoder attached again on load (from the base directory, else
from the adapter directory) before any adapter is applied, so PEFT finds the projector it saved.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from data_prep.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"


class ModelLoadError(UserError):
    """A one-line, user-facing model or tokenizer loading problem."""


def is_adapter_dir(path: str | Path | None) -> bool:
    """True when ``path`` is a local directory holding a PEFT adapter (``adapter_config.json``)."""
    return path is not None and (Path(path) / ADAPTER_CONFIG).is_file()


def kbit_device_map() -> dict[str, Any] | None:
    """Device map for a quantized model: the whole model on this process's accelerator.

    bitsandbytes models cannot be moved after loading, so under DDP each process must load its
    copy directly onto its own device (trl removed its ``get_kbit_device_map`` helper).
    """
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return {"": PartialState().local_process_index}
    return None


def model_init_kwargs(model_args: Any, training_args: Any | None = None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments from a trl ``ModelConfig`` and a training config."""
    import torch
    from trl import get_quantization_config

    dtype = model_args.dtype
    if dtype not in (None, "auto"):
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "dtype": dtype,
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": bool(getattr(training_args, "trust_remote_code", False)),
    }
    # trl passes `dtype` on as the 4-bit compute dtype, where "auto" is no dtype (AttributeError).
    quant_args = replace(model_args, dtype=None) if model_args.dtype == "auto" else model_args
    quantization_config = get_quantization_config(quant_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = kbit_device_map()
    if training_args is not None and getattr(training_args, "gradient_checkpointing", False):
        kwargs["use_cache"] = False  # the cache is useless in training and clashes with checkpointing
    extra = getattr(training_args, "model_init_kwargs", None)
    if isinstance(extra, dict):
        kwargs.update(extra)
    return {k: v for k, v in kwargs.items() if v is not None or k == "device_map"}


def load_tokenizer(
    name_or_path: str,
    *,
    revision: str = "main",
    trust_remote_code: bool = False,
    padding_side: str | None = None,
) -> Any:
    """Load a tokenizer; give it a pad token if it has none (unk if defined, else EOS).

    Hub Llama-2 tokenizers have no pad token. Using ``<unk>`` rather than EOS keeps EOS out of the
    padding so that a collator which masks by pad id can never mask the real EOS.
    """
    from transformers import AutoTokenizer

    if not name_or_path:
        raise ModelLoadError("model_name_or_path is not set: give a Hub id or a local model directory")
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if padding_side is not None:
        kwargs["padding_side"] = padding_side
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise ModelLoadError(
            f"cannot load a tokenizer from {name_or_path!r}: {str(err).splitlines()[0]} "
            "(check the path or Hub id, and network access for Hub ids)"
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def _load_base(name_or_path: str, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise ModelLoadError(
            f"cannot load a model from {name_or_path!r}: {str(err).splitlines()[0]} "
            "(check the path or Hub id, and network access for Hub ids)"
        ) from err


def load_model_and_tokenizer(
    model_args: Any,
    training_args: Any | None = None,
    *,
    padding_side: str | None = None,
    merge_adapter: bool = True,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for training or evaluation.

    Args:
        model_args: a ``trl.ModelConfig`` (``model_name_or_path``, ``dtype``, quantization flags...).
        training_args: an ``SFTConfig`` / ``DPOConfig`` or None (evaluation).
        padding_side: override the tokenizer's padding side (``"left"`` for batched generation).
        merge_adapter: for an adapter directory, merge the adapter into the base weights (True)
            or return the ``PeftModel`` with a trainable adapter (False).
    Returns:
        A ``PreTrainedModel`` (or ``PeftModel``) whose ``config.pad_token_id`` matches the
        tokenizer, and the tokenizer.
    """
    path = model_args.model_name_or_path
    if not path:
        raise ModelLoadError("model_name_or_path is not set: give a Hub id or a local model directory")
    kwargs = model_init_kwargs(model_args, training_args)
    tokenizer = load_tokenizer(
        path,
        revision=model_args.model_revision,
        trust_remote_code=kwargs["trust_remote_code"],
        padding_side=padding_side,
    )
    if is_adapter_dir(path):
        from peft import PeftModel

        base_path = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        if not base_path:
            raise ModelLoadError(f"{Path(path) / ADAPTER_CONFIG} names no base_model_name_or_path")
        kwargs.pop("revision", None)  # the revision belongs to the adapter id, not to its base
        base = _load_base(base_path, kwargs)
        restore_hybrid(base, base_path, path)
        model = PeftModel.from_pretrained(base, path, is_trainable=not merge_adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    else:
        model = _load_base(path, kwargs)
        restore_hybrid(model, path)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def restore_hybrid(model: Any, *directories: str | Path | None) -> None:
    """Attach the hybrid item encoder saved in the first of ``directories`` that has one."""
    from napo import hybrid

    for directory in directories:
        if directory is not None and Path(directory).is_dir() and hybrid.has_files(directory):
            hybrid.restore(model, directory)
            return


def resolve_adapter(name_or_path: str, revision: str | None = None) -> str:
    """A local directory holding the adapter ``name_or_path``: itself when local, else its Hub
    snapshot (``huggingface_hub.snapshot_download``: cached, honours ``HF_HUB_OFFLINE``)."""
    if Path(name_or_path).exists():
        if not is_adapter_dir(name_or_path):
            raise ModelLoadError(f"{name_or_path}: no {ADAPTER_CONFIG}; give the output_dir of a LoRA run or a Hub adapter id")
        return str(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(repo_id=str(name_or_path), revision=revision)
    except Exception as err:  # HfHubHTTPError, offline mode, invalid id: all mean "cannot reach it"
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"cannot reach adapter {name_or_path!r} (not a local directory; Hub: {first}); check the id, "
            "the network, or HF_HUB_OFFLINE"
        ) from err
    if not is_adapter_dir(local):
        raise ModelLoadError(f"Hub repo {name_or_path!r} has no {ADAPTER_CONFIG}: it is not a PEFT adapter")
    return local


def load_for_evaluation(args: Any) -> tuple[Any, Any]:
    """(model, tokenizer) for evaluation (``napo.eval.config.EvalArguments``): the base model (Hub id
    or local dir), with ``args.adapter`` (Hub id or local dir) applied (and merged into the weights unless the base is 4-bit: same numbers,
    faster forward). The tokenizer saved beside the adapter wins, as it is the one training used."""
    from types import SimpleNamespace

    from trl import ModelConfig

    model_args = ModelConfig(model_name_or_path=args.model_name_or_path, dtype=args.dtype,
                             attn_implementation=args.attn_implementation, load_in_4bit=args.load_in_4bit)
    model, tokenizer = load_model_and_tokenizer(model_args, SimpleNamespace(trust_remote_code=args.trust_remote_code))
    if args.adapter:
        from peft import PeftModel

        adapter = resolve_adapter(args.adapter)  # a local dir, or the Hub adapter's snapshot
        if (Path(adapter) / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(adapter)
        restore_hybrid(model, adapter)  # when the base had none (a LoRA SFT of a Hub model)
        model = PeftModel.from_pretrained(model, adapter)
        if not args.load_in_4bit:
            model = model.merge_and_unload()
    from napo.hybrid import tokens

    if tokens.is_parametrized(model) and not args.load_in_4bit:
        tokens.materialize(model)  # the projected rows baked in: same scores, no projection per forward
    return model, tokenizer

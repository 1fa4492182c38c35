"""The Hugging Face Hub side of a run: our model card on every save, one upload per push.

- :class:`RunCardMixin` goes before a TRL trainer in the bases (``NAPOTrainer``,
  :class:`RecSFTTrainer`). It replaces TRL's generic card (``create_model_card``) with
  ``napo.cards`` (method and paper by ``loss_type``, base model's Hub id, LoRA / quantization,
  dataset, objective, command, versions), writes it on every ``save_model``, and makes
  ``save_model`` never upload: transformers' ``save_model`` pushes when ``push_to_hub`` is set and
  ``push_to_hub`` saves again, so a script's save-then-push uploaded twice. A push is now one
  ``create_repo`` (at trainer creation, or in ``push_to_hub`` when none was made) and one
  ``upload_folder``. (``hub_strategy`` checkpoint pushes during training are transformers' own.)
- :func:`hub_id_of` finds the Hub id behind what was loaded (a Hub id, a Hub cache snapshot, an
  adapter directory); a local-only model has none and the card says so.
- :func:`push_folder` uploads a directory once (napo-export; data_prep.push does the same for datasets).
- Hybrid item embeddings (``napo.hybrid``): the mixin saves a full model in the standard layout
  (projected item rows baked in, no encoder keys) with the encoder's own files beside it, and
  resumes such a model from its checkpoint; :class:`RecSFTTrainer` feeds LLaRA's placeholder
  batches to the model as ``inputs_embeds``.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from trl import SFTTrainer
from trl.trainer import utils as trl_utils

from napo.cards import command_line, read_card, write_card
from napo.utils import package_versions

ADAPTER_CONFIG = "adapter_config.json"
_CACHE_DIR = re.compile(r"^(models|datasets)--(.+)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id_of(name_or_path: str | None) -> str | None:
    """The Hub id behind ``name_or_path``, or None for a model that exists only locally.

    A Hub id is returned as is; a Hub cache snapshot (``.../models--org--name/snapshots/REV``)
    gives ``org/name``; an adapter directory gives its base's id; a local directory whose card
    records where it was pushed (``hub_model_id``) gives that; any other local path gives None.
    """
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if path.exists():
        for part in reversed(path.resolve().parts):
            match = _CACHE_DIR.match(part)
            if match:
                return match.group(2).replace("--", "/")
        if (path / ADAPTER_CONFIG).is_file():
            return hub_id_of(json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path"))
        return (read_card(path) or {}).get("hub_model_id")
    text = str(name_or_path)
    return text if _HUB_ID.match(text) and not text.startswith(".") else None


def base_model_facts(loaded: str, init_adapter: str | None = None) -> dict:
    """The card's base-model fields for a model loaded from ``loaded`` (Hub id, local dir, or
    adapter dir whose base is then the base), recorded at load time."""
    base_path = loaded
    if loaded and (Path(loaded) / ADAPTER_CONFIG).is_file():
        base_path = json.loads((Path(loaded) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        init_adapter = init_adapter or loaded
    facts = {"base_model": hub_id_of(base_path), "base_model_path": _absolute(base_path)}
    if init_adapter:
        facts["init_adapter"] = _absolute(init_adapter)
    return facts


def _absolute(name_or_path: str | None) -> str | None:
    """A local path made absolute (valid from any working directory); a Hub id or None as is."""
    if not name_or_path:
        return None
    return str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else str(name_or_path)


def adapter_facts(model: Any) -> dict | None:
    """LoRA settings of the trained adapter ("default"), or None for a model without adapter."""
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict) or "default" not in peft_config:
        return None
    cfg = peft_config["default"]
    targets = cfg.target_modules
    return {
        "r": cfg.r,
        "alpha": cfg.lora_alpha,
        "dropout": cfg.lora_dropout,
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
    }


def quantization_facts(model: Any) -> str | None:
    """One line describing a bitsandbytes-quantized base, or None."""
    config = getattr(model, "config", None)
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    if qc.get("load_in_4bit"):
        return (f"4-bit {qc.get('bnb_4bit_quant_type', 'fp4')} base (bitsandbytes, QLoRA), compute dtype "
                f"{qc.get('bnb_4bit_compute_dtype')}, double quantization {bool(qc.get('bnb_4bit_use_double_quant'))}")
    if qc.get("load_in_8bit"):
        return "8-bit base (bitsandbytes LLM.int8)"
    return f"{qc.get('quant_method', 'quantized')} base"


_OBJECTIVE_KEYS = {
    "dpo": ("loss_type", "beta", "num_negatives", "reference", "negative_sampling", "length_normalize"),
    "sdpo": ("loss_type", "beta", "num_negatives", "reference", "negative_sampling", "length_normalize"),
    "napo": ("loss_type", "beta", "num_negatives", "reference", "negative_sampling", "length_normalize",
             "share_negatives", "share_ratio", "similarity", "share_mode", "napo_mode", "gamma0",
             "margin_alpha", "margin_momentum", "margin_mode", "margin_clamp", "detach_negatives",
             "mask_collisions", "margin_form", "margin_scores", "disable_dropout"),
}
_TRAINING_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_ratio", "num_train_epochs", "max_steps",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "seed")


def objective_facts(args: Any, method: str) -> dict:
    if method == "sft":
        return {"loss": "negative log-likelihood of the completion (prompt masked)"
                if getattr(args, "completion_only_loss", None) is not False else "negative log-likelihood",
                "max_length": getattr(args, "max_length", None)}
    return {k: getattr(args, k) for k in _OBJECTIVE_KEYS[method] if hasattr(args, k)}


def record_base_in_adapter_config(output_dir: str | Path, hub_id: str | None) -> None:
    """Adapter configs name their base so that ``AutoPeftModelForCausalLM.from_pretrained`` works from
    anywhere: the Hub id when the base came from the Hub (PEFT stores a Hub cache snapshot path,
    useless on another machine), else the absolute path (PEFT stores the path as it was given,
    relative to the training run's working directory). Applies to ``output_dir`` and the adapters
    saved one level below it (the frozen reference copy ``ref/``)."""
    root = Path(output_dir)
    for path in [root / ADAPTER_CONFIG, *sorted(root.glob(f"*/{ADAPTER_CONFIG}"))]:
        if not path.is_file():
            continue
        config = json.loads(path.read_text())
        stored = config.get("base_model_name_or_path")
        if not stored or not Path(stored).exists():
            continue  # a Hub id already (or a path that no longer exists: nothing better to write)
        if hub_id is not None and hub_id_of(stored) == hub_id:
            wanted = hub_id
        else:
            wanted = str(Path(stored).resolve())
        if wanted != stored:
            config["base_model_name_or_path"] = wanted
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class RunCardMixin:
    """Our model card on every save; ``save_model`` never uploads (see the module docstring).

    Also, for every trainer that has it (scripts and Python users alike): the distributed strategy
    that really runs is checked against the launch (``napo.distributed.check_strategy``, one line
    when they differ) and kept as ``trainer.strategy``; the curves, state and final metrics are kept
    in the output directory (``napo.tracking.LogHistoryCallback``).

    Set ``trainer.card_info`` (dataset facts, base-model facts, ...) before training; the rest is
    read from the trainer (method from ``loss_type``, adapter, quantization, settings, results).
    """

    card_info: dict | None = None
    strategy: dict | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from napo.tracking import LogHistoryCallback

        self.add_callback(LogHistoryCallback(self))

    def create_accelerator_and_postprocess(self) -> None:
        from napo.distributed import check_strategy

        super().create_accelerator_and_postprocess()
        self.strategy = check_strategy(self.accelerator)

    def card_method(self) -> str:
        from napo.config import NAPOConfig

        return self.args.loss_type if isinstance(self.args, NAPOConfig) else "sft"

    def _objective(self, method: str) -> dict:
        """The objective's settings as trained: K is what the data gives (TRL's pairs: one)."""
        from napo.collator import rejected_counts

        objective = objective_facts(self.args, method)
        counts = rejected_counts(getattr(self, "train_dataset", None)) if method != "sft" else None
        if counts is not None:
            fewest, most = counts
            objective["num_negatives"] = min(self.args.num_negatives, most)
            objective["rejected_per_row"] = str(most) if fewest == most else f"{fewest}-{most}"
        return objective

    def _training(self) -> dict:
        from napo.distributed import describe

        args = self.args
        training = {k: getattr(getattr(args, k), "value", getattr(args, k)) for k in _TRAINING_KEYS if hasattr(args, k)}
        if args.max_steps > 0:  # transformers then ignores num_train_epochs: do not show it as if it counted
            training.pop("num_train_epochs", None)
            training["length"] = "max_steps (num_train_epochs is not used)"
        else:
            training.pop("max_steps", None)
            training["length"] = "num_train_epochs"
        training["epochs_trained"] = round(float(self.state.epoch or 0.0), 4)
        training["global_step"] = self.state.global_step
        if self.strategy is not None:
            training["strategy"] = describe(self.strategy)
        training["num_processes"] = args.world_size
        return training

    def model_card_record(self, model_name: str | None = None) -> dict:
        from napo.tracking import final_metrics

        args = self.args
        method = self.card_method()
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        hub_model_id = getattr(self, "hub_model_id", None) or args.hub_model_id
        record = {
            "method": method,
            "model_name": model_name or (hub_model_id.split("/")[-1] if hub_model_id else Path(args.output_dir).name),
            "hub_model_id": hub_model_id if args.push_to_hub or getattr(self, "hub_model_id", None) else None,
            "adapter": adapter_facts(model),
            "quantization": quantization_facts(model),
            "objective": self._objective(method),
            "training": self._training(),
            "results": final_metrics(self.state.log_history),
            "command": command_line(),
            "versions": package_versions(),
            "evaluations": [],
        }
        record.update(self.card_info or {})
        previous = read_card(args.output_dir) or {}
        if (previous.get("training") or {}).get("global_step") == self.state.global_step:
            record["evaluations"] = previous.get("evaluations", [])  # same weights: evaluations still hold
        return record

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, **kwargs):
        """Write OUT/README.md (and OUT/napo_card.json) with ``napo.cards`` instead of TRL's card."""
        if not self.is_world_process_zero():
            return
        write_card(self.args.output_dir, self.model_card_record(model_name))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """transformers' save, plus the hybrid item encoder's files (``napo.hybrid``) beside the
        weights; a full model with an encoder is saved in the standard layout."""
        from peft import PeftModel

        from napo import hybrid
        from napo.hybrid import tokens

        model = self.accelerator.unwrap_model(self.model)
        attached = hybrid.encoder_of(model) is not None
        if state_dict is None and attached and not isinstance(model, PeftModel):
            state_dict = tokens.plain_state_dict(model)
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            hybrid.save(model, output_dir if output_dir is not None else self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """A full model with a hybrid encoder: weights from the standard-layout checkpoint, the
        projector from the encoder's file (transformers' loader would skip the parametrized rows)."""
        from peft import PeftModel
        from safetensors.torch import load_file

        from napo import hybrid
        from napo.hybrid import tokens

        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        encoder = hybrid.encoder_of(target)
        if encoder is None or isinstance(target, PeftModel):  # PEFT restores modules_to_save itself
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        state = load_file(str(Path(resume_from_checkpoint) / "model.safetensors"))
        if tokens.is_parametrized(target):
            tokens.load_plain_state_dict(target, state)
        else:
            missing, unexpected = hybrid.encoder.transformers_model(target).load_state_dict(state, strict=False)
            if [k for k in missing if not k.startswith(hybrid.ENCODER_ATTR)] or unexpected:
                raise hybrid.HybridError(f"{resume_from_checkpoint}: checkpoint does not match the model")
        saved = hybrid.encoder.load_encoder(resume_from_checkpoint)
        encoder.projector.load_state_dict(saved.projector.state_dict())

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save weights, tokenizer and card; never upload (``push_to_hub`` is the one upload)."""
        super().save_model(output_dir, _internal_call=True)
        if self.is_world_process_zero():
            target = output_dir or self.args.output_dir
            record_base_in_adapter_config(target, (self.card_info or {}).get("base_model"))
            if Path(target).resolve() == Path(self.args.output_dir).resolve():
                self.create_model_card()


# Devices that run eagerly: a varying number of scored positions costs nothing there (TRL keeps the
# full projection elsewhere, e.g. XLA / Neuron, where a new tile shape means a recompilation).
_EAGER_DEVICES = ("cpu", "cuda", "xpu", "mps")


@contextmanager
def compact_fused_head():
    """Make TRL's fused LM head project only the positions whose label is not -100, on any eager device.

    TRL 1.16's ``add_fused_lm_head`` does so only where Triton runs (``compact =
    _use_triton(device)``); on a CPU it projects every position through the full vocabulary and
    zeroes the ignored ones afterwards. With prompt-masked SFT data (a long candidate-list prompt,
    a completion of an item token and EOS) almost all of that work is thrown away. The per-token
    values of the kept positions are the same either way (each row of the chunked log-softmax is
    computed on its own), so the loss, its gradient and the logged entropy / token accuracy are
    unchanged up to float rounding (tests/test_hub.py compares one step of both paths). Only the
    name ``_use_triton`` of ``trl.trainer.utils`` is swapped, for the duration of the block; the
    kernels' own device choice is untouched (tests/test_trl_contract.py pins the hook).
    """
    stock = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type in _EAGER_DEVICES or stock(device)
    try:
        yield
    finally:
        trl_utils._use_triton = stock


class RecSFTTrainer(RunCardMixin, SFTTrainer):
    """TRL's SFTTrainer with our model card, a single upload per push, and the fused LM head
    scoring only the completion positions on every eager device (:func:`compact_fused_head`)."""

    _tag_names = ["trl", "sft", "recommendation"]
    compact_head: bool = True  # False: TRL's own choice (a full projection on CPUs), for comparisons
    extra_columns: tuple[str, ...] = ()  # dataset columns the collator reads (placeholders: item ids)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns,
                                   *(c for c in self.extra_columns if c not in self._signature_columns)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if getattr(self.args, "item_softmax", False):
            return self._item_softmax_loss(model, inputs, return_outputs, num_items_in_batch)
        if "position_items" in inputs:  # a hybrid batch of LLaRA's placeholder prompts
            from napo.hybrid.placeholders import embed

            inputs = dict(inputs)
            items = inputs.pop("position_items")
            inputs["inputs_embeds"] = embed(model, inputs.pop("input_ids"), items)
        if not self.compact_head:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with compact_fused_head():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _item_softmax_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """`item_softmax`: -log softmax over the item-token rows of the target item, at the answer
        position (the last prompt token; `napo.scoring.answer_logps` on the prompts alone, since
        the completion tokens are not needed). Normalised like TRL's token loss: each example
        weighs its number of label tokens over ``num_items_in_batch`` (all item-token examples
        have two, item + EOS, so this is the mean over the accumulated batch), or the batch mean."""
        from napo.item_tokens import item_softmax_loss, vocabulary_item_rows
        from napo.scoring import answer_logps, left_padded_prompts

        mode = "train" if self.model.training else "eval"
        if getattr(self, "_item_rows", None) is None:
            self._item_rows = vocabulary_item_rows(self.processing_class)[1]
        labels = inputs["labels"]
        keep = labels != -100  # [B, T]
        rows = keep.any(1)  # an example truncated to its prompt has nothing to learn
        first = keep.int().argmax(1)  # the first completion token
        prompts = [ids[:f].tolist() for ids, f, r in zip(inputs["input_ids"], first.tolist(), rows.tolist(),
                                                            strict=True) if r]
        batch = left_padded_prompts(prompts, self.processing_class.pad_token_id)
        logps = answer_logps(model, batch)  # [b, V]
        targets = labels[rows, first[rows]]  # [b] the item token
        losses = item_softmax_loss(logps, targets, self._item_rows)  # [b]
        if num_items_in_batch is not None:
            loss = (losses * keep[rows].sum(1)).sum() / torch.as_tensor(num_items_in_batch).clamp(min=1)
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        else:
            loss = losses.mean() if len(losses) else logps.sum() * 0.0
        with torch.no_grad():
            item_logits = logps[:, self._item_rows.to(logps.device)]
            hit = (self._item_rows.to(logps.device)[item_logits.argmax(1)] == targets).float()
        hits = self.accelerator.gather_for_metrics(hit.sum()).sum()
        count = self.accelerator.gather_for_metrics(torch.tensor(float(len(hit)), device=hit.device)).sum()
        self._metrics[mode]["item_accuracy"].append((hits / count.clamp(min=1)).item())
        return (loss, {"logits": logps}) if return_outputs else loss


def push_folder(folder: str | Path, repo_id: str, *, repo_type: str = "model", private: bool | None = None,
                token: str | None = None, commit_message: str = "Upload with napo") -> Any:
    """One ``create_repo`` (exist_ok) and one ``upload_folder`` of ``folder``; returns the commit."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder),
                             repo_type=repo_type, commit_message=commit_message)

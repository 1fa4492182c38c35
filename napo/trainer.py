"""NAPOTrainer: TRL's DPOTrainer with a listwise objective (DPO, S-DPO and NAPO are settings).

The training loop, optimizer, checkpointing, logging and Hub integration are TRL's / transformers'.
This class replaces only what a listwise objective must (each pinned by tests/test_trl_contract.py):

- ``_prepare_dataset``: tokenize prompt + chosen + all R rejected titles once (napo.collator);
- the data collator: ``napo.collator.ListwiseCollator`` (K negatives drawn per example);
- ``_set_signature_columns_if_needed``: the tokenized / auxiliary columns;
- ``_precompute_ref_logps``: reference log-probs of all 1+R completions, one pass before training;
- ``compute_loss``: scoring (napo.scoring) -> sharing (napo.sharing) -> margin (napo.margin) ->
  loss (napo.losses), plus metrics (napo.batch_metrics);
- ``prediction_step``: evaluation returns the loss only (there are no logits to return).

The model card and the Hub push are ``napo.hub.RunCardMixin``'s (our card, one upload per push).

The reference is never a second model copy: it is the policy with its LoRA adapter disabled, or,
when the policy continues a pretrained (SFT) adapter, TRL's frozen copy of that adapter named
"ref" (created by DPOTrainer.__init__), or precomputed log-probs.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, TrainerCallback
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from napo.auxiliary import load_item_vectors
from napo.batch_metrics import batch_metrics
from napo.checkpoints import resolve_resume
from napo.collator import (
    AUX_SCORES,
    AUX_VECTOR,
    REF_LOGPS,
    TOKENIZED_COLUMNS,
    ListwiseCollator,
    check_num_negatives,
    tokenize_preference_dataset,
)
from napo.config import NAPOConfig, NAPOConfigError
from napo.hub import RunCardMixin
from napo.losses import listwise_preference_loss
from napo.margin import DynamicMargin
from napo.scoring import borrowed_completions, completion_logps
from napo.sharing import borrowed_items, build_pool, gather_pool_ids, rescore_batch

MARGIN_STATE_FILE = "napo_margin.json"


class _EpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so ``negative_sampling: resample`` draws anew."""

    def __init__(self, collator: ListwiseCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class _MarginCheckpointCallback(TrainerCallback):
    """Writes the margin's moving average next to each checkpoint (it is training state)."""

    def __init__(self, trainer: NAPOTrainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.margin is None or not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / MARGIN_STATE_FILE
        if path.parent.is_dir():
            path.write_text(json.dumps(self.trainer.margin.state_dict()))


class NAPOTrainer(RunCardMixin, DPOTrainer):
    """Listwise preference trainer; see the module docstring and ``napo.config.NAPOConfig``.

    Same arguments as ``trl.DPOTrainer`` except ``ref_model`` (must stay None: the reference is
    the adapter-disabled policy, the frozen "ref" adapter, or precomputed) and ``args`` (a
    ``NAPOConfig``). Train/eval datasets are prepared splits (docs/contracts.md), optionally with
    the auxiliary columns of ``napo.collator.add_aux_columns``.
    """

    _tag_names = ["trl", "napo"]
    _name = "NAPO"
    _paper = {
        "title": "Negative-Aware Preference Optimization for LLM-based Recommendation",
        "id": "2508.09653",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{napo2025,
                title        = {{Negative-Aware Preference Optimization for LLM-based Recommendation}},
                year         = 2025,
                eprint       = {arXiv:2508.09653},
            }"""),
    }

    def __init__(
        self,
        model,
        ref_model=None,
        args: NAPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if isinstance(ref_model, NAPOConfig) and args is None:  # NAPOTrainer(model, args, ...): ours has no ref_model
            ref_model, args = None, ref_model
        if ref_model is not None:
            raise ValueError(
                "NAPOTrainer keeps no second model copy: leave ref_model None (the reference is the "
                "adapter-disabled policy, the frozen SFT adapter, or precomputed log-probs)"
            )
        if args is None:
            args = NAPOConfig(output_dir="napo-output")
        if not isinstance(args, NAPOConfig):
            raise TypeError(f"args must be a napo.config.NAPOConfig, got {type(args).__name__}")
        if args.reference == "adapter" and not is_peft_model(model) and peft_config is None:
            raise ValueError(
                "reference 'adapter' needs a LoRA (PEFT) policy: pass peft_config (or a PeftModel), "
                "or set reference to 'precomputed'"
            )
        if processing_class is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "")
            processing_class = AutoTokenizer.from_pretrained(name, trust_remote_code=args.trust_remote_code)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.margin = None
        self._item_titles: dict[int, str] = {}
        self.share_mode = args.pool_mode
        self._item_vectors = None
        if data_collator is None:
            data_collator = ListwiseCollator(
                pad_token_id=tokenizer.pad_token_id,
                num_negatives=args.num_negatives,
                layout=args.scoring,
                negative_sampling=args.negative_sampling,
                seed=args.seed,
                defer_collation=self.share_mode == "rescore",
            )

        # DPOTrainer loads a second model as reference unless the policy is a PeftModel or the
        # reference log-probs are precomputed. A reference-free full fine-tune needs neither, so
        # it passes as "precomputed" through __init__ (our _precompute_ref_logps then does nothing).
        reference_free_full = args.reference == "none" and not is_peft_model(model) and peft_config is None
        if reference_free_full:
            args.precompute_ref_log_probs = True
        try:
            super().__init__(
                model=model,
                ref_model=None,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        finally:
            if reference_free_full:
                args.precompute_ref_log_probs = False
        self.precompute_ref_logps = args.reference == "precomputed"
        self._check_columns(self.train_dataset, "train_dataset")
        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"eval_dataset": self.eval_dataset}
        for name, dataset in evals.items():
            self._check_columns(dataset, name)

        if args.gamma0 != 0.0:
            self.margin = DynamicMargin(
                gamma0=args.gamma0,
                alpha=args.margin_alpha,
                momentum=args.margin_momentum,
                mode=args.margin_mode,
                clamp_min=0.0 if args.margin_clamp else None,
                faithful=args.margin_form == "reference",
            )
        if args.share_negatives and args.margin_mode == "user" and args.margin_alpha > 0 and args.aux_dir:
            # a borrowed item's margin score must be relative to the borrowing user's history
            self._item_vectors = load_item_vectors(args.aux_dir).to(self.accelerator.device)
        if isinstance(self.data_collator, ListwiseCollator) and args.negative_sampling == "resample":
            self.add_callback(_EpochCallback(self.data_collator))
        self.add_callback(_MarginCheckpointCallback(self))
        self.model.add_model_tags([args.loss_type])

    # ------------------------------------------------------------------ datasets and columns

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Tokenize prompt + chosen + every rejected title jointly, once (idempotent; TRL's formats are
        read by napo.collator.listwise_text), and refuse a num_negatives no row can give."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        max_prompt = args.max_prompt_length
        if max_prompt is None and args.max_length is not None:
            max_prompt = max(1, args.max_length - (args.max_completion_length or 0))
        self._max_prompt_length = max_prompt
        with PartialState().main_process_first():
            dataset = tokenize_preference_dataset(
                dataset, tokenizer, max_prompt_length=max_prompt,
                max_completion_length=args.max_completion_length, num_proc=args.dataset_num_proc,
                desc=f"Tokenizing {dataset_name} dataset",
            )
        check_num_negatives(dataset, args.num_negatives, dataset_name)
        if args.share_negatives:
            self._check_item_ids(dataset, dataset_name)
            if args.share_mode == "rescore":
                self._cache_item_titles(dataset)
        return dataset

    @staticmethod
    def _check_item_ids(dataset, name: str) -> None:
        """Sharing compares items by id (collisions, rescoring): rows without ids cannot share."""
        if "item_ids" in dataset.column_names and min((min(ids) for ids in dataset["item_ids"]), default=0) < 0:
            raise NAPOConfigError(
                f"{name} dataset: share_negatives needs item ids (`target` and `candidates` columns) "
                "and some rows have none; prepare the data with data_prep or set share_negatives false"
            )

    def _cache_item_titles(self, dataset) -> None:
        """item id -> title, for tokenizing borrowed items under one's own prompt (rescore)."""
        for ids, chosen, rejected in zip(dataset["item_ids"], dataset["chosen"], dataset["rejected"], strict=True):
            for item, title in zip(ids, [chosen, *rejected], strict=True):
                self._item_titles.setdefault(int(item), title)

    def _check_columns(self, dataset, name: str) -> None:
        if dataset is None or not hasattr(dataset, "column_names"):
            return
        columns = set(dataset.column_names)
        if self.args.share_negatives and AUX_VECTOR not in columns:
            raise ValueError(
                f"share_negatives needs the auxiliary user vectors but {name} has no '{AUX_VECTOR}' "
                "column: join them with napo.collator.add_aux_columns (recipes/napo.py does it from aux_dir)"
            )
        if self.args.gamma0 != 0.0 and self.args.margin_alpha > 0 and AUX_SCORES not in columns:
            raise ValueError(
                f"margin_alpha > 0 needs auxiliary candidate scores but {name} has no '{AUX_SCORES}' "
                "column: join them with napo.collator.add_aux_columns (recipes/napo.py does it from aux_dir)"
            )

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*TOKENIZED_COLUMNS, AUX_VECTOR, AUX_SCORES, REF_LOGPS]
            if self.share_mode == "rescore":  # borrowed titles are tokenized after the own prompt
                self._signature_columns += ["prompt", "chosen", "rejected"]

    # ------------------------------------------------------------------ reference log-probs

    def _reference_context(self, model):
        """The policy as reference: the frozen "ref" adapter if any, else all adapters disabled."""
        unwrapped = self.accelerator.unwrap_model(model)
        if not is_peft_model(unwrapped):
            raise ValueError("reference 'adapter' needs a PEFT policy")
        return use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None)

    @torch.no_grad()
    def _reference_logps(self, model, batch) -> torch.Tensor:
        """[B, M] reference log-probs: no gradient, checkpointing off (as DPOTrainer does) and
        dropout off (eval mode), so the reference is a fixed function of its inputs, the same
        value the precomputed path gives."""
        checkpointing = disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs)
        was_training = model.training
        model.eval()
        try:
            with checkpointing, self._reference_context(model):
                logps, _ = completion_logps(model, batch, length_normalize=self.args.length_normalize)
        finally:
            model.train(was_training)
        return logps

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """Adds ``ref_logps`` [1+R]: reference log-probs of every completion of every row."""
        if self.args.reference != "precomputed" or REF_LOGPS in dataset.column_names:
            return dataset
        collator = ListwiseCollator(
            pad_token_id=self._tokenizer.pad_token_id, num_negatives=None, layout=self.args.scoring
        )
        loader = self.accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False))
        self.model.eval()
        rows = []
        for batch in tqdm(loader, desc=f"Reference log-probs ({name})", disable=not self.accelerator.is_main_process):
            with self.accelerator.autocast():
                logps = self._reference_logps(self.model, batch)  # [b, 1+R]
            logps = self.accelerator.pad_across_processes(logps, dim=1, pad_index=0.0)
            counts = self.accelerator.pad_across_processes(batch["completion_mask"].sum(1), dim=0)
            logps, counts = self.accelerator.gather_for_metrics((logps, counts))
            rows.extend(row[:n].tolist() for row, n in zip(logps.cpu(), counts.tolist(), strict=True))
        self.model.train()
        return dataset.add_column(REF_LOGPS, rows)

    # ------------------------------------------------------------------ the objective

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean listwise loss of the local batch (DDP's gradient averaging makes it the global mean).

        score (one packed or naive forward; with ``rescore`` the borrowed items are appended to
        each example's completions first) -> reference (adapter off / "ref" adapter, or
        precomputed) -> negative pool (``napo.sharing.build_pool``) -> gamma_t (dynamic margin)
        -> ``listwise_preference_loss``.
        """
        args = self.args
        mode = "train" if self.model.training else "eval"
        item_ids = inputs["item_ids"]  # [B, 1+K]
        own_mask = inputs["completion_mask"][:, 1:]  # [B, K]
        aux_scores = inputs.get(AUX_SCORES)  # [B, 1+K] or None
        own_aux = aux_scores[:, 1:] if aux_scores is not None else None

        # Score. With rescore the partners are chosen from the aux vectors before the forward, so
        # that the borrowed items are scored under the example's own prompt in the same pass.
        batch, planned, slot = inputs, None, None
        if self.share_mode == "rescore":
            planned = gather_pool_ids(
                item_ids[:, 1:], own_mask, item_ids[:, 0], inputs[AUX_VECTOR],
                ratio=args.share_ratio, similarity=args.similarity, exclude_collisions=args.mask_collisions,
                extras={"aux": own_aux} if own_aux is not None else None, row_ids=inputs["example_idx"],
            )
            titles = [[self._item_titles[i] for i in row] for row in borrowed_items(planned)]
            listwise, borrowed = borrowed_completions(
                self._tokenizer, inputs["listwise"], titles, max_prompt_length=self._max_prompt_length,
                max_completion_length=args.max_completion_length,
            )
            batch, slot = rescore_batch(listwise, planned, borrowed, self._tokenizer.pad_token_id, args.scoring)
            batch = self._prepare_inputs(batch)
        logps, _ = completion_logps(model, batch, length_normalize=args.length_normalize)  # [B, M]

        # Reference
        ref = None
        if args.reference == "adapter":
            ref = self._reference_logps(model, batch)
        elif args.reference == "precomputed":
            ref = inputs[REF_LOGPS]

        # Pool, margin, loss
        pool = build_pool(
            self.share_mode, logps, ref, item_ids, own_mask, aux_scores=own_aux,
            user_vectors=inputs.get(AUX_VECTOR), planned=planned, slot=slot,
            ratio=args.share_ratio, similarity=args.similarity,
            detach_negatives=args.detach_negatives, differentiable_gather=args.differentiable_gather,
            mask_collisions=args.mask_collisions, item_vectors=self._item_vectors, row_ids=inputs["example_idx"],
        )
        chosen, ref_chosen = logps[:, 0], (ref[:, 0] if ref is not None else None)
        gamma = self._margin(own_aux, own_mask, pool, training=self.model.training)
        losses = listwise_preference_loss(
            chosen, pool.logps, ref_chosen, pool.extras.get("ref"), beta=args.beta, margin=gamma,
            rejected_mask=pool.mask,
        )  # [B]
        loss = losses.mean()

        self._record_metrics(mode, chosen, ref_chosen, pool, gamma)
        if return_outputs:
            return loss, {"losses": losses}  # per example, differentiable
        return loss

    def _margin(self, own_aux, own_mask, pool, *, training: bool):
        """gamma_t: 0-d, [B], or 0.0 without a margin. Called on every process (a collective)."""
        if self.margin is None:
            return 0.0
        if self.args.margin_alpha == 0.0 or own_aux is None:
            return torch.tensor(self.args.gamma0, device=self.accelerator.device)
        if self.args.margin_scores == "pool":
            # each example's pool (the reference code's M_t: partners' scores included, and repeats
            # unless mask_collisions)
            return self.margin(pool.extras["aux"], pool.mask, training=training)
        return self.margin(own_aux, own_mask, training=training)  # every negative of the batch once

    def _record_metrics(self, mode, chosen, ref_chosen, pool, gamma):
        """``napo.batch_metrics``: the reference's ``rewards/*``, ``logps/*`` over the own negatives
        of the LOCAL batch; ``pool/*`` and ``napo/*`` over the GLOBAL batch (one gathered path)."""
        local, stats = batch_metrics(chosen, ref_chosen, pool, gamma, beta=self.args.beta,
                                     margin_state=self.margin.last if self.margin is not None else None)
        gather = self.accelerator.gather
        for group, reduce in ((local, lambda x: x), (stats, gather)):
            for key, (value, weight) in group.items():
                value = reduce(value.float().contiguous())
                if weight is None:
                    self._metrics[mode][key].append(value.mean().item())
                else:
                    weight = reduce(weight.float().contiguous())
                    self._metrics[mode][key].append((value.sum() / weight.sum().clamp(min=1)).item())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the loss only (metrics are recorded by compute_loss; no logits exist)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ margin state on resume

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is True:  # the newest COMPLETE checkpoint, never a half-written one
            resume_from_checkpoint = resolve_resume(self.args.output_dir, True)
        if resume_from_checkpoint and self.margin is not None:
            state_file = Path(resume_from_checkpoint) / MARGIN_STATE_FILE
            if state_file.is_file():
                self.margin.load_state_dict(json.loads(state_file.read_text()))
        return super().train(resume_from_checkpoint, *args, **kwargs)

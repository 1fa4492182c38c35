"""NAPOConfig: TRL's DPOConfig plus the listwise preference settings (DPO, S-DPO, NAPO).

Every field has a default and a one-line help, and is reachable from YAML (`--config`) and the
command line. Fields left at ``None`` take the paper default of the chosen ``loss_type``:

| loss_type | reference | num_negatives | share_negatives | gamma0 | margin_alpha |
|-----------|-----------|---------------|-----------------|--------|--------------|
| dpo       | adapter   | 1             | false           | 0      | 0            |
| sdpo      | adapter   | 3             | false           | 0      | 0            |
| napo      | none      | 3             | true            | 1      | 0.3          |

(beta 1, share_ratio 0.7, margin_momentum 0.9 for all of them.) Validation happens in
``__post_init__`` and raises ``NAPOConfigError`` with one line saying what to change.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from trl import DPOConfig, SFTConfig

from data_prep.errors import UserError

LOSS_TYPES = ("dpo", "sdpo", "napo")
REFERENCES = ("adapter", "precomputed", "none")


class NAPOConfigError(UserError):
    """A one-line, user-facing problem with the preference-training settings."""


@dataclass
class NAPOConfig(DPOConfig):
    """Settings of ``napo.trainer.NAPOTrainer``; see the module docstring for per-loss defaults."""

    # --- the objective -----------------------------------------------------------------------
    loss_type: str = field(
        default="napo",
        metadata={
            "help": "Preference loss: 'dpo' (one negative, reference), 'sdpo' (softmax DPO over K "
            "negatives, reference) or 'napo' (reference-free, shared negatives, dynamic margin).",
            "choices": list(LOSS_TYPES),
        },
    )
    beta: float = field(
        default=1.0,
        metadata={"help": "Inverse temperature beta of the implicit reward (the papers use 1)."},
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "Initial AdamW learning rate (the papers use 1e-5, cosine, 5% warmup)."},
    )
    num_negatives: int | None = field(
        default=None,
        metadata={
            "help": "K, the negatives drawn per example from its `rejected` titles (None: 1 for "
            "dpo, 3 otherwise)."
        },
    )
    negative_sampling: str = field(
        default="fixed",
        metadata={
            "help": "'fixed': the K negatives of an example are drawn once (from seed and row "
            "index) and kept every epoch, as in the papers; 'resample': drawn anew each epoch.",
            "choices": ["fixed", "resample"],
        },
    )
    reference: str | None = field(
        default=None,
        metadata={
            "help": "Reference log-probs: 'adapter' (the policy with the LoRA adapter disabled, or "
            "the frozen copy of the SFT adapter), 'precomputed' (one pass before training), "
            "'none' (reference-free). None: 'none' for napo, 'adapter' otherwise.",
            "choices": [*REFERENCES, None],
        },
    )

    # --- scoring ------------------------------------------------------------------------------
    scoring: str = field(
        default="packed",
        metadata={
            "help": "'packed': prompt encoded once, all completions attend to it in one row; "
            "'naive': one padded row per (prompt, completion). Both give the same log-probs. "
            "'answer' (item-token data): one forward of the prompt, each completion scored by its item "
            "token at the answer position (EOS not scored), so every negative, borrowed ones too, is free.",
            "choices": ["packed", "naive", "answer"],
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Prompt tokens kept (truncated from the left, BOS kept); None: max_length - "
            "max_completion_length."
        },
    )
    max_completion_length: int | None = field(
        default=64,
        metadata={"help": "Completion tokens kept (truncated from the right, EOS included)."},
    )
    length_normalize: bool = field(
        default=False,
        metadata={"help": "Average completion log-probs over tokens instead of summing them."},
    )

    # --- NAPO: in-batch negative sharing -----------------------------------------------------
    share_negatives: bool | None = field(
        default=None,
        metadata={
            "help": "Extend each example's negatives with those of its most similar examples in "
            "the global batch (None: true for napo, false otherwise)."
        },
    )
    share_ratio: float = field(
        default=0.7,
        metadata={"help": "rho: each example takes the negatives of floor(rho * (N - 1)) partners."},
    )
    similarity: str = field(
        default="dot",
        metadata={
            "help": "Similarity of the auxiliary user vectors used to pick partners.",
            "choices": ["dot", "cosine"],
        },
    )
    share_mode: str | None = field(
        default=None,
        metadata={
            "help": "'rescore': borrowed items are scored under the example's OWN prompt (the pool "
            "is a softmax over the user's own candidates; default); 'reuse': they keep the log-probs "
            "computed under the partner's prompt (the paper's shortcut, no extra tokens; with "
            "gradients on, pushing them down moves the PARTNER's context). None: rescore, or "
            "reuse with napo_mode faithful.",
            "choices": ["reuse", "rescore"],
        },
    )
    napo_mode: str = field(
        default="corrected",
        metadata={
            "help": "'corrected': every negative keeps its gradient, shared items equal to the "
            "user's positive or repeated in the pool are masked, gamma_t compares with earlier "
            "batches; 'faithful': the NAPO reference code point by point (negatives detached, "
            "reused log-probs, no collision masking, its margin order; see docs/reproduction.md).",
            "choices": ["corrected", "faithful"],
        },
    )
    differentiable_gather: bool = field(
        default=True,
        metadata={
            "help": "Let gradients of negatives shared from other processes flow back to them "
            "(otherwise they are detached)."
        },
    )

    # --- NAPO: dynamic margin ----------------------------------------------------------------
    gamma0: float | None = field(
        default=None,
        metadata={"help": "Base margin gamma0 (None: 1 for napo, 0 otherwise)."},
    )
    margin_alpha: float | None = field(
        default=None,
        metadata={
            "help": "alpha in gamma_t = gamma0 * (1 - alpha * (M_t - M_bar)); 0 keeps gamma0 "
            "fixed (None: 0.3 for napo, 0 otherwise)."
        },
    )
    margin_momentum: float = field(
        default=0.9,
        metadata={"help": "Momentum m of the moving average M_bar of the negatives' aux scores."},
    )
    margin_mode: str = field(
        default="batch",
        metadata={
            "help": "'batch': one M_t per global batch (paper); 'user': M_t per example, from the "
            "aux scores of its own pool.",
            "choices": ["batch", "user"],
        },
    )
    margin_clamp: bool = field(
        default=True,
        metadata={"help": "Clamp gamma_t at 0 (the reference code lets it go negative)."},
    )
    aux_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the auxiliary recommender outputs (OUT/aux of recipes/recsys.py): "
            "user vectors for sharing and candidate scores for the margin."
        },
    )

    # --- TrainingArguments defaults that do not suit this trainer ----------------------------
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: the collator needs the item ids and auxiliary columns."},
    )

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. None: on when fp16 is off and a CUDA device supports bf16, "
            "otherwise off (TRL turns it on unconditionally, which fails on a CPU)."
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            import torch

            self.bf16 = bool(not self.fp16 and not self.use_cpu and torch.cuda.is_available()
                             and torch.cuda.is_bf16_supported())
        self._fill_loss_defaults()
        self._validate()
        super().__post_init__()
        # DPOConfig turns a string loss_type into a list of TRL loss names; ours is one word.
        if isinstance(self.loss_type, list):
            self.loss_type = self.loss_type[0]

    def _fill_loss_defaults(self) -> None:
        if isinstance(self.loss_type, list):  # a DPOConfig-style list: accept one entry only
            if len(self.loss_type) != 1:
                raise NAPOConfigError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type}")
            self.loss_type = self.loss_type[0]
        if self.loss_type not in LOSS_TYPES:
            hint = difflib.get_close_matches(str(self.loss_type), LOSS_TYPES, n=1)
            raise NAPOConfigError(
                f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        napo = self.loss_type == "napo"
        if self.reference is None:
            if self.precompute_ref_log_probs and not napo:
                self.reference = "precomputed"
            else:
                self.reference = "none" if napo else "adapter"
        if self.num_negatives is None:
            self.num_negatives = 1 if self.loss_type == "dpo" else 3
        if self.share_negatives is None:
            self.share_negatives = napo
        if self.share_mode is None:
            self.share_mode = "reuse" if self.napo_mode == "faithful" else "rescore"
        if self.gamma0 is None:
            self.gamma0 = 1.0 if napo else 0.0
        if self.margin_alpha is None:
            self.margin_alpha = 0.3 if napo else 0.0
        # TRL's own switch for the precomputed reference path mirrors ours.
        self.precompute_ref_log_probs = self.reference == "precomputed"

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise NAPOConfigError(message)

        if self.reference not in REFERENCES:
            fail(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if self.loss_type == "dpo" and self.num_negatives != 1:
            fail(
                f"loss_type 'dpo' uses exactly one negative, got num_negatives={self.num_negatives}: "
                "use loss_type 'sdpo' for several negatives"
            )
        if self.num_negatives < 1:
            fail(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.loss_type in ("dpo", "sdpo") and self.reference == "none":
            fail(f"loss_type '{self.loss_type}' needs a reference: set reference to adapter or precomputed")
        if self.beta <= 0:
            fail(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.share_ratio <= 1.0:
            fail(f"share_ratio (rho) must be in [0, 1], got {self.share_ratio}")
        if not 0.0 <= self.margin_momentum < 1.0:
            fail(f"margin_momentum must be in [0, 1), got {self.margin_momentum}")
        if self.margin_alpha < 0:
            fail(f"margin_alpha must be >= 0, got {self.margin_alpha}")
        uses_margin = self.margin_alpha > 0
        if (self.share_negatives or uses_margin) and not self.aux_dir:
            needs = " and ".join(
                n for n, on in (("share_negatives", self.share_negatives), ("margin_alpha > 0", uses_margin)) if on
            )
            fail(
                f"{needs} need the auxiliary recommender outputs: set aux_dir (OUT/aux of "
                "recipes/recsys.py), or set share_negatives false and margin_alpha 0"
            )
        if self.share_negatives and self.share_mode == "rescore" and self.reference == "precomputed":
            fail(
                "share_mode 'rescore' scores shared negatives under the example's own prompt, which has "
                "no precomputed reference: use reference 'adapter' or share_mode 'reuse'"
            )
        if self.napo_mode == "faithful":
            if self.loss_type != "napo":
                fail(f"napo_mode 'faithful' reproduces the NAPO reference code: it needs loss_type 'napo', got {self.loss_type!r}")
            if self.share_negatives and self.share_mode != "reuse":
                fail("napo_mode 'faithful' reuses the partners' log-probs as the reference code does: "
                     "set share_mode reuse (or leave it unset)")
            if self.margin_mode != "batch":
                fail("napo_mode 'faithful' has the reference code's one margin per batch: set margin_mode batch")
        if self.negative_sampling == "resample" and self.dataloader_persistent_workers:
            fail(
                "negative_sampling 'resample' draws negatives in the collator each epoch, which persistent "
                "dataloader workers would not see: set dataloader_persistent_workers false"
            )

    @property
    def pool_mode(self) -> str:
        """How the negative pool is built: 'none', 'reuse' or 'rescore' (napo.sharing.build_pool)."""
        return self.share_mode if self.share_negatives else "none"

    @property
    def detach_negatives(self) -> bool:
        """napo_mode 'faithful': every negative's log-prob is detached, as in the reference code."""
        return self.napo_mode == "faithful"


@dataclass
class AdapterArguments:
    """Where the preference stage starts from (recipes/napo.py)."""

    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Output of the SFT stage (recipes/sft.py). A LoRA adapter directory is loaded on "
            "its base model and trained further, a frozen copy of it being the reference; a full "
            "model directory gets a fresh LoRA (use_peft, lora_*), the adapter-disabled SFT model "
            "being the reference. None: start from model_name_or_path."
        },
    )



@dataclass
class DatasetArguments:
    """Which dataset an LLM script trains on: a prepared directory (docs/contracts.md) or any
    preference / prompt-completion dataset that ``datasets.load_dataset`` reads (Hub id or path)."""

    dataset_dir: str | None = field(
        default=None, metadata={"help": "Prepared dataset directory (output of `python -m data_prep`)."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Instead of dataset_dir: a Hub dataset id or a local path read with "
            "datasets.load_dataset (TRL's prompt/chosen/rejected, rejected a string or a list; "
            "prompt/completion for SFT). No item ids: sharing and the dynamic margin are refused."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "With dataset_name: the dataset's configuration (subset) name."}
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "With dataset_name: the Hub revision (branch, tag or commit)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="valid", metadata={"help": "Split used for evaluation during training."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (None: all)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation rows (None: all)."}
    )

    def __post_init__(self):
        if (self.dataset_dir is None) == (self.dataset_name is None):
            raise UserError(
                "give exactly one of dataset_dir (a prepared directory) and dataset_name (a Hub id or "
                "a path for datasets.load_dataset), in the config or as --dataset_dir / --dataset_name"
            )

    @property
    def source(self) -> str:
        """The dataset as the user named it (for messages and model cards)."""
        return self.dataset_dir or self.dataset_name


@dataclass
class RecSFTConfig(SFTConfig):
    """TRL's SFTConfig plus the recommender's SFT objective (`napo-sft`)."""

    item_softmax: bool = field(
        default=False,
        metadata={
            "help": "Item-token data: train the cross-entropy of the target item over the item-token rows of "
            "the LM head only, at the answer position (SASRec's full softmax over the catalogue), instead of "
            "the next-token loss over the whole vocabulary on the item token and EOS."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.item_softmax and (self.packing or self.padding_free):
            raise NAPOConfigError("item_softmax reads each example's answer position from its own padded row: "
                                  "set packing false and padding_free false")

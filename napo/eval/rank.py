"""`rank` evaluation: score every candidate completion with the LLM and rank by log-likelihood.

For each example the C candidate titles (in candidate order) are the completions of its prompt,
tokenized and scored by `napo.scoring` exactly as in training (so the packed layout encodes the
prompt once for all C candidates). The score of candidate c is the summed log-prob of its tokens
(title + EOS), or their mean with `length_normalize=True`. There is no invalid output: every
example gets a full ranking of its candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from napo.eval.rows import candidate_completions
from napo.hybrid.placeholders import placeholder_ids, scoring_items, uses_placeholders
from napo.scoring import collate_listwise, completion_logps, tokenize_listwise


class LikelihoodScorer:
    """A `CandidateScorer` (see `napo.eval.scorers`) backed by a causal LM.

    Args:
        model: a transformers causal LM, possibly PEFT-wrapped. It is put in eval mode.
        tokenizer: its tokenizer (needs eos and pad tokens; pad falls back to eos).
        layout: "packed" (one row per prompt, default) or "naive" (one row per candidate);
            they give the same scores up to float rounding.
        length_normalize: mean instead of summed token log-probs.
        completion_prefix: text put between the prompt and each title, as in training.
        max_prompt_length / max_completion_length: token truncation, as in `tokenize_listwise`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        layout: str = "packed",
        length_normalize: bool = False,
        completion_prefix: str = "",
        max_prompt_length: int | None = None,
        max_completion_length: int | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.layout = layout
        self.length_normalize = length_normalize
        self.completion_prefix = completion_prefix
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        self.pad_token_id = pad
        self.placeholder_ids = placeholder_ids(tokenizer) if uses_placeholders(model) else None

    def tokenize(self, batch: dict[str, list]) -> list[dict]:
        """prompt_ids and the C completion_ids (title + EOS) of each example of the batch."""
        return tokenize_listwise(
            self.tokenizer,
            list(batch["prompt"]),
            candidate_completions(batch, self.completion_prefix),
            max_prompt_length=self.max_prompt_length,
            max_completion_length=self.max_completion_length,
        )

    @torch.no_grad()
    def __call__(self, batch: dict[str, list], indices: Sequence[int]) -> torch.Tensor:
        """Scores [n, C] float32 on the CPU: log-likelihood of each candidate (candidate order)."""
        examples = self.tokenize(batch)
        collated = collate_listwise(examples, self.pad_token_id, self.layout)
        if self.placeholder_ids is not None:  # LLaRA's placeholders get the projected item vectors
            collated["position_items"] = scoring_items(collated, batch["history"], batch["candidates"],
                                                       self.placeholder_ids)
        logps, _ = completion_logps(self.model, collated, length_normalize=self.length_normalize)
        return logps.float().cpu()

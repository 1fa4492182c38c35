"""`generate` evaluation (the papers' protocol): greedy decoding, then match the answer to a title.

Decoding uses an explicit `GenerationConfig` (greedy: no sampling, one beam, no repetition
penalty, `max_new_tokens` default 20). It is swapped in as the model's generation config for the
call, so nothing is inherited from a checkpoint's `generation_config.json` (a chat model's
sampling temperature, say). Prompts are left-padded and start from exactly the token ids the
`rank` scorer conditions on (`napo.scoring.tokenize_listwise` with the candidate completions), so
the two modes see the same prefix. The answer is the decoding of the GENERATED ids only (cut at
the first EOS), never a slice of the decoded prompt. Matching is `napo.eval.matching.match_answer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from transformers import GenerationConfig

from napo.eval.rows import candidate_completions
from napo.hybrid.placeholders import embed, placeholder_ids, position_items, uses_placeholders
from napo.scoring import left_padded_prompts, tokenize_listwise


def greedy_config(tokenizer, max_new_tokens: int = 20) -> GenerationConfig:
    """The explicit greedy generation config used by the evaluator."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


def _generating_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model whose generation config `generate` reads (under PEFT wrappers)."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module") and not hasattr(inner, "generation_config"):
            inner = inner.module
        else:
            break
    return inner


@contextmanager
def use_generation_config(model: torch.nn.Module, config: GenerationConfig):
    inner = _generating_model(model)
    saved = getattr(inner, "generation_config", None)
    inner.generation_config = config
    try:
        yield
    finally:
        inner.generation_config = saved


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [n, T] and attention_mask [n, T] with every sequence aligned to the right."""
    padded = left_padded_prompts(sequences, pad_token_id)
    return padded["input_ids"], padded["attention_mask"]


class GreedyGenerator:
    """An `AnswerGenerator` (see `napo.eval.scorers`) backed by a causal LM.

    Args:
        model, tokenizer: a transformers causal LM (possibly PEFT-wrapped) and its tokenizer.
        max_new_tokens: generation budget per answer (the papers use 20).
        completion_prefix, max_prompt_length: as for `LikelihoodScorer`, so both modes start
            from the same prompt ids.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_new_tokens: int = 20,
                 completion_prefix: str = "", max_prompt_length: int | None = None):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token: generation could not stop; set tokenizer.eos_token")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.completion_prefix = completion_prefix
        self.max_prompt_length = max_prompt_length
        self.generation_config = greedy_config(tokenizer, max_new_tokens)
        self.placeholder_ids = placeholder_ids(tokenizer) if uses_placeholders(model) else None

    def prompt_ids(self, batch: dict[str, list]) -> list[list[int]]:
        """The prompt token ids of each example, identical to those the `rank` scorer uses."""
        examples = tokenize_listwise(
            self.tokenizer, list(batch["prompt"]),
            candidate_completions(batch, self.completion_prefix),
            max_prompt_length=self.max_prompt_length,
        )
        return [ex["prompt_ids"] for ex in examples]

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, list]) -> list[list[int]]:
        """Generated token ids of each example, up to and including the first EOS (if any)."""
        prompts = self.prompt_ids(batch)
        pad = self.generation_config.pad_token_id
        input_ids, attention_mask = left_pad(prompts, pad)
        device = next(self.model.parameters()).device
        extra = {}
        if self.placeholder_ids is not None:  # LLaRA: the prompt goes in as embeddings (napo.hybrid)
            rows = [{"history": h, "candidates": c} for h, c in zip(batch["history"], batch["candidates"], strict=True)]
            items = position_items(input_ids, rows, self.placeholder_ids)
            extra["inputs_embeds"] = embed(self.model, input_ids.to(device), items.to(device))
        with use_generation_config(self.model, self.generation_config):
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=self.generation_config,
                **extra,
            )
        generated = out[:, input_ids.shape[1]:].cpu().tolist()
        eos = self.generation_config.eos_token_id
        eos_ids = set(eos) if isinstance(eos, list) else {eos}
        answers = []
        for ids in generated:
            cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
            answers.append(ids if cut is None else ids[: cut + 1])
        return answers

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text of generated ids (special tokens such as EOS dropped)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def __call__(self, batch: dict[str, list], indices: Sequence[int]) -> list[str]:
        return [self.decode(ids) for ids in self.generate_ids(batch)]

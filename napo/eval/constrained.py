"""Constrained greedy decoding: every answer is a real item (`--constrain candidates|catalogue`).

The allowed answers of a row are token-id sequences, each a title (or item token) + EOS exactly
as the `rank` scorer tokenizes it after the row's prompt: the row's candidates
(`tokenize_listwise` with the candidate completions, so the prompt ids are those of `rank` and of
unconstrained generation) or the whole catalogue (`napo.eval.catalogue.catalogue_completions`).
They form a prefix trie (:class:`TitleTrie`); decoding may only follow its edges
(transformers' ``prefix_allowed_tokens_fn``), and ends at a leaf, i.e. at EOS after a complete
title. ValidRatio is 1 by construction, except when two items share the same tokens (duplicate
titles): such an answer names several items and counts as ambiguous, as the matcher would.

What "greedy" returns under the trie (the *trie-greedy title*): starting at the root, take the
child token with the highest next-token probability under the model, given the prompt and the
tokens taken so far (ties: the smaller token id, as ``argmax`` does), until the EOS that closes a
title. This is not the title of highest total log-probability (`rank`'s top-1): an early likely
token can lead to an unlikely title. The budget is at least the longest allowed answer, so a
decode cannot stop inside a title.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from napo.eval.generate import GreedyGenerator, greedy_config, left_pad, use_generation_config
from napo.eval.rows import candidate_completions
from napo.scoring import tokenize_listwise

CONSTRAINTS = ("none", "candidates", "catalogue")
_LEAF = -1  # key under which a node lists the items whose answer ends there (never a token id)


class TitleTrie:
    """Prefix trie of token-id sequences; the node after a sequence's last token lists its items."""

    def __init__(self, sequences: Sequence[Sequence[int]], items: Sequence[int]):
        if len(sequences) != len(items):
            raise ValueError(f"{len(sequences)} sequences for {len(items)} items")
        self.root: dict = {}
        self.depth = 0
        for seq, item in zip(sequences, items, strict=True):
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
            node.setdefault(_LEAF, []).append(int(item))
            self.depth = max(self.depth, len(seq))

    def node(self, prefix: Sequence[int]) -> dict | None:
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow `prefix` (empty past a leaf or off the trie)."""
        node = self.node(prefix)
        return [] if node is None else [t for t in node if t != _LEAF]

    def items(self, sequence: Sequence[int]) -> list[int]:
        """Items whose answer is exactly `sequence` (empty when it is no complete answer)."""
        node = self.node(sequence)
        return list(node.get(_LEAF, [])) if node is not None else []


class ConstrainedGenerator(GreedyGenerator):
    """Greedy decoding restricted to the row's candidates or to the catalogue.

    Returns one ``{"answer": text, "item_ids": [ids]}`` per row (`napo.eval.results.generate_results`
    reads the ids instead of matching the text). ``constrain``: "candidates" or "catalogue";
    ``items`` / ``item_format``: the catalogue (prepared items table and meta["item_format"]), for
    "catalogue".
    """

    def __init__(self, model, tokenizer, constrain: str, *, items=None, item_format: str = "title",
                 max_new_tokens: int = 20, completion_prefix: str = "", max_prompt_length: int | None = None):
        if constrain not in ("candidates", "catalogue"):
            raise ValueError(f"constrain must be candidates or catalogue, got {constrain!r}")
        super().__init__(model, tokenizer, max_new_tokens=max_new_tokens, completion_prefix=completion_prefix,
                         max_prompt_length=max_prompt_length)
        self.constrain = constrain
        self.item_format = item_format
        self._tails: dict = {}  # catalogue_completions' cache: one completions list per prompt tail
        self._tries: dict = {}  # id of such a list -> (the list, its trie); the list is kept alive
        if constrain == "catalogue":
            from napo.eval.catalogue import catalogue_texts

            if items is None:
                raise ValueError("constrain 'catalogue' needs the items table")
            texts = catalogue_texts(items, item_format)
            self.catalogue_ids = [i for i, t in enumerate(texts) if t is not None]
            self.catalogue_texts = [texts[i] for i in self.catalogue_ids]

    def allowed_answers(self, batch: dict) -> list[tuple[list[int], TitleTrie]]:
        """Per row: (prompt ids, trie of its allowed answers)."""
        prompts = list(batch["prompt"])
        if self.constrain == "candidates":
            rows = tokenize_listwise(self.tokenizer, prompts, candidate_completions(batch, self.completion_prefix),
                                     max_prompt_length=self.max_prompt_length)
            return [(r["prompt_ids"], TitleTrie(r["completion_ids"], list(c)))
                    for r, c in zip(rows, batch["candidates"], strict=True)]
        from napo.eval.catalogue import catalogue_completions

        rows = catalogue_completions(self.tokenizer, prompts, self.catalogue_texts, prefix=self.completion_prefix,
                                     max_prompt_length=self.max_prompt_length, cache=self._tails)
        out = []
        for r in rows:  # rows sharing a prompt tail share one completions list: build its trie once
            key = id(r["completion_ids"])
            if key not in self._tries:
                self._tries[key] = (r["completion_ids"], TitleTrie(r["completion_ids"], self.catalogue_ids))
            out.append((r["prompt_ids"], self._tries[key][1]))
        return out

    @torch.no_grad()
    def generate_ids(self, batch: dict) -> list[tuple[list[int], TitleTrie]]:
        """Generated ids of each row (up to and including EOS) and the row's trie."""
        rows = self.allowed_answers(batch)
        prompts = [p for p, _ in rows]
        pad = self.generation_config.pad_token_id
        input_ids, attention_mask = left_pad(prompts, pad)
        width = input_ids.shape[1]
        eos = self.generation_config.eos_token_id
        eos_ids = set(eos) if isinstance(eos, list) else {eos}
        stop = [next(iter(eos_ids))]

        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            # past the leaf (finished row) or off the trie: EOS only, so no row is ever all -inf
            return rows[batch_id][1].allowed(ids[width:].tolist()) or stop

        config = greedy_config(self.tokenizer, max(self.generation_config.max_new_tokens,
                                                   max(trie.depth for _, trie in rows)))
        device = next(self.model.parameters()).device
        with use_generation_config(self.model, config):
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                      generation_config=config, prefix_allowed_tokens_fn=allowed)
        answers = []
        for ids, (_, trie) in zip(out[:, width:].cpu().tolist(), rows, strict=True):
            cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
            answers.append((ids if cut is None else ids[: cut + 1], trie))
        return answers

    def __call__(self, batch: dict, indices: Sequence[int]) -> list[dict]:
        return [{"answer": self.decode(ids), "item_ids": trie.items(ids)} for ids, trie in self.generate_ids(batch)]

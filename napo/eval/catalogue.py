"""Full-catalogue ranking (`napo-eval --rank_over catalogue`): every item scored for every prompt.

A catalogue scorer is ``scorer(batch, indices) -> scores`` float [n, num_items] (column j = item
id j, higher is better, -inf for an id the catalogue lacks). The runner turns each batch into
pessimistic full ranks and top items at once (`napo.eval.metrics.full_ranks` / `top_items`, the
code SASRec's full ranking uses), so [N, num_items] never exists.

- :class:`ItemTokenCatalogue`: an item-token LLM. One forward of the prompt per row; the
  next-token log-softmax at the answer position read at the item-token rows of the LM head
  (`napo.scoring.answer_logps`): score_j = log p(<item_j> | prompt).
- :class:`TitleCatalogue`: a title LLM. The packed scorer over the catalogue's titles in chunks
  of ``chunk_size`` items: each packed row is [prompt, title_1 + EOS, ..., title_c + EOS], so the
  prompt is encoded once per chunk (num_items / chunk_size times per row) and score_j is the
  summed log-prob of title_j + EOS, exactly as `rank` scores a candidate.
- :class:`AuxCatalogue`: the auxiliary recommender's <user_vector, item_vector> (contracts §2),
  i.e. SASRec's own full ranking, through the same code.
- :class:`PopularityCatalogue`: training counts.
- :class:`Retrieval`: two stages, as such a model would be served: the auxiliary model's top
  ``top_n`` items (history excluded when the ranking excludes it), re-ranked by an LLM scorer;
  the rest keep the auxiliary order behind them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from napo.eval.config import EvalError
from napo.hybrid.placeholders import placeholder_ids, scoring_items, uses_placeholders
from napo.scoring import collate_listwise, completion_logps, tokenize_listwise


def catalogue_texts(items, item_format: str) -> list[str | None]:
    """What a completion holds for each item id (the title, or the item token), as data_prep
    writes `chosen` (`data_prep.render.item_strings`); None for ids the catalogue lacks."""
    from data_prep.render import item_strings

    shown, _ = item_strings(items["item_id"].to_numpy(), items["title"].to_numpy(dtype=object), item_format)
    return shown.to_pylist()


class ItemTokenCatalogue:
    """log p(<item_j> | prompt) for every item j, one forward per prompt.

    The prompt ids are ``tokenize(prompt)`` (truncated from the left like the rank scorer's):
    `napo.item_tokens.item_token_table` checks that every item token is appended verbatim, so
    these are the ids every candidate completion is scored after in `rank` mode as well.
    """

    name = "item-token log-softmax at the answer position"

    def __init__(self, model, tokenizer, items, *, max_prompt_length: int | None = None):
        from napo.item_tokens import item_token_table

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.table = item_token_table(tokenizer, items["item_id"].tolist())  # [num_items]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad

    @property
    def num_items(self) -> int:
        return self.table.numel()

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        # token inputs: taken verbatim, truncated as the rank scorer truncates (BOS kept)
        rows = tokenize_listwise(self.tokenizer, ids, [[[0]]] * len(ids), max_prompt_length=self.max_prompt_length)
        return [r["prompt_ids"] for r in rows]

    @torch.no_grad()
    def score_items(self, batch: dict, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[n, num_items] (or [n, K] for `item_ids` [n, K]) float32 log-probs on the CPU."""
        from napo.scoring import answer_logps, left_padded_prompts

        inputs = left_padded_prompts(self.prompt_ids(batch["prompt"]), self.pad_token_id)
        vocab = answer_logps(self.model, inputs).cpu()  # [n, V]
        tokens = self.table.clamp(min=0)
        scores = vocab[:, tokens].masked_fill(self.table < 0, -torch.inf)  # [n, num_items]
        return scores if item_ids is None else scores.gather(1, item_ids)

    def __call__(self, batch: dict, indices: Sequence[int]) -> torch.Tensor:
        return self.score_items(batch)


def catalogue_completions(tokenizer, prompts: Sequence[str], texts: Sequence[str], *, prefix: str = "",
                          max_prompt_length: int | None = None, tail_chars: int = 24,
                          cache: dict | None = None) -> list[dict]:
    """Per prompt, the ids `tokenize_listwise(tokenizer, [prompt], [[prefix + t for t in texts]])`
    gives: ``{"prompt_ids", "completion_ids"}`` (text + EOS per text, in `texts` order), the prompt
    then truncated from the left to ``max_prompt_length`` as the rank scorer does.

    Joint tokenization of every prompt with thousands of titles would cost more than the model.
    Only the end of a prompt can merge with a title, so the titles are tokenized once per distinct
    prompt tail (its last ``tail_chars`` characters): the split and the completion ids found after
    the tail hold for every prompt whose own tokens end with the tail's (checked per prompt; the
    tail's first token may be cut mid-word, so it is not compared). The first prompt of each tail
    is also tokenized in full and compared; a tail that differs, or a prompt that does not end
    with its tail's tokens, is tokenized in full. Prompts of one tail share one completions list
    (the same object, also across calls given the same ``cache`` dict, which is keyed by tail).
    """
    completions = [prefix + t for t in texts]
    cache = {} if cache is None else cache
    out = []
    alone_all = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    for prompt, alone in zip(prompts, alone_all, strict=True):
        tail = prompt[-tail_chars:]
        if tail not in cache:
            (row,) = tokenize_listwise(tokenizer, [tail], [completions])
            tail_alone = tokenizer([tail], add_special_tokens=True)["input_ids"][0]
            keep = len(tail_alone) - len(row["prompt_ids"])  # tail tokens the titles take over
            entry = {"alone": tail_alone, "keep": keep, "completion_ids": row["completion_ids"], "exact": False}
            found = _from_tail(alone, entry)
            if found is None or tokenize_listwise(tokenizer, [prompt], [completions])[0] != found:
                entry["exact"] = True  # this tail's shortcut does not hold: tokenize such prompts in full
            cache[tail] = entry
        entry = cache[tail]
        found = None if entry["exact"] else _from_tail(alone, entry)
        if found is None:
            (found,) = tokenize_listwise(tokenizer, [prompt], [completions])
        out.append(found)
    if max_prompt_length is not None:  # token inputs: the prompt truncated as tokenize_listwise does
        cut = tokenize_listwise(tokenizer, [r["prompt_ids"] for r in out], [[[0]]] * len(out),
                                max_prompt_length=max_prompt_length)
        out = [{"prompt_ids": c["prompt_ids"], "completion_ids": r["completion_ids"]} for c, r in zip(cut, out, strict=True)]
    return out


def _from_tail(alone: list[int], entry: dict) -> dict | None:
    """A prompt's ids and completions from its tail's, or None when its tokens do not end with
    the tail's (first two tail tokens skipped: a BOS and a token that may be cut mid-word)."""
    tail = entry["alone"][2:]
    keep = entry["keep"]
    if not tail or keep > len(tail) or list(alone[len(alone) - len(tail):]) != list(tail):
        return None
    return {"prompt_ids": list(alone[: len(alone) - keep]), "completion_ids": entry["completion_ids"]}


class TitleCatalogue:
    """Summed log-prob of title + EOS for every item, packed in chunks of ``chunk_size`` titles."""

    name = "packed title log-likelihood"

    def __init__(self, model, tokenizer, items, item_format: str = "title", *, chunk_size: int = 256,
                 layout: str = "packed", completion_prefix: str = "", max_prompt_length: int | None = None):
        if chunk_size < 1:
            raise EvalError(f"catalogue_chunk must be >= 1, got {chunk_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.texts = catalogue_texts(items, item_format)
        self.ids = [i for i, t in enumerate(self.texts) if t is not None]
        self.chunk_size = chunk_size
        self.layout = layout
        self.prefix = completion_prefix
        self.max_prompt_length = max_prompt_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad
        self.tokens_scored = 0  # prompt + completion tokens fed to the model (cost report)
        self.prompt_encodings = 0  # one per row and chunk: the packed row holds the prompt once
        self.rows_scored = 0
        self._tails: dict = {}  # catalogue_completions' cache, kept across batches
        self.placeholder_ids = placeholder_ids(tokenizer) if uses_placeholders(model) else None

    @property
    def num_items(self) -> int:
        return len(self.texts)

    @torch.no_grad()
    def score_items(self, batch: dict, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[n, num_items] (or [n, K] for `item_ids` [n, K]) float32 log-likelihoods on the CPU."""
        prompts = list(batch["prompt"])
        rows = catalogue_completions(self.tokenizer, prompts, [self.texts[i] for i in self.ids],
                                     prefix=self.prefix, max_prompt_length=self.max_prompt_length,
                                     cache=self._tails)
        self.rows_scored += len(prompts)
        position = {item: k for k, item in enumerate(self.ids)}
        wanted = [self.ids] * len(prompts) if item_ids is None else item_ids.tolist()
        out = torch.full((len(prompts), len(wanted[0])), -torch.inf)
        for start in range(0, len(wanted[0]), self.chunk_size):
            chunk = [w[start: start + self.chunk_size] for w in wanted]
            examples = [{"prompt_ids": r["prompt_ids"],
                         "completion_ids": [r["completion_ids"][position[i]] for i in items]}
                        for r, items in zip(rows, chunk, strict=True)]
            collated = collate_listwise(examples, self.pad_token_id, self.layout)
            if self.placeholder_ids is not None:  # LLaRA's placeholders get the projected item vectors
                collated["position_items"] = scoring_items(collated, batch["history"], batch["candidates"],
                                                           self.placeholder_ids)
            logps, _ = completion_logps(self.model, collated)
            out[:, start: start + logps.shape[1]] = logps.float().cpu()
            self.prompt_encodings += len(prompts)
            self.tokens_scored += int((collated["input_ids"] != self.pad_token_id).sum())
        return out if item_ids is not None else self._spread(out)

    def cost(self) -> dict:
        """What a row cost so far: prompt encodings (one per chunk of titles) and tokens fed."""
        rows = max(self.rows_scored, 1)
        return {"prompt_encodings_per_row": self.prompt_encodings / rows,
                "tokens_per_row": self.tokens_scored / rows, "chunk_size": self.chunk_size}

    def _spread(self, scores: torch.Tensor) -> torch.Tensor:
        full = torch.full((scores.shape[0], self.num_items), -torch.inf)
        full[:, self.ids] = scores
        return full

    def __call__(self, batch: dict, indices: Sequence[int]) -> torch.Tensor:
        return self.score_items(batch)


class AuxCatalogue:
    """The auxiliary recommender's score of every item: user_vectors @ item_vectors.T (contracts §2)."""

    def __init__(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor, name: str = "aux"):
        self.user_vectors = torch.as_tensor(user_vectors, dtype=torch.float32)
        self.item_vectors = torch.as_tensor(item_vectors, dtype=torch.float32)
        self.name = name

    @property
    def num_items(self) -> int:
        return self.item_vectors.shape[0]

    def __call__(self, batch: dict, indices: Sequence[int]) -> torch.Tensor:
        rows = torch.as_tensor(list(batch.get("row_index", indices)), dtype=torch.long)
        if len(rows) and int(rows.max()) >= self.user_vectors.shape[0]:
            raise EvalError(f"row {int(rows.max())} asked for but the auxiliary outputs hold "
                            f"{self.user_vectors.shape[0]} rows; were they made for this split?")
        return self.user_vectors[rows] @ self.item_vectors.T


def aux_catalogue(aux_dir, split: str, meta: dict) -> AuxCatalogue:
    """AuxCatalogue of a napo-recsys run's aux/ (fingerprint and rows checked by `load_aux`)."""
    import json
    from pathlib import Path

    from napo.auxiliary import load_aux, load_item_vectors

    user_vectors, _ = load_aux(aux_dir, split, meta)
    item_vectors = load_item_vectors(aux_dir, meta.get("counts", {}).get("items"))
    model = json.loads((Path(aux_dir) / "meta.json").read_text()).get("model") or "aux"
    return AuxCatalogue(user_vectors, item_vectors, name=str(model))


class PopularityCatalogue:
    """Training interaction count of every item (the most-popular baseline over the catalogue)."""

    name = "Popularity"

    def __init__(self, train_counts: Sequence[int]):
        self.counts = torch.as_tensor(np.asarray(train_counts), dtype=torch.float64)

    @property
    def num_items(self) -> int:
        return self.counts.numel()

    def __call__(self, batch: dict, indices: Sequence[int]) -> torch.Tensor:
        return self.counts.expand(len(indices), -1)


class Retrieval:
    """Two-stage ranking: `first` (the auxiliary model) retrieves ``top_n`` items per row, the
    LLM scorer `second` re-ranks them (`second.score_items(batch, ids [n, top_n])`).

    Returned scores order the catalogue as served: the retrieved items by the LLM's scores, all
    above every other item, the others by the first stage's scores. Excluded items (the history,
    when the ranking excludes it) are not retrieved.
    """

    def __init__(self, first, second, top_n: int, exclude_history: bool = False):
        if top_n < 1:
            raise EvalError(f"retrieve_top must be >= 1, got {top_n}")
        self.first, self.second, self.top_n = first, second, top_n
        self.exclude_history = exclude_history
        self.name = f"{getattr(first, 'name', 'aux')} top {top_n} -> {getattr(second, 'name', 'LLM')}"

    def cost(self) -> dict:
        return {"retrieve_top": self.top_n, **(self.second.cost() if hasattr(self.second, "cost") else {})}

    @property
    def num_items(self) -> int:
        return self.first.num_items

    def __call__(self, batch: dict, indices: Sequence[int]) -> torch.Tensor:
        base = torch.as_tensor(self.first(batch, indices), dtype=torch.float64)  # [n, I]
        pick = base.clone()
        if self.exclude_history:
            for i, hist in enumerate(batch["history"]):
                pick[i, torch.as_tensor(list(hist), dtype=torch.long)] = -torch.inf
        top = min(self.top_n, base.shape[1])
        retrieved = torch.topk(pick, top, dim=1).indices  # [n, top]
        llm = torch.as_tensor(self.second.score_items(batch, retrieved), dtype=torch.float64)
        # lift the retrieved items above every other one, in the LLM's order
        finite = torch.isfinite(base)
        ceiling = torch.where(finite, base, -torch.inf).amax(1, keepdim=True).clamp(min=0)
        floor = torch.where(torch.isfinite(llm), llm, torch.inf).amin(1, keepdim=True)
        lifted = llm - floor + ceiling + 1.0
        return base.scatter(1, retrieved, lifted)

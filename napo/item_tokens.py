"""Item tokens as the LM head's item table: which vocabulary row is which item, and the
cross-entropy over those rows only.

With `--item-format token` every item is one added token `<item_{id}>`
(`data_prep.prompts.item_token`). The LM head's rows of these tokens are then an item-embedding
table, like SASRec's: the next-token log-softmax at the answer position (`napo.scoring.answer_logps`)
read at those rows scores every item of the catalogue in one forward, and a softmax over those
rows only is SASRec's full cross-entropy objective (`item_softmax_loss`, SFT's `item_softmax`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from data_prep.errors import UserError
from data_prep.prompts import item_token

_ITEM_TOKEN = re.compile(r"<item_(\d+)>")


class ItemTokenError(UserError):
    """A tokenizer without the item tokens a setting needs (one line)."""


def item_token_table(tokenizer, item_ids: Sequence[int]) -> torch.Tensor:
    """Token id of every item: LongTensor [max item id + 1], -1 for ids not in `item_ids`.

    Every item must be ONE token of the vocabulary that is appended verbatim after any prompt
    (an added token, as `napo.models.tiny --item-tokens` makes): then tokenize(prompt + item) is
    tokenize(prompt) plus the item's id, so the prompt's ids do not depend on the item scored.
    """
    from napo.scoring import _appended_token_ids

    ids = [int(i) for i in item_ids]
    if not ids:
        raise ItemTokenError("no items to score: the items table is empty")
    vocab = tokenizer.get_vocab()
    texts = [item_token(i) for i in ids]
    missing = [t for t in texts if t not in vocab]
    if missing:
        raise ItemTokenError(
            f"the tokenizer lacks {len(missing)} of the {len(ids)} item tokens (e.g. {missing[0]}): build the "
            "model with `python -m napo.models.tiny --item-tokens` (or add the tokens) to score items by token"
        )
    appendable, _ = _appended_token_ids(tokenizer, set(texts))
    bad = [t for t in texts if t not in appendable]
    if bad:
        raise ItemTokenError(
            f"item token {bad[0]} is not an added token matched verbatim (lstrip / normalized tokens "
            "change the prompt's last tokens), so the prompt's ids would depend on the item; add the item "
            "tokens as napo.models.tiny does (AddedToken(..., lstrip=False, normalized=False))"
        )
    table = torch.full((max(ids) + 1,), -1, dtype=torch.long)
    table[torch.tensor(ids)] = torch.tensor([vocab[t] for t in texts])
    return table


def vocabulary_item_rows(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(item ids [I], their token ids [I]) of every `<item_N>` token in the tokenizer, by item id."""
    found = sorted((int(m.group(1)), idx) for tok, idx in tokenizer.get_vocab().items()
                   if (m := _ITEM_TOKEN.fullmatch(tok)))
    if not found:
        raise ItemTokenError("the tokenizer has no <item_N> tokens: item_softmax needs an item-token model "
                             "(python -m napo.models.tiny --item-tokens) and item-token data")
    items, tokens = zip(*found, strict=True)
    return torch.tensor(items), torch.tensor(tokens)


def item_softmax_loss(logits: torch.Tensor, target_tokens: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the target item over the item-token rows only: [B].

    loss_b = -log softmax_{j in items}(logits[b, j])[target_b], the full-softmax objective of
    SASRec with the LM head's item rows as item embeddings.

    logits: [B, V] next-token logits at the answer position; target_tokens: [B] token ids (each
    one of item_rows); item_rows: [I] the item tokens' ids.
    """
    rows = item_rows.to(logits.device)
    position = torch.full((logits.shape[-1],), -1, dtype=torch.long, device=logits.device)
    position[rows] = torch.arange(rows.numel(), device=logits.device)
    target = position[target_tokens]  # [B] index among the item rows
    if (target < 0).any():
        bad = int(target_tokens[target < 0][0])
        raise ItemTokenError(f"item_softmax: a completion starts with token id {bad}, which is no item token; "
                             "train on item-token data (data_prep --item-format token)")
    return torch.nn.functional.cross_entropy(logits[:, rows].float(), target, reduction="none")

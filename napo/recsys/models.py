"""Id-based sequential recommenders: Popularity, SASRec, GRU4Rec, Caser.

Every model maps a batch of left-padded shifted-id sequences `seq` [B, L] (0 = pad, item i stored
as i + 1, see napo.recsys.data) to a user vector [B, d] and scores items by a dot product with
`item_vectors()` [num_items, d]:  score(u, i) = <encode(seq_u), item_vectors()[i]>.
Right-padded input is re-aligned first, so the user vector is always the hidden state at the true
last history item, never at a padding slot. An empty history gives the state of an all-padding
input (a constant "no history" vector).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from napo.recsys.data import left_align


class SeqRecommender(nn.Module, abc.ABC):
    """Shared interface. Subclasses implement `_encode_all` (or `encode`) and `item_vectors`."""

    supports_all_positions = True

    def __init__(self, num_items: int, hidden: int, max_len: int):
        super().__init__()
        self.num_items = num_items
        self.hidden = hidden
        self.max_len = max_len

    def _prepare(self, seq: torch.Tensor) -> torch.Tensor:
        seq = left_align(seq)
        return seq[:, -self.max_len:]

    def encode_all(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position: [B, L] -> [B, L', d] (L' = min(L, max_len), left-aligned)."""
        return self._encode_all(self._prepare(seq))

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """User vector = hidden state at the last history position: [B, L] -> [B, d]."""
        return self.encode_all(seq)[:, -1]

    @abc.abstractmethod
    def item_vectors(self) -> torch.Tensor:  # [num_items, d]
        """Item representations the user vector is scored against."""

    def score(self, user: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """user [B, d]; items None -> [B, num_items]; items [B, K] ids -> [B, K]."""
        vectors = self.item_vectors()
        if items is None:
            return user @ vectors.T
        return (vectors[items] * user[:, None, :]).sum(-1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores of every item: [B, L] -> [B, num_items]."""
        return self.score(self.encode(seq))


class Popularity(SeqRecommender):
    """Scores every item by log(1 + training count), whatever the history (d = 1)."""

    supports_all_positions = False

    def __init__(self, num_items: int, train_counts: torch.Tensor | None = None, max_len: int = 1):
        super().__init__(num_items, hidden=1, max_len=max_len)
        counts = torch.zeros(num_items) if train_counts is None else torch.as_tensor(train_counts)
        self.register_buffer("log_counts", torch.log1p(counts.float()).reshape(num_items, 1))

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.ones(seq.shape[0], 1, device=seq.device)

    def item_vectors(self) -> torch.Tensor:
        return self.log_counts


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention + position-wise feed-forward."""

    def __init__(self, hidden: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x [B, L, d], allowed [B, 1, L, L] (query, key) -> [B, L, d]; with last_only the output
        at the last position only, [B, 1, d]: keys and values still come from every position, but
        the query, the projection and the feed-forward run on one position instead of L (the
        same numbers as forward(x, allowed)[:, -1:], for a model that needs only the last state)."""
        b, length, d = x.shape
        h = self.norm1(x)
        if last_only:
            x, allowed = x[:, -1:], allowed[:, :, -1:]
            q = F.linear(h[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d])
            k, v = F.linear(h, self.qkv.weight[d:], self.qkv.bias[d:]).split(d, dim=-1)
        else:
            q, k, v = self.qkv(h).split(d, dim=-1)
        queries = x.shape[1]
        q, k, v = [t.view(b, t.shape[1], self.num_heads, d // self.num_heads).transpose(1, 2) for t in (q, k, v)]
        # plain attention math (L <= a few dozen): explicit and identical on every backend
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.num_heads)  # [B, H, L_q, L]
        weights = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        weights = F.dropout(weights, self.attn_dropout, self.training)
        a = weights @ v  # [B, H, L_q, d/H]
        x = x + self.dropout(self.proj(a.transpose(1, 2).reshape(b, queries, d)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class SASRec(SeqRecommender):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), pre-norm variant.

    Absolute positions over the left-padded window, as in the original: the last column (the
    most recent item) always has position max_len - 1. Item embeddings are shared between input
    and output; padding slots are zeroed and masked out of attention.
    """

    def __init__(self, num_items: int, hidden: int = 64, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, max_len: int = 10):
        super().__init__(num_items, hidden, max_len)
        if hidden % num_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by num_heads ({num_heads})")
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.item_emb.weight, std=hidden ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _encode_all(self, seq: torch.Tensor) -> torch.Tensor:
        b, length = seq.shape
        pos = torch.arange(self.max_len - length, self.max_len, device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.hidden) + self.pos_emb(pos)[None]
        x = self.emb_dropout(x) * (seq > 0).unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        # attend to earlier real items; every position may attend to itself so an all-padding
        # prefix never yields an empty softmax (NaN)
        allowed = causal[None] & (seq > 0)[:, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        allowed = allowed[:, None]  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight[1:]


class GRU4Rec(SeqRecommender):
    """Session-based recommendation with a GRU (Hidasi et al. 2016), trained as a next-item model."""

    def __init__(self, num_items: int, hidden: int = 64, num_blocks: int = 1, dropout: float = 0.2,
                 max_len: int = 10):
        super().__init__(num_items, hidden, max_len)
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, num_layers=num_blocks, batch_first=True,
                          dropout=dropout if num_blocks > 1 else 0.0)
        self.out = nn.Linear(hidden, hidden)
        nn.init.normal_(self.item_emb.weight, std=hidden ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _encode_all(self, seq: torch.Tensor) -> torch.Tensor:
        # Run the GRU on right-aligned rows (items first): padding then only follows the real
        # items and cannot leak into their states. Then rotate back to the left-aligned layout.
        length = seq.shape[1]
        n = (seq > 0).sum(dim=1)
        shift = torch.where(n > 0, length - n, torch.zeros_like(n))
        cols = torch.arange(length, device=seq.device)[None, :]
        right = torch.gather(seq, 1, (cols + shift[:, None]) % length)
        h, _ = self.gru(self.emb_dropout(self.item_emb(right)))  # [B, L, d]
        back = (cols - shift[:, None]) % length
        h = torch.gather(h, 1, back[:, :, None].expand_as(h))
        return self.out(h)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight[1:]


class Caser(SeqRecommender):
    """Convolutional sequence embedding (Tang & Wang 2018) over the last `max_len` items.

    No user embedding: test users are unseen at training time in these user-level splits.
    """

    supports_all_positions = False

    def __init__(self, num_items: int, hidden: int = 64, max_len: int = 10, num_vertical: int = 4,
                 num_horizontal: int = 16, dropout: float = 0.3):
        super().__init__(num_items, hidden, max_len)
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.vertical = nn.Conv2d(1, num_vertical, (max_len, 1))
        self.horizontal = nn.ModuleList(nn.Conv2d(1, num_horizontal, (h, hidden)) for h in range(1, max_len + 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_vertical * hidden + num_horizontal * max_len, hidden)
        self.out_emb = nn.Embedding(num_items, hidden)
        nn.init.normal_(self.item_emb.weight, std=hidden ** -0.5)
        nn.init.normal_(self.out_emb.weight, std=hidden ** -0.5)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        seq = self._prepare(seq)
        if seq.shape[1] < self.max_len:  # convolutions need exactly max_len columns
            seq = F.pad(seq, (self.max_len - seq.shape[1], 0))
        e = self.item_emb(seq).unsqueeze(1)  # [B, 1, L, d]
        v = self.vertical(e).flatten(1)  # [B, n_v * d]
        hs = [F.relu(conv(e).squeeze(3)).amax(dim=2) for conv in self.horizontal]  # each [B, n_h]
        z = torch.cat([v, *hs], dim=1)
        # no ReLU on this last layer (unlike the paper): a dead ReLU here zeroes the user vector
        # and every score ties, which we saw with Adam at lr 1e-2
        return self.fc(self.dropout(z))

    def encode_all(self, seq: torch.Tensor) -> torch.Tensor:
        return self.encode(seq)[:, None]

    def item_vectors(self) -> torch.Tensor:
        return self.out_emb.weight


MODELS = {"Pop": Popularity, "SASRec": SASRec, "GRU4Rec": GRU4Rec, "Caser": Caser}


def build_model(name: str, num_items: int, *, hidden: int = 64, num_blocks: int = 2,
                num_heads: int = 1, dropout: float = 0.2, max_len: int = 10,
                train_counts=None) -> SeqRecommender:
    """Construct a model by its RecBole-style name (Pop, SASRec, GRU4Rec, Caser)."""
    if name == "Pop":
        return Popularity(num_items, train_counts, max_len=max_len)
    if name == "SASRec":
        return SASRec(num_items, hidden, num_blocks, num_heads, dropout, max_len)
    if name == "GRU4Rec":
        return GRU4Rec(num_items, hidden, num_blocks, dropout, max_len)
    if name == "Caser":
        return Caser(num_items, hidden, max_len, dropout=dropout)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")

"""Negative samplers as pluggable proposals (Prakash, Bermperidis & Chennu 2024).

A sampler draws `num_negatives` item ids per example, fresh on every call (no cached batches):

    negatives = sampler.sample(targets [B], seq [B, L], num_negatives, score_fn=None) -> [B, K]

`targets` are item ids, `seq` the left-padded shifted-id histories (0 = pad, item i as i + 1).
A negative never equals the row's target; it avoids the row's history items up to
`max_rounds` rounds of rejection resampling (collisions left after that are rare and kept, as in
most recommender code; the loss masks a negative equal to the target anyway).
`score_fn(ids [B, P]) -> scores [B, P]` is the current model's score of candidate items for each
row (no gradient), needed only by the adaptive samplers.

`log_q(ids)` gives the log proposal probability used by the logQ correction of sampled softmax;
adaptive samplers have no closed-form proposal and refuse it.

Names: random (RNS), popularity (PNS, count^alpha), in-batch (BNS), mixed (MNS: in-batch +
uniform), adaptive (ANS: hardest k of a uniform pool), adaptive+mixed (AMNS: hardest k of an
in-batch + uniform pool).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class NegativeSampler(abc.ABC):
    name = "base"

    def __init__(self, num_items: int, train_counts=None, *, alpha: float = 0.75,
                 pool_factor: int = 5, mixed_fraction: float = 0.5, max_rounds: int = 5,
                 generator: torch.Generator | None = None):
        self.num_items = num_items
        counts = torch.ones(num_items) if train_counts is None else torch.as_tensor(train_counts).float()
        self.counts = counts
        self.alpha = alpha
        self.pool_factor = pool_factor
        self.mixed_fraction = mixed_fraction
        self.max_rounds = max_rounds
        self.generator = generator

    # -- proposals ---------------------------------------------------------------------------
    def _uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, self.num_items, shape, generator=self.generator)

    def _popular(self, shape: tuple[int, ...]) -> torch.Tensor:
        probs = self.counts.clamp(min=0) ** self.alpha
        if probs.sum() == 0:
            probs = torch.ones_like(probs)
        flat = torch.multinomial(probs, int(torch.tensor(shape).prod()), replacement=True,
                                 generator=self.generator)
        return flat.view(shape)

    def _in_batch(self, targets: torch.Tensor, k: int) -> torch.Tensor:
        """k targets of *other* rows per row (uniform over the other rows, with replacement)."""
        b = targets.shape[0]
        if b < 2:
            return self._uniform((b, k))
        # offsets 1..b-1 never pick the row itself
        offsets = torch.randint(1, b, (b, k), generator=self.generator)
        rows = (torch.arange(b)[:, None] + offsets) % b
        return targets[rows]

    def _fix_collisions(self, neg: torch.Tensor, targets: torch.Tensor, seq: torch.Tensor,
                        redraw: Callable[[tuple[int, ...]], torch.Tensor]) -> torch.Tensor:
        neg = neg.clone()
        for _ in range(self.max_rounds):
            bad = _collides(neg, targets, seq)
            if not bad.any():
                break
            neg[bad] = redraw((int(bad.sum()),))
        return neg

    # -- API ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def sample(self, targets: torch.Tensor, seq: torch.Tensor, num_negatives: int,
               score_fn: ScoreFn | None = None) -> torch.Tensor:
        """[B, num_negatives] negative item ids for each row (fresh on every call)."""

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"the {self.name} sampler has no closed-form proposal for logQ correction")


def _collides(neg: torch.Tensor, targets: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """[B, K] bool: negative equals the row's target or one of its history items."""
    in_hist = ((neg[:, :, None] + 1) == seq[:, None, :]).any(-1)
    return in_hist | (neg == targets[:, None])


class RandomSampler(NegativeSampler):
    name = "random"

    def sample(self, targets, seq, num_negatives, score_fn=None):
        neg = self._uniform((targets.shape[0], num_negatives))
        return self._fix_collisions(neg, targets, seq, self._uniform)

    def log_q(self, ids):
        return torch.full(ids.shape, -torch.log(torch.tensor(float(self.num_items))))


class PopularitySampler(NegativeSampler):
    name = "popularity"

    def sample(self, targets, seq, num_negatives, score_fn=None):
        neg = self._popular((targets.shape[0], num_negatives))
        return self._fix_collisions(neg, targets, seq, self._popular)

    def log_q(self, ids):
        p = self.counts.clamp(min=0) ** self.alpha
        return torch.log(p / p.sum()).clamp(min=-30.0)[ids]


class InBatchSampler(NegativeSampler):
    name = "in-batch"

    def sample(self, targets, seq, num_negatives, score_fn=None):
        neg = self._in_batch(targets, num_negatives)
        # an in-batch target can equal this row's target or history: replace those uniformly
        return self._fix_collisions(neg, targets, seq, self._uniform)

    def log_q(self, ids):
        # in-batch negatives follow the target distribution: the empirical unigram frequency
        p = self.counts.clamp(min=0) + 1e-6
        return torch.log(p / p.sum())[ids]


class MixedSampler(NegativeSampler):
    name = "mixed"

    def _mixed(self, targets, k):
        k_batch = int(round(self.mixed_fraction * k))
        parts = [self._in_batch(targets, k_batch), self._uniform((targets.shape[0], k - k_batch))]
        return torch.cat(parts, dim=1)

    def sample(self, targets, seq, num_negatives, score_fn=None):
        neg = self._mixed(targets, num_negatives)
        return self._fix_collisions(neg, targets, seq, self._uniform)

    def log_q(self, ids):
        p = self.counts.clamp(min=0) + 1e-6
        unigram = p / p.sum()
        mix = self.mixed_fraction * unigram + (1 - self.mixed_fraction) / self.num_items
        return torch.log(mix)[ids]


class AdaptiveSampler(NegativeSampler):
    """Score a uniform pool of pool_factor * K items with the current model; keep the top K."""

    name = "adaptive"

    def _pool(self, targets, seq, size):
        pool = self._uniform((targets.shape[0], size))
        return self._fix_collisions(pool, targets, seq, self._uniform)

    def sample(self, targets, seq, num_negatives, score_fn=None):
        if score_fn is None:
            raise ValueError(f"the {self.name} sampler needs score_fn (the current model's scores)")
        pool = self._pool(targets, seq, self.pool_factor * num_negatives)
        with torch.no_grad():
            scores = score_fn(pool).float()  # [B, P]
        scores = scores.masked_fill(_collides(pool, targets, seq), float("-inf"))
        top = scores.topk(num_negatives, dim=1).indices
        return torch.gather(pool, 1, top)


class AdaptiveMixedSampler(AdaptiveSampler):
    """Adaptive selection from a mixed pool (in-batch + uniform)."""

    name = "adaptive+mixed"

    def _pool(self, targets, seq, size):
        k_batch = int(round(self.mixed_fraction * size))
        pool = torch.cat([self._in_batch(targets, k_batch),
                          self._uniform((targets.shape[0], size - k_batch))], dim=1)
        return self._fix_collisions(pool, targets, seq, self._uniform)


SAMPLERS = {
    cls.name: cls
    for cls in (RandomSampler, PopularitySampler, InBatchSampler, MixedSampler, AdaptiveSampler,
                AdaptiveMixedSampler)
}


def build_sampler(name: str, num_items: int, train_counts=None, **kwargs) -> NegativeSampler:
    """Sampler by name: random, popularity, in-batch, mixed, adaptive, adaptive+mixed."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](num_items, train_counts, **kwargs)

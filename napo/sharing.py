"""NAPO's in-batch negative sharing: each example borrows the negatives of its most similar peers.

In a global batch of N examples (all processes; rank r holds global rows r*B .. r*B+B-1), example
n takes the K negatives of its S = floor(rho * (N - 1)) most similar OTHER examples (dot or
cosine of the auxiliary user vectors; ties go to the lower row index). Its pool is its own K
negatives, then the partners' S * K in partner order. A shared item is masked out when it equals
the example's own positive or an item already in the pool (own or an earlier partner's).

Two ways to score the pool:
- ``share_negatives`` (the paper's "reuse"): shared log-probs are the partner's, computed under
  the partner's prompt. Mode ``corrected`` keeps gradients (own and same-process negatives
  directly; other processes' through a differentiable all-gather, or detached with
  ``cross_rank_grad=False``); mode ``faithful`` detaches every negative as the reference code.
- ``gather_pool_ids`` ("rescore"): only the pool's item ids and mask, so the trainer can score the
  borrowed items under the example's own prompt.

Call these on every process in the same order: they run collectives when torch.distributed is
initialized with more than one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

SIMILARITIES = ("dot", "cosine")
MODES = ("corrected", "faithful")


@dataclass
class NegativePool:
    """The extended negative pool of each local example; P = K * (1 + S).

    ids [B, P] item ids; mask [B, P] bool (True = a real negative to use); shared [B, P] bool
    (True = borrowed from a partner, False = own); partners [B, S] global row indices;
    logps [B, P] (None from ``gather_pool_ids``); extras: name -> [B, P], detached.
    """

    ids: Tensor
    mask: Tensor
    shared: Tensor
    partners: Tensor
    logps: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


def num_partners(n: int, ratio: float) -> int:
    """S = floor(ratio * (n - 1)); the epsilon keeps e.g. 0.6 * 5 from flooring to 2."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"share ratio (rho) must be in [0, 1], got {ratio}")
    return max(0, math.floor(ratio * (n - 1) + 1e-9))


def select_partners(user_vectors: Tensor, ratio: float, similarity: str = "dot") -> Tensor:
    """Global row indices of each row's S most similar other rows, most similar first.

    Args:
        user_vectors: [N, d] the global batch's auxiliary user vectors.
        ratio: rho; S = floor(rho * (N - 1)).
        similarity: "dot" or "cosine".
    Returns:
        LongTensor [N, S]; ties are broken by the lower row index (deterministic on every rank).
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    n = user_vectors.shape[0]
    s = num_partners(n, ratio)
    vectors = user_vectors.detach().to(torch.float64)  # float64: fewer accidental near-ties
    if similarity == "cosine":
        vectors = F.normalize(vectors, dim=-1)
    sim = vectors @ vectors.T  # [N, N]
    sim.fill_diagonal_(-math.inf)  # never oneself
    order = torch.sort(sim, dim=-1, descending=True, stable=True).indices  # stable: index ties
    return order[:, :s]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        rank, world = _world()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        ctx.rows = (rank * local.shape[0], (rank + 1) * local.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # works on gloo too (no reduce_scatter)
        return grad[ctx.rows[0] : ctx.rows[1]]


def _gather(local: Tensor, keep_local_grad: bool = False, differentiable: bool = False) -> Tensor:
    """[B, ...] -> [N, ...]. Own rows can stay the local (grad-carrying) tensor."""
    rank, world = _world()
    if world == 1:
        return local if keep_local_grad or differentiable else local.detach()
    if differentiable:
        return _AllGatherWithGrad.apply(local)
    as_bool = local.dtype == torch.bool  # gloo/nccl gather bytes, not bools
    payload = local.detach().to(torch.uint8) if as_bool else local.detach()
    parts = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(parts, payload.contiguous())
    parts = [p.to(torch.bool) for p in parts] if as_bool else parts
    if keep_local_grad:
        parts[rank] = local
    return torch.cat(parts)


def _check_equal_shapes(rejected_ids: Tensor) -> None:
    rank, world = _world()
    if world == 1:
        return
    shape = torch.tensor(rejected_ids.shape, device=rejected_ids.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        raise ValueError(
            f"negative sharing needs the same [B, K] on every process, got "
            f"{[tuple(s.tolist()) for s in shapes]}; use even batches (drop_last or even_batches)"
        )


def _pool(global_rows: Tensor, own: Tensor, partners: Tensor) -> Tensor:
    """own [B, K, ...] then global_rows[partners] -> [B, K * (1 + S), ...]."""
    borrowed = global_rows[partners]  # [B, S, K, ...]
    return torch.cat([own, borrowed.flatten(1, 2)], dim=1)


def gather_pool_ids(
    rejected_ids: Tensor,
    rejected_mask: Tensor | None,
    chosen_ids: Tensor,
    user_vectors: Tensor,
    *,
    ratio: float,
    similarity: str = "dot",
    exclude_collisions: bool = True,
    extras: dict[str, Tensor] | None = None,
) -> NegativePool:
    """The extended pool's item ids and mask for each local example (no log-probs).

    Args:
        rejected_ids: [B, K] item ids of the own negatives; rejected_mask: [B, K] bool or None.
        chosen_ids: [B] the positive's item id; user_vectors: [B, d] auxiliary user vectors.
        ratio: rho. similarity: "dot" | "cosine".
        exclude_collisions: mask shared items equal to the own positive or already in the pool
            (the reference code does not; pass False to reproduce that).
        extras: name -> [B, K] per-negative tensors (e.g. aux scores) to pool alike, detached.
    Returns:
        NegativePool with ids, mask, shared, partners, extras (logps None).
    """
    _check_equal_shapes(rejected_ids)
    rank, _ = _world()
    b, k = rejected_ids.shape
    own_mask = (
        torch.ones_like(rejected_ids, dtype=torch.bool)
        if rejected_mask is None
        else rejected_mask.to(torch.bool)
    )
    partners = select_partners(_gather(user_vectors), ratio, similarity)[rank * b : (rank + 1) * b]
    ids = _pool(_gather(rejected_ids), rejected_ids, partners)  # [B, P]
    mask = _pool(_gather(own_mask), own_mask, partners)  # [B, P]
    shared = torch.arange(ids.shape[1], device=ids.device) >= k  # [P]
    shared = shared.expand_as(ids)
    if exclude_collisions:
        mask = mask & ~(shared & (ids == chosen_ids.unsqueeze(-1)))
        # Slot j repeats an earlier real slot j' < j (a repeat of a repeat also repeats the first).
        same = ids.unsqueeze(2) == ids.unsqueeze(1)  # [B, P(j), P(j')]
        earlier = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device)
        earlier = earlier.tril(diagonal=-1)
        repeat = (same & earlier & mask.unsqueeze(1)).any(-1)  # [B, P]
        mask = mask & ~(shared & repeat)  # own negatives are kept as given
    pooled = {name: _pool(_gather(v), v.detach(), partners) for name, v in (extras or {}).items()}
    return NegativePool(ids, mask, shared.clone(), partners, extras=pooled)


def share_negatives(
    rejected_logps: Tensor,
    rejected_ids: Tensor,
    rejected_mask: Tensor | None,
    chosen_ids: Tensor,
    user_vectors: Tensor,
    *,
    ratio: float,
    similarity: str = "dot",
    mode: str = "corrected",
    cross_rank_grad: bool = True,
    exclude_collisions: bool = True,
    extras: dict[str, Tensor] | None = None,
) -> NegativePool:
    """The extended pool with the partners' log-probs reused as computed under their prompts.

    Args:
        rejected_logps: [B, K] the own negatives' log-probs (policy, with grad).
        rejected_ids, rejected_mask, chosen_ids, user_vectors, ratio, similarity,
            exclude_collisions: as in ``gather_pool_ids``.
        mode: "corrected" (gradients kept) or "faithful" (every negative detached).
        cross_rank_grad: in "corrected" mode, route gradients of negatives borrowed from other
            processes back to their owner (differentiable all-gather) instead of detaching them.
        extras: name -> [B, K] per-negative tensors to pool alike (e.g. aux scores, reference
            log-probs); gathered without gradient.
    Returns:
        NegativePool with logps [B, P] and extras [B, P] filled. With DDP's gradient averaging,
        each process's mean loss over its rows yields the gradient of the global-batch mean.
    """
    if mode not in MODES:
        raise ValueError(f"napo mode must be one of {MODES}, got {mode!r}")
    pool = gather_pool_ids(
        rejected_ids,
        rejected_mask,
        chosen_ids,
        user_vectors,
        ratio=ratio,
        similarity=similarity,
        exclude_collisions=exclude_collisions,
        extras=extras,
    )
    if pool.partners.shape[1] == 0:  # nothing to borrow (S = 0): skip the collectives
        pool.logps = rejected_logps.detach() if mode == "faithful" else rejected_logps
        return pool
    if mode == "faithful":
        own = rejected_logps.detach()
        global_logps = _gather(rejected_logps)
    else:
        own = rejected_logps
        global_logps = _gather(rejected_logps, keep_local_grad=True, differentiable=cross_rank_grad)
    pool.logps = _pool(global_logps, own, pool.partners)  # [B, P]
    return pool

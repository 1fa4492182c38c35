"""NAPO's negative pool: each example's own negatives, plus its most similar peers' when sharing.

In a global batch of N examples (all processes; rank r holds global rows r*B .. r*B+B-1), example
n takes the K negatives of its S = int(rho * (N - 1)) most similar OTHER examples (dot or
cosine of the auxiliary user vectors; ties go to the lower row index). "Other" is by dataset row
id, as in the reference code: every gathered row with the example's own id (itself, and the
duplicates a distributed sampler pads an uneven split with) is excluded. Its pool is its own K
negatives, then the partners' S * K in partner order. A shared item is masked out when it equals
the example's own positive or an item already in the pool (own or an earlier partner's).

``build_pool`` is the one place the pool is assembled, for the three ``share_mode`` values:
- ``none``: the own K negatives;
- ``reuse`` (the paper's shortcut, no extra compute): shared log-probs are the partner's, computed
  under the PARTNER's prompt (``share_negatives``); with gradients kept, pushing them down moves
  the partner's context, not the example's;
- ``rescore``: the pool's item ids are chosen before the forward (``gather_pool_ids``), the
  borrowed items are tokenized after the example's own prompt exactly as its own candidates are
  (``napo.scoring.borrowed_completions``), appended to its completions and collated once
  (``rescore_batch``), and scored under its own prompt in the same pass.

The detach rule, stated once: with ``detach_negatives`` (the reference code's behaviour) every
pooled negative log-prob is detached, so only the positive is trained; otherwise own and
same-process negatives keep their gradients, and negatives borrowed from other processes get
theirs through a differentiable all-gather (``differentiable_gather``) or are detached.

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
SHARE_MODES = ("none", "reuse", "rescore")


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

    @property
    def num_own(self) -> int:
        """K: the first K slots of every row are the example's own negatives."""
        return int((~self.shared[0]).sum()) if self.shared.numel() else 0


def num_partners(n: int, ratio: float) -> int:
    """S = int(ratio * (n - 1)) in Python floats, the reference code's count (rho 0.7, N 91: 62,
    since 0.7 * 90 is 62.99999999999999)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"share ratio (rho) must be in [0, 1], got {ratio}")
    return max(0, int(float(ratio) * (n - 1)))


def _excluded(n: int, row_ids: Tensor | None, device) -> Tensor:
    """[N, N] bool: True where column m may not be row n's partner (same dataset row id, or
    m == n when no ids are given)."""
    if row_ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    row_ids = row_ids.reshape(-1).to(device)
    if row_ids.shape[0] != n:
        raise ValueError(f"row_ids must hold one id per row ({n}), got shape {tuple(row_ids.shape)}")
    return row_ids[:, None] == row_ids[None, :]


def select_partners(user_vectors: Tensor, ratio: float, similarity: str = "dot",
                    row_ids: Tensor | None = None) -> Tensor:
    """Global row indices of each row's S most similar other rows, most similar first.

    Args:
        user_vectors: [N, d] the global batch's auxiliary user vectors.
        ratio: rho; S = int(rho * (N - 1)).
        similarity: "dot" or "cosine".
        row_ids: [N] dataset row ids: rows sharing an example's id are never its partners (the
            reference code's rule); None excludes the diagonal only.
    Returns:
        LongTensor [N, S]; ties are broken by the lower row index (deterministic on every rank).
        When fewer than S rows are eligible, the last columns hold excluded rows:
        ``gather_pool_ids`` masks their slots.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    n = user_vectors.shape[0]
    s = num_partners(n, ratio)
    vectors = user_vectors.detach().to(torch.float64)  # float64: fewer accidental near-ties
    if similarity == "cosine":
        vectors = F.normalize(vectors, dim=-1)
    sim = vectors @ vectors.T  # [N, N]
    sim = sim.masked_fill(_excluded(n, row_ids, sim.device), -math.inf)
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
    row_ids: Tensor | None = None,
) -> NegativePool:
    """The extended pool's item ids and mask for each local example (no log-probs).

    Args:
        rejected_ids: [B, K] item ids of the own negatives; rejected_mask: [B, K] bool or None.
        chosen_ids: [B] the positive's item id; user_vectors: [B, d] auxiliary user vectors.
        ratio: rho. similarity: "dot" | "cosine".
        exclude_collisions: mask shared items equal to the own positive or already in the pool
            (the reference code does not; pass False to reproduce that).
        extras: name -> [B, K] per-negative tensors (e.g. aux scores) to pool alike, detached.
        row_ids: [B] dataset row ids (the batch's ``example_idx``): a gathered row with the
            example's own id is never its partner. None: only the example itself is excluded.
    Returns:
        NegativePool with ids, mask, shared, partners, extras (logps None).
    Raises:
        ValueError: an id of -1 (unknown item) in a real own slot or as a positive: pooling
            compares items by id, so unknown ids would silently drop every borrowed slot.
    """
    b, k = rejected_ids.shape
    own_mask = (
        torch.ones_like(rejected_ids, dtype=torch.bool)
        if rejected_mask is None
        else rejected_mask.to(torch.bool)
    )
    if bool((rejected_ids[own_mask] < 0).any()) or bool((chosen_ids < 0).any()):
        raise ValueError(
            "negative sharing needs item ids, got -1 (unknown item) in a real slot: prepare the data "
            "with data_prep (target and candidates columns) or turn sharing off"
        )
    _check_equal_shapes(rejected_ids)
    rank, _ = _world()
    global_ids = None if row_ids is None else _gather(row_ids)
    partners = select_partners(_gather(user_vectors), ratio, similarity, row_ids=global_ids)
    partners = partners[rank * b : (rank + 1) * b]  # [B, S]
    ids = _pool(_gather(rejected_ids), rejected_ids, partners)  # [B, P]
    mask = _pool(_gather(own_mask), own_mask, partners)  # [B, P]
    if global_ids is not None:  # fewer eligible rows than S: the excluded ones fill the tail
        eligible = global_ids[partners] != row_ids.reshape(-1, 1)  # [B, S]
        mask[:, k:] &= eligible.repeat_interleave(k, dim=1)
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
    detach: bool = False,
    differentiable_gather: bool = True,
    exclude_collisions: bool = True,
    extras: dict[str, Tensor] | None = None,
    row_ids: Tensor | None = None,
) -> NegativePool:
    """The extended pool with the partners' log-probs reused as computed under their prompts.

    Args:
        rejected_logps: [B, K] the own negatives' log-probs (policy, with grad).
        rejected_ids, rejected_mask, chosen_ids, user_vectors, ratio, similarity,
            exclude_collisions, row_ids: as in ``gather_pool_ids``.
        detach: detach every negative (the reference code); otherwise gradients are kept.
        differentiable_gather: without ``detach``, route gradients of negatives borrowed from
            other processes back to their owner instead of detaching them.
        extras: name -> [B, K] per-negative tensors to pool alike (e.g. aux scores, reference
            log-probs); gathered without gradient.
    Returns:
        NegativePool with logps [B, P] and extras [B, P] filled. With DDP's gradient averaging,
        each process's mean loss over its rows yields the gradient of the global-batch mean.
    """
    pool = gather_pool_ids(
        rejected_ids,
        rejected_mask,
        chosen_ids,
        user_vectors,
        ratio=ratio,
        similarity=similarity,
        exclude_collisions=exclude_collisions,
        extras=extras,
        row_ids=row_ids,
    )
    if pool.partners.shape[1] == 0:  # nothing to borrow (S = 0): skip the collectives
        pool.logps = rejected_logps.detach() if detach else rejected_logps
        return pool
    if detach:
        own = rejected_logps.detach()
        global_logps = _gather(rejected_logps)
    else:
        own = rejected_logps
        global_logps = _gather(rejected_logps, keep_local_grad=True, differentiable=differentiable_gather)
    pool.logps = _pool(global_logps, own, pool.partners)  # [B, P]
    return pool


def borrowed_items(pool: NegativePool) -> list[list[int]]:
    """Per row, the item ids of the real borrowed slots, in pool order (what rescore must score)."""
    k = pool.num_own
    ids, mask = pool.ids[:, k:].tolist(), pool.mask[:, k:].tolist()
    return [[i for i, real in zip(row, keep, strict=True) if real] for row, keep in zip(ids, mask, strict=True)]


def rescore_batch(listwise: list[dict], pool: NegativePool, borrowed: list[list[list[int]]],
                  pad_token_id: int, layout: str) -> tuple[dict, Tensor]:
    """Own completions + the borrowed ones, collated once under each example's own prompt.

    Args:
        listwise: per example {"prompt_ids", "completion_ids": chosen then the K own negatives}.
        pool: from ``gather_pool_ids`` (ids [B, P], mask [B, P]; the first K slots are own).
        borrowed: per example, the token ids of its real borrowed slots in pool order
            (``borrowed_items`` gives their item ids; ``napo.scoring.borrowed_completions`` the ids).
    Returns:
        (the collated batch, ``slot`` [B, P] long: the batch column holding each pool slot's
        completion, -1 for masked slots).
    """
    from napo.scoring import append_completions, collate_listwise

    k = pool.num_own
    slot = torch.full_like(pool.ids, -1)
    slot[:, :k] = torch.where(pool.mask[:, :k], torch.arange(1, k + 1, device=pool.ids.device), -1)
    shared_real = pool.mask[:, k:]
    # the j-th real borrowed slot of a row sits in column 1 + K_b + j, K_b = the row's own count
    own_counts = torch.tensor([len(ex["completion_ids"]) for ex in listwise], device=pool.ids.device)
    rank = shared_real.long().cumsum(-1) - 1  # [B, P - K]
    slot[:, k:] = torch.where(shared_real, own_counts[:, None] + rank, -1)
    return collate_listwise(append_completions(listwise, borrowed), pad_token_id, layout), slot


def build_pool(
    share_mode: str,
    logps: Tensor,
    ref_logps: Tensor | None,
    item_ids: Tensor,
    own_mask: Tensor,
    *,
    aux_scores: Tensor | None = None,
    user_vectors: Tensor | None = None,
    planned: NegativePool | None = None,
    slot: Tensor | None = None,
    ratio: float = 0.7,
    similarity: str = "dot",
    detach_negatives: bool = False,
    differentiable_gather: bool = True,
    mask_collisions: bool = True,
    item_vectors: Tensor | None = None,
    row_ids: Tensor | None = None,
) -> NegativePool:
    """Each example's negative pool with policy (and reference) log-probs and auxiliary scores.

    Args:
        share_mode: "none", "reuse" or "rescore" (module docstring).
        logps: [B, M] log-probs of the scored batch's completions (column 0 = chosen); with
            rescore, the batch of ``rescore_batch``.
        ref_logps: [B, M] reference log-probs of the same columns, or None (reference-free).
        item_ids: [B, 1+K] item ids of the own completions; own_mask: [B, K] real own negatives.
        aux_scores: [B, K] auxiliary scores of the own negatives, or None.
        user_vectors: [B, d] auxiliary user vectors (reuse).
        planned, slot: rescore only: ``gather_pool_ids``'s pool and ``rescore_batch``'s slot.
        detach_negatives: detach every pooled log-prob (the reference code); nothing else detaches.
        mask_collisions: mask shared items equal to the positive or repeated in the pool (reuse;
            the reference code does not).
        item_vectors: [num_items, d] the auxiliary model's item vectors: borrowed items then get
            the example's OWN auxiliary score <user_vector, item_vector> instead of the partner's.
        row_ids: [B] dataset row ids (reuse): rows with an example's own id are not its partners.
    Returns:
        NegativePool: logps [B, P]; extras "ref" [B, P] (when ref_logps) and "aux" [B, P] (when
        aux_scores); ids, mask, shared, partners.
    """
    if share_mode not in SHARE_MODES:
        raise ValueError(f"share_mode must be one of {SHARE_MODES}, got {share_mode!r}")
    extras = {}
    if aux_scores is not None:
        extras["aux"] = aux_scores
    if share_mode == "rescore":
        if planned is None or slot is None:
            raise ValueError("share_mode 'rescore' needs the planned pool and slots of rescore_batch")
        pool = planned
        index = slot.clamp(min=0)  # masked slots read column 0 and are never used
        pool.logps = logps.gather(1, index)
        if ref_logps is not None:
            pool.extras["ref"] = ref_logps.gather(1, index)
    elif share_mode == "reuse":
        if ref_logps is not None:
            extras["ref"] = ref_logps[:, 1:]
        pool = share_negatives(
            logps[:, 1:], item_ids[:, 1:], own_mask, item_ids[:, 0], user_vectors,
            ratio=ratio, similarity=similarity, detach=detach_negatives,
            differentiable_gather=differentiable_gather, exclude_collisions=mask_collisions, extras=extras,
            row_ids=row_ids,
        )
    else:
        if ref_logps is not None:
            extras["ref"] = ref_logps[:, 1:]
        b, k = own_mask.shape
        pool = NegativePool(
            ids=item_ids[:, 1:], mask=own_mask.to(torch.bool),
            shared=torch.zeros_like(own_mask, dtype=torch.bool),
            partners=torch.zeros(b, 0, dtype=torch.long, device=own_mask.device),
            logps=logps[:, 1:], extras={n: v.detach() for n, v in extras.items()},
        )
    if item_vectors is not None and user_vectors is not None and "aux" in pool.extras:
        items = item_vectors[pool.ids.clamp(min=0)].to(user_vectors.dtype)  # [B, P, d]
        own_view = (items * user_vectors.detach()[:, None, :]).sum(-1)  # [B, P]
        pool.extras["aux"] = torch.where(pool.shared, own_view, pool.extras["aux"])
    if detach_negatives:
        pool.logps = pool.logps.detach()
    return pool

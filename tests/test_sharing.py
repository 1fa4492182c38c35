import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from napo.losses import listwise_preference_loss
from napo.sharing import (
    borrowed_items,
    build_pool,
    gather_pool_ids,
    num_partners,
    rescore_batch,
    select_partners,
    share_negatives,
)


@pytest.mark.parametrize("rho, n, expected", [
    (0.7, 16, 10),  # the paper: 4 GPUs x 4, rho 0.7 -> 10 users
    (1.0, 16, 15),
    (0.5, 16, 7),
    (0.8, 16, 12),
    (0.6, 6, 3),
    (0.7, 4, 2),
    (0.7, 91, 62),  # 0.7 * 90 is 62.99999999999999: the reference's int() gives 62
    (0.35, 181, 62),  # 0.35 * 180 likewise
    (0.7, 2, 0),
    (0.7, 1, 0),
    (0.0, 8, 0),
])
def test_num_partners_is_the_reference_count(rho, n, expected):
    assert num_partners(n, rho) == expected


def test_num_partners_rejects_a_ratio_outside_0_1():
    with pytest.raises(ValueError, match="rho"):
        num_partners(8, 1.5)


def test_partners_exclude_every_row_with_the_same_id():
    """A distributed sampler pads an uneven split with repeated rows: a repeat has the same
    dataset id and the same user vector, so it would be an example's most similar partner. The
    reference excludes every gathered row with the example's id, not only the diagonal."""
    users = torch.tensor([[1.0, 0.0], [0.6, 0.2], [0.0, 1.0], [1.0, 0.0]])  # row 3 repeats row 0
    ids = torch.tensor([7, 8, 9, 7])
    assert select_partners(users, 1 / 3).tolist() == [[3], [0], [1], [0]]  # diagonal only
    assert select_partners(users, 1 / 3, row_ids=ids).tolist() == [[1], [0], [1], [1]]
    # rho 1: S = 3 but rows 0 and 3 have only 2 eligible partners; the excluded one fills the tail
    # and its slots are masked
    rejected = torch.tensor([[10], [11], [12], [10]])
    pool = gather_pool_ids(rejected, None, torch.tensor([1, 2, 3, 1]), users, ratio=1.0, row_ids=ids)
    assert pool.partners[0].tolist() == [1, 2, 0]  # the -inf tail, lowest index first
    assert pool.ids[0].tolist() == [10, 11, 12, 10] and pool.mask[0].tolist() == [True, True, True, False]
    loose = gather_pool_ids(rejected, None, torch.tensor([1, 2, 3, 1]), users, ratio=1.0, row_ids=ids,
                            exclude_collisions=False)  # masked for exclusion, not as a collision
    assert loose.mask[0].tolist() == [True, True, True, False] and loose.mask[1].all()


@pytest.mark.parametrize("where", ["positive", "negative"])
def test_unknown_item_ids_raise_instead_of_dropping_borrowed_slots(where):
    batch = _batch(n=4, k=2, seed=8)
    rejected, chosen = batch["rejected_ids"].clone(), batch["chosen_ids"].clone()
    mask = torch.ones_like(rejected, dtype=torch.bool)
    if where == "positive":
        chosen[:] = -1
    else:
        rejected[1, 0] = -1
    with pytest.raises(ValueError, match="needs item ids"):
        gather_pool_ids(rejected, mask, chosen, batch["user_vectors"], ratio=0.7)
    item_ids = torch.cat([chosen[:, None], rejected], 1)
    logps = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs item ids"):
        build_pool("reuse", logps, None, item_ids, mask, user_vectors=batch["user_vectors"])
    build_pool("none", logps, None, item_ids, mask)  # no sharing: ids are not needed
    if where == "negative":  # -1 on a padded (masked) slot is the collator's filler: fine
        mask[1, 0] = False
        pool = gather_pool_ids(rejected, mask, chosen, batch["user_vectors"], ratio=0.7)
        assert pool.mask[:, 2:].any()


def test_select_partners_two_clusters():
    users = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.8]])
    # S = floor(1/3 * 3) = 1: each user's nearest neighbour is in its own cluster
    assert select_partners(users, 1 / 3).tolist() == [[1], [0], [3], [2]]
    # S = 3: everyone, most similar first (row 1: dots 0.9, 0.17, 0.1 with rows 0, 3, 2)
    assert select_partners(users, 1.0)[1].tolist() == [0, 3, 2]


def test_dot_and_cosine_differ_and_ties_go_to_lower_index():
    users = torch.tensor([[1.0, 0.0], [0.5, 0.0], [3.0, 3.0]])
    assert select_partners(users, 0.5, "dot")[0].tolist() == [2]  # dot 3 > 0.5
    assert select_partners(users, 0.5, "cosine")[0].tolist() == [1]  # cos 1 > 0.707
    tied = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    partners = select_partners(tied, 2 / 3)
    assert partners[0].tolist() == [1, 2] and partners[1].tolist() == [2, 3]
    assert partners[3].tolist() == [1, 2]
    with pytest.raises(ValueError, match="similarity"):
        select_partners(tied, 0.5, "l2")


def test_pool_layout_and_collision_exclusion():
    users = torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.0, 1.0]])  # S = 1: 0<->1, 2 -> 0
    chosen = torch.tensor([10, 20, 30])
    rejected = torch.tensor([[11, 12, 13], [10, 11, 21], [12, 12, 31]])
    own_mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    pool = gather_pool_ids(rejected, own_mask, chosen, users, ratio=0.5)
    assert pool.partners.tolist() == [[1], [0], [0]]
    assert pool.ids.tolist() == [
        [11, 12, 13, 10, 11, 21],
        [10, 11, 21, 11, 12, 13],
        [12, 12, 31, 11, 12, 13],
    ]
    assert pool.shared.tolist() == [[False] * 3 + [True] * 3] * 3
    assert pool.mask.tolist() == [
        # 10 = own positive, 11 already own; 21 new. (own slot 13 stays masked as given)
        [True, True, False, False, False, True],
        # 11 already own; 12 new; 13 was masked in its owner's pool, so it stays masked
        [True, True, True, False, True, False],
        # own duplicates are kept as given; 12 already own; 11 new
        [True, True, True, True, False, False],
    ]
    loose = gather_pool_ids(rejected, own_mask, chosen, users, ratio=0.5, exclude_collisions=False)
    # row 0 borrows row 1's full pool; rows 1 and 2 borrow row 0's (its slot 13 is masked)
    expected = [[True, True, True], [True, True, False], [True, True, False]]
    assert loose.mask[:, 3:].tolist() == expected


def test_duplicates_among_partners_are_dropped():
    users = torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.8, 0.0]])  # row 0 borrows from 1 then 2
    pool = gather_pool_ids(
        torch.tensor([[1], [5], [5]]), None, torch.tensor([0, 7, 8]), users, ratio=1.0
    )
    assert pool.ids[0].tolist() == [1, 5, 5]
    assert pool.mask[0].tolist() == [True, True, False]
    # extras travel with their items (rescore path: ids + aux scores, no log-probs)
    aux = torch.tensor([[0.1], [0.5], [0.9]], requires_grad=True)
    pool = gather_pool_ids(
        torch.tensor([[1], [5], [6]]),
        None,
        torch.tensor([0, 7, 8]),
        users,
        ratio=1.0,
        extras={"aux": aux},
    )
    assert pool.logps is None and not pool.extras["aux"].requires_grad
    torch.testing.assert_close(pool.extras["aux"][0], torch.tensor([0.1, 0.5, 0.9]))
    torch.testing.assert_close(pool.extras["aux"][2], torch.tensor([0.9, 0.1, 0.5]))


def _batch(n=8, k=3, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "chosen_logps": torch.randn(n, generator=g, dtype=torch.float64) * 3 - 20,
        "rejected_logps": torch.randn(n, k, generator=g, dtype=torch.float64) * 3 - 20,
        "rejected_ids": torch.randint(0, 12, (n, k), generator=g),
        "rejected_mask": torch.rand(n, k, generator=g) > 0.2,
        "chosen_ids": torch.randint(0, 12, (n,), generator=g),
        "user_vectors": torch.randn(n, d, generator=g),
        "aux_scores": torch.randn(n, k, generator=g),
    }


def _loss_and_grads(batch, **kwargs):
    """Mean pooled NAPO loss over `batch`'s rows, and its gradients wrt both log-prob inputs."""
    chosen = batch["chosen_logps"].clone().requires_grad_()
    rejected = batch["rejected_logps"].clone().requires_grad_()
    pool = share_negatives(
        rejected,
        batch["rejected_ids"],
        batch["rejected_mask"],
        batch["chosen_ids"],
        batch["user_vectors"],
        ratio=0.7,
        extras={"aux": batch["aux_scores"]},
        **kwargs,
    )
    loss = listwise_preference_loss(
        chosen, pool.logps, beta=1.0, margin=0.5, rejected_mask=pool.mask
    ).mean()
    loss.backward()
    zeros = torch.zeros_like(rejected)
    return loss.detach(), chosen.grad, zeros if rejected.grad is None else rejected.grad, pool


def test_gradients_kept_unless_detached():
    batch = _batch()
    _, g_chosen, g_rej, pool = _loss_and_grads(batch)
    assert g_rej.abs().sum() > 0 and g_chosen.abs().sum() > 0
    assert pool.logps.shape == (8, 3 * (1 + 4)) and pool.extras["aux"].shape == (8, 15)
    # own slots are the own tensors; shared slots the partners' (their log-probs and aux scores)
    torch.testing.assert_close(pool.logps[:, :3].detach(), batch["rejected_logps"])
    p = pool.partners[:, 0]
    torch.testing.assert_close(pool.logps[:, 3:6].detach(), batch["rejected_logps"][p])
    torch.testing.assert_close(pool.extras["aux"][:, 3:6], batch["aux_scores"][p])
    loss_f, g_chosen_f, g_rej_f, _ = _loss_and_grads(batch, detach=True)
    assert (g_rej_f == 0).all() and g_chosen_f.abs().sum() > 0
    # same value in both modes: only the gradient differs
    loss_c, *_ = _loss_and_grads(batch)
    torch.testing.assert_close(loss_f, loss_c)


def test_pool_matches_brute_force_loss():
    """The pooled loss equals a per-example loop over explicit lists of negatives."""
    batch = _batch(seed=3)
    loss, *_ = _loss_and_grads(batch)
    partners = select_partners(batch["user_vectors"], 0.7)
    total = 0.0
    for n in range(8):
        seen, scores = set(), []
        for k in range(3):  # own negatives, as given
            if batch["rejected_mask"][n, k]:
                scores.append(batch["rejected_logps"][n, k])
                seen.add(int(batch["rejected_ids"][n, k]))
        for m in partners[n].tolist():
            for k in range(3):
                item = int(batch["rejected_ids"][m, k])
                if (
                    batch["rejected_mask"][m, k]
                    and item not in seen
                    and item != batch["chosen_ids"][n]
                ):
                    scores.append(batch["rejected_logps"][m, k])
                    seen.add(item)
        z = 0.5 + torch.logsumexp(torch.stack(scores) - batch["chosen_logps"][n], 0)
        total += torch.nn.functional.softplus(z)
    torch.testing.assert_close(loss, total / 8)


def test_no_partners_returns_own_pool():
    batch = _batch(n=1)
    pool = share_negatives(
        batch["rejected_logps"],
        batch["rejected_ids"],
        batch["rejected_mask"],
        batch["chosen_ids"],
        batch["user_vectors"],
        ratio=0.7,
    )
    assert pool.partners.shape == (1, 0)
    assert torch.equal(pool.logps, batch["rejected_logps"])
    assert torch.equal(pool.mask, batch["rejected_mask"])


WORLD, LOCAL_B = 2, 4


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        local = {k: v[rows] for k, v in _batch().items()}
        out = {}
        for name, kwargs in {
            "corrected": {},
            "detached": {"differentiable_gather": False},
            "faithful": {"detach": True},
        }.items():
            loss, g_chosen, g_rej, pool = _loss_and_grads(local, **kwargs)
            out.update({f"{name}/loss": loss.reshape(1), f"{name}/g_chosen": g_chosen})
            out.update({f"{name}/g_rejected": g_rej, f"{name}/ids": pool.ids})
            out.update(
                {f"{name}/mask": pool.mask.to(torch.uint8), f"{name}/aux": pool.extras["aux"]}
            )
        save_file(out, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~5-10 s: two spawned gloo processes
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    cat = lambda key: torch.cat([r[key] for r in ranks])  # noqa: E731

    loss, g_chosen, g_rej, pool = _loss_and_grads(_batch())
    for name in ("corrected", "detached", "faithful"):
        # DDP averages gradients over processes, so the global-mean loss is the mean of the
        # per-process means and its gradient is each process's gradient / WORLD.
        torch.testing.assert_close(cat(f"{name}/loss").mean(), loss, atol=1e-5, rtol=0)
        assert torch.equal(cat(f"{name}/ids"), pool.ids)
        assert torch.equal(cat(f"{name}/mask").bool(), pool.mask)
        torch.testing.assert_close(cat(f"{name}/aux"), pool.extras["aux"])
        torch.testing.assert_close(cat(f"{name}/g_chosen") / WORLD, g_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(cat("corrected/g_rejected") / WORLD, g_rej, atol=1e-5, rtol=0)
    # without the differentiable gather, negatives borrowed across processes get no gradient
    assert not torch.allclose(cat("detached/g_rejected") / WORLD, g_rej, atol=1e-5)
    assert (cat("faithful/g_rejected") == 0).all()


def _prompt_free_scores(ids: torch.Tensor) -> torch.Tensor:
    """A stand-in for a model whose log-prob of an item does not depend on the prompt."""
    return -1.0 - 0.1 * ids.to(torch.float64)


def test_build_pool_modes_agree_when_scores_ignore_the_prompt():
    """none / reuse / rescore assemble the same pool; with prompt-free scores their log-probs agree,
    and each pool slot of rescore reads the batch column that holds its item."""
    batch = _batch(n=6, k=2, seed=5)
    n, k = batch["rejected_ids"].shape
    item_ids = torch.cat([batch["chosen_ids"][:, None], batch["rejected_ids"]], 1)  # [B, 1+K]
    own_mask, users, aux = batch["rejected_mask"], batch["user_vectors"], batch["aux_scores"]
    logps = _prompt_free_scores(item_ids)
    ref = logps * 0.5

    none = build_pool("none", logps, ref, item_ids, own_mask, aux_scores=aux)
    assert torch.equal(none.ids, batch["rejected_ids"]) and torch.equal(none.mask, own_mask)
    assert torch.equal(none.extras["ref"], ref[:, 1:]) and torch.equal(none.extras["aux"], aux)
    assert none.partners.shape == (n, 0) and not none.shared.any()

    reuse = build_pool("reuse", logps, ref, item_ids, own_mask, aux_scores=aux, user_vectors=users, ratio=0.7)
    planned = gather_pool_ids(batch["rejected_ids"], own_mask, batch["chosen_ids"], users, ratio=0.7,
                              extras={"aux": aux})
    completions = {i: [100 + i] for i in range(12)}
    listwise = [{"prompt_ids": [1, 2, 3], "completion_ids": [[100 + int(i)] for i in row]} for row in item_ids]
    borrowed = [[completions[i] for i in row] for row in borrowed_items(planned)]
    scored, slot = rescore_batch(listwise, planned, borrowed, pad_token_id=0, layout="naive")
    # naive layout: one sequence per (row, completion), row-major; the completion token follows the
    # 3 prompt tokens, so each real pool slot's column must hold the token of its item
    starts = [0]
    for example, more in zip(listwise, borrowed, strict=True):
        starts.append(starts[-1] + len(example["completion_ids"]) + len(more))
    for b in range(n):
        for j in range(planned.ids.shape[1]):
            if planned.mask[b, j]:
                assert scored["input_ids"][starts[b] + slot[b, j], 3].item() == 100 + planned.ids[b, j].item()
    # the extended batch's completion m of row b is the token 100 + item: recover the item ids
    width = scored["completion_mask"].shape[1]
    column_items = torch.full((n, width), -1)
    for b, example in enumerate(listwise):
        column_items[b, : len(example["completion_ids"])] = item_ids[b]
    for b in range(n):
        for j in range(planned.ids.shape[1]):
            if planned.mask[b, j] and j >= k:
                column_items[b, slot[b, j]] = planned.ids[b, j]
    assert ((slot >= 0) == planned.mask).all() and scored["completion_mask"].sum() == n * (1 + k) + (planned.mask & planned.shared).sum()
    rescored_logps = _prompt_free_scores(column_items)
    rescore = build_pool("rescore", rescored_logps, rescored_logps * 0.5, item_ids, own_mask,
                         planned=planned, slot=slot)
    for pool in (reuse, rescore):
        assert torch.equal(pool.ids, planned.ids) and torch.equal(pool.mask, planned.mask)
        real = pool.mask
        torch.testing.assert_close(pool.logps[real], _prompt_free_scores(pool.ids)[real])
        torch.testing.assert_close(pool.extras["ref"][real], 0.5 * _prompt_free_scores(pool.ids)[real])
        torch.testing.assert_close(pool.extras["aux"], planned.extras["aux"])


def test_build_pool_detaches_only_when_asked():
    batch = _batch(n=4, k=2, seed=6)
    item_ids = torch.cat([batch["chosen_ids"][:, None], batch["rejected_ids"]], 1)
    logps = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("none", "reuse"):
        kept = build_pool(mode, logps, None, item_ids, batch["rejected_mask"], user_vectors=batch["user_vectors"])
        cut = build_pool(mode, logps, None, item_ids, batch["rejected_mask"], user_vectors=batch["user_vectors"],
                         detach_negatives=True)
        assert kept.logps.requires_grad and not cut.logps.requires_grad
    with pytest.raises(ValueError, match="share_mode"):
        build_pool("everyone", logps, None, item_ids, batch["rejected_mask"])


def test_borrowed_items_get_the_borrowers_own_aux_score():
    batch = _batch(n=5, k=2, seed=7)
    item_ids = torch.cat([batch["chosen_ids"][:, None], batch["rejected_ids"]], 1)
    items = torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    pool = build_pool("reuse", _prompt_free_scores(item_ids), None, item_ids, batch["rejected_mask"],
                      aux_scores=batch["aux_scores"], user_vectors=batch["user_vectors"], item_vectors=items)
    own_view = batch["user_vectors"] @ items.T  # [B, num_items]
    for b in range(5):
        for j in range(pool.ids.shape[1]):
            if pool.shared[b, j]:
                assert pool.extras["aux"][b, j].item() == pytest.approx(own_view[b, pool.ids[b, j]].item(), abs=1e-5)
            else:  # own negatives keep the recorded scores
                assert pool.extras["aux"][b, j].item() == pytest.approx(batch["aux_scores"][b, j].item())

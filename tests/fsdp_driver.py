"""FSDP2 on CPU processes (`torchrun --nproc_per_node 2 tests/fsdp_driver.py OUT.json`), for
tests/test_fsdp_cpu.py.

A tiny Llama is sharded with torch's ``fully_shard`` (every decoder layer, then the root) over a
gloo process group and trained for a few steps with this toolkit's listwise objective
(``napo.scoring`` packed scoring -> ``napo.losses.listwise_preference_loss``, reference-free,
margin gamma0 = 1), each rank on its half of the batch. Rank 0 also trains an unsharded copy,
alone, on the whole batch. It writes OUT.json: per rank the local shard shape of a few
parameters and a checksum of each shard, the per-step losses of both runs (the sharded one's
averaged over ranks) and the largest difference between the final parameters of the two.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import LlamaConfig, LlamaForCausalLM

from napo.losses import listwise_preference_loss
from napo.scoring import collate_listwise, completion_logps

STEPS, ROWS, SLOTS, LR = 3, 8, 4, 0.05
WATCHED = ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight")


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def examples() -> list[dict]:
    """ROWS prompts of token ids, each with SLOTS completions (slot 0 = the chosen one)."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(ROWS):
        prompt = torch.randint(3, 64, (int(torch.randint(4, 9, (1,), generator=gen)),), generator=gen).tolist()
        completions = [torch.randint(3, 64, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen).tolist()
                       for _ in range(SLOTS)]
        out.append({"prompt_ids": prompt, "completion_ids": completions})
    return out


def step_loss(model, rows: list[dict]) -> torch.Tensor:
    batch = collate_listwise(rows, pad_token_id=0, layout="packed")
    logps, _ = completion_logps(model, batch)  # [B, SLOTS]
    return listwise_preference_loss(logps[:, 0], logps[:, 1:], beta=1.0, margin=1.0).mean()


def train(model, rows: list[dict], reduce=None) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = step_loss(model, rows)
        loss.backward()  # FSDP2: gradients reduce-scattered, averaged over ranks
        optimizer.step()
        value = loss.detach().clone()
        if reduce is not None:
            reduce(value)
        losses.append(value.item())
    return losses


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = examples()
    model = tiny_model()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    params = dict(model.named_parameters())
    shards = {name: {"local_shape": list(params[name].to_local().shape), "full_shape": list(params[name].shape),
                     "is_dtensor": isinstance(params[name], DTensor),
                     "local_sum": float(params[name].to_local().detach().double().sum())} for name in WATCHED}
    per_rank = ROWS // world
    mine = rows[rank * per_rank:(rank + 1) * per_rank]

    def mean_over_ranks(value):
        dist.all_reduce(value)
        value /= world

    sharded_losses = train(model, mine, reduce=mean_over_ranks)
    final = {name: p.full_tensor().detach() for name, p in model.named_parameters()}  # a collective
    all_shards = [None] * world
    dist.all_gather_object(all_shards, shards)
    if rank == 0:
        alone = tiny_model()
        alone_losses = train(alone, rows)
        diff = max((final[n] - p.detach()).abs().max().item() for n, p in alone.named_parameters())
        initial = dict(tiny_model().named_parameters())
        with open(out_path, "w") as handle:
            json.dump({"world": world, "shards": all_shards, "sharded_losses": sharded_losses,
                       "alone_losses": alone_losses, "max_param_diff": diff,
                       "full_sums": {n: float(initial[n].detach().double().sum()) for n in WATCHED},
                       "moved": max((final[n] - initial[n].detach()).abs().max().item() for n in final)}, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

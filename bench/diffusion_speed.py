"""PreferDiff speed on this machine: one training epoch and full-catalogue inference.

Synthetic data of the Beauty shape (17,890 training users, 12,101 items, history 10), so no
dataset is needed. Two settings, both with the Beauty CPU config's other settings
(recipes/configs/beauty/preferdiff-cpu.yaml: one example per user, w 8): its own width over the
whole epoch and every test user, and the paper's d = 3072 timed on a slice and reported per 1,000
users (an epoch over all users at d = 3072 scales linearly from it). Inference = DDIM with guidance
(stride 100 over T = 2000: 20 denoiser calls, guidance folded into the condition) + one matrix
product against the catalogue + the ranks.

    python bench/diffusion_speed.py [--threads 1] [--users 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from napo.recsys.data import SeqSplit
from napo.recsys.train import RecConfig, infer, make_model, make_optimizer

NUM_ITEMS, TRAIN_USERS, TEST_USERS = 12_101, 17_890, 2_237


def synthetic(n: int, rng: np.random.Generator) -> SeqSplit:
    seq = rng.integers(1, NUM_ITEMS + 1, size=(n, 10))
    lengths = rng.integers(4, 11, size=n)
    seq[np.arange(10)[None, :] < (10 - lengths)[:, None]] = 0  # left padding
    return SeqSplit(seq=seq.astype(np.int64), target=rng.integers(0, NUM_ITEMS, size=n))


def epoch_seconds(model, cfg: RecConfig, split: SeqSplit) -> float:
    opt = make_optimizer(list(model.parameters()), cfg)
    model.train()
    seq, tgt = torch.from_numpy(split.seq), torch.from_numpy(split.target)
    start = time.time()
    for b in range(0, len(split), cfg.batch_size):
        loss = model.training_loss(seq[b: b + cfg.batch_size], tgt[b: b + cfg.batch_size],
                                   all_positions=cfg.all_positions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.time() - start


def infer_seconds(model, split: SeqSplit, batch_size: int) -> float:
    start = time.time()
    infer(model, split, batch_size=batch_size)
    return time.time() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--users", type=int, default=1000, help="users timed at d = 3072")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    cpu = yaml.safe_load((Path(__file__).parents[1] / "recipes/configs/beauty/preferdiff-cpu.yaml").read_text())
    for name, hidden, n_train, n_test in (("CPU config", cpu["hidden"], TRAIN_USERS, TEST_USERS),
                                          ("paper d=3072", 3072, args.users, args.users)):
        cfg = RecConfig.from_dict({**cpu, "hidden": hidden})
        model = make_model(cfg, NUM_ITEMS)
        params = sum(p.numel() for p in model.parameters())
        train_s = epoch_seconds(model, cfg, synthetic(n_train, rng))
        infer_s = infer_seconds(model, synthetic(n_test, rng), batch_size=1024 if hidden < 1024 else 256)
        rows.append((name, hidden, params, n_train, train_s, train_s / n_train * 1000,
                     n_test, infer_s, infer_s / n_test * 1000))
    print(f"PreferDiff speed, {args.threads} CPU thread(s), {NUM_ITEMS:,} items, T 2000, DDIM stride 100, "
          f"w {cpu['guidance_w']}")
    print("| setting | d | params | train users | epoch s | s / 1k users | test users | infer s | s / 1k users |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, d, params, nt, ts, tk, ni, is_, ik in rows:
        print(f"| {name} | {d} | {params / 1e6:.1f} M | {nt:,} | {ts:.1f} | {tk:.2f} | {ni:,} | {is_:.1f} | {ik:.2f} |")
    print(f"(an epoch of Beauty's {TRAIN_USERS:,} users at d = 3072 ~ {rows[1][5] * TRAIN_USERS / 1000:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

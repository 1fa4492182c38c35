"""PreferDiff training step: an older commit's step against this tree's, in turns in one process.

The older code is a git worktree of the commit to compare with, e.g.

    git worktree add --detach /tmp/old-main 135ab0d
    python bench/diffusion_step.py --old-root /tmp/old-main [--hidden 3072] [--rounds 3]

Its `napo` package is loaded from that folder under another name (`napo_old`: its own modules
import each other, never this tree's), so both versions live in one process. Both models start from
the same weights and take the same batches; each round runs one step of each, the order swapped
every round, and the script prints every step, the medians and the ratio new / old. A step is what
`fit()` does per batch: `training_loss` (one row per user: the condition at the last history item),
backward, Adam (the old commit's plain `torch.optim.Adam`, this tree's `make_optimizer`).
Default shape: Sports (18,357 items, batch 256, history up to 10), the paper's d 3072, 1 thread.
Only the ratio means something, and only with the machine's load printed beside it.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from napo.recsys.diffusion import DiffusionRec
from napo.recsys.train import RecConfig, make_optimizer

ALIAS = "napo_old"


class _OldTree(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `napo_old.X` from ROOT/napo/X, with the files' own `napo` imports renamed to it."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        base = self.root / "napo" / Path(*fullname.split(".")[1:])
        if (base / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(fullname, base / "__init__.py", loader=self,
                                                          submodule_search_locations=[str(base)])
        if base.with_suffix(".py").is_file():
            return importlib.util.spec_from_file_location(fullname, base.with_suffix(".py"), loader=self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        text = Path(module.__file__).read_text(encoding="utf-8")
        text = re.sub(r"^(\s*)(from|import) napo(?=[.\s])", rf"\1\2 {ALIAS}", text, flags=re.M)
        exec(compile(text, module.__file__, "exec"), module.__dict__)


def load_old(root: Path):
    """The older commit's napo.recsys.diffusion module."""
    if not (root / "napo" / "recsys" / "diffusion.py").is_file():
        raise SystemExit(f"{root}: no napo/recsys/diffusion.py there; pass a worktree of the commit "
                         "to compare with (git worktree add --detach DIR COMMIT)")
    sys.meta_path.insert(0, _OldTree(root))
    return importlib.import_module(f"{ALIAS}.recsys.diffusion")


def batches(num_items: int, batch: int, count: int, seed: int):
    """`count` batches of left-padded histories (4-10 items) and targets, as the Sports rows."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        seq = torch.randint(1, num_items + 1, (batch, 10), generator=gen)
        lengths = torch.randint(4, 11, (batch,), generator=gen)
        seq[torch.arange(10)[None] < (10 - lengths)[:, None]] = 0
        out.append((seq, torch.randint(0, num_items, (batch,), generator=gen)))
    return out


def step(model, opt, seq, target) -> float:
    start = time.perf_counter()
    loss = model.training_loss(seq, target, all_positions=False)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--old-root", required=True, type=Path, help="worktree of the commit to compare with")
    p.add_argument("--hidden", type=int, default=3072)
    p.add_argument("--items", type=int, default=18_357, help="catalogue size (Sports: 18,357)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (one step of each per round)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    old_module = load_old(args.old_root)
    settings = dict(num_blocks=1, num_heads=2, dropout=0.1, max_len=10, objective="preferdiff",
                    preferdiff_form="faithful", lam=0.4, gamma=5.0, guidance=2.0)
    torch.manual_seed(0)
    old = old_module.DiffusionRec(args.items, args.hidden, **settings).train()
    new = DiffusionRec(args.items, args.hidden, **settings).train()
    new.load_state_dict(old.state_dict())
    cfg = RecConfig(model="PreferDiff", hidden=args.hidden, lr=1e-4)
    opts = {"old": torch.optim.Adam(old.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
            "new": make_optimizer(list(new.parameters()), cfg)}
    models = {"old": old, "new": new}
    params = sum(q.numel() for q in new.parameters())
    print(f"PreferDiff training step, d {args.hidden}, {args.items:,} items, batch {args.batch}, "
          f"{params / 1e6:.1f} M parameters, {args.threads} thread(s); old: {old_module.__file__}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data = batches(args.items, args.batch, args.rounds + 1, seed=1)
    times = {"old": [], "new": []}
    for r, (seq, target) in enumerate(data):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for name in order:
            torch.manual_seed(100 + r)
            seconds = step(models[name], opts[name], seq, target)
            if r > 0:  # round 0 warms both up (allocations, Adam state)
                times[name].append(seconds)
        if r > 0:
            print(f"round {r}: old {times['old'][-1]:.2f} s, new {times['new'][-1]:.2f} s", flush=True)
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    ratios = [n / o for n, o in zip(times["new"], times["old"], strict=True)]
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| step | median s | rounds |")
    print("|---|---|---|")
    print(f"| old ({args.old_root.name}) | {old_s:.2f} | {len(times['old'])} |")
    print(f"| new (this tree) | {new_s:.2f} | {len(times['new'])} |")
    print(f"ratio new / old: {new_s / old_s:.3f} (per round: {', '.join(f'{x:.3f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

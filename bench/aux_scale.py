"""The scale of auxiliary scores that NAPO's dynamic margin reads, per auxiliary model.

    OMP_NUM_THREADS=1 python bench/aux_scale.py --dataset_dir runs/data/lastfm \
        --aux runs/lastfm/sasrec/aux runs/lastfm/sasrec-llara/aux

For each aux folder (recipes/recsys.py OUT/aux), over the TRAIN split (the rows NAPO trains on):
the mean and spread of the negatives' raw scores, the spread of M_t over random batches of
``--batch`` rows x ``--k`` negatives (what moves gamma_t in the corrected form: gamma - gamma0 is
about alpha * (M_t - M_bar)), and, in the reference form (M_bar from 0, updated first, no bias
correction), gamma at the first step and its mean over steps 1-10, 11-50 and 51-150 (gamma0 1):
there the LEVEL of the scores, not only their spread, sets gamma until the average catches up.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.prepared import load_prepared  # noqa: E402
from napo.auxiliary import load_aux  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--aux", nargs="+", required=True, help="aux folders to compare")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)
    dataset, _, meta = load_prepared(args.dataset_dir)
    train = dataset["train"]
    is_target = np.asarray(train["candidates"]) == np.asarray(train["target"])[:, None]
    for aux in args.aux:
        scores = load_aux(aux, "train", meta, num_rows=len(train))[1].numpy()
        negatives = scores[~is_target].reshape(len(train), -1)
        rng = np.random.default_rng(0)
        m_t = []
        for _ in range(args.steps):
            rows = rng.choice(len(train), args.batch, replace=False)
            cols = np.argsort(rng.random((args.batch, negatives.shape[1])), axis=1)[:, : args.k]
            m_t.append(float(negatives[rows[:, None], cols].mean()))
        ema, gammas = 0.0, []
        for m in m_t:  # the reference form: update first, then gamma
            ema = args.momentum * ema + (1 - args.momentum) * m
            gammas.append(1.0 - args.alpha * (m - ema))
        g = np.asarray(gammas)
        phases = {f"reference: mean gamma, steps {a + 1}-{b}": round(float(g[a:b].mean()), 3)
                  for a, b in ((0, 10), (10, 50), (50, 150)) if b <= len(g)}
        print(json.dumps({
            "aux": aux, "negatives mean": round(float(negatives.mean()), 3),
            "negatives std": round(float(negatives.std()), 3),
            "positives mean": round(float(scores[is_target].mean()), 3),
            f"std of M_t ({args.batch} x {args.k})": round(float(np.std(m_t)), 4),
            "corrected: alpha * std(M_t)": round(args.alpha * float(np.std(m_t)), 4),
            "reference: gamma at step 1": round(gammas[0], 3), **phases,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

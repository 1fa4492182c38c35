"""CF comparators on the 20-candidate protocol of the LLM recipes (a sequential prepared dir).

    napo-recsys --config recipes/configs/ml-100k/mf-ssm.yaml \
        --dataset_dir runs/data/ml-100k --output_dir runs/cf-cand/mf-ssm \
        [--test_max_examples 1000 --test_sample_seed 42]

(the recsys recipe runs this protocol when a CF model meets a sequential directory; this module is
library code, with no `-m` entry.)

Graph: the train rows only. A train row's user owns its history items and its target; the
(user, item) set of every train user is the MF / LightGCN training data (valid and test users
are unseen under the user-level split, and their rows are never trained on).
User vector of a row (any split): fold-in by the MEAN of the item vectors of its history,
    h = (1 / |H|) sum_{i in H} v_i,
where v are the backbone's output item vectors (LightGCN: after propagation; cosine losses: unit
vectors, and the candidates are scored by the cosine of h and v_c). This is one LightGCN layer
applied to a new user node, so it needs no per-user parameters; for MF it scores a candidate by
its mean similarity to the history items (an item-based reading of MF's item space).
Model selection: valid ndcg@10 of the candidate protocol. Test metrics: napo.eval.results.rank_results,
the code napo-eval scores candidates with, on the rows napo.eval.runner.sample_rows keeps (all, or
the seeded sample of napo-eval --max_examples N --sample_seed S), under the same keys as napo-recsys.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from napo.eval.metrics import ranking_metrics
from napo.eval.results import POP_KS, rank_results
from napo.recsys.cf_train import CFConfig, CFData, vectors

KS = (1, 5, 10, 20)


@dataclasses.dataclass
class CandidateRows:
    """One split: history [N] lists of ids, target [N], candidates [N, C], target_index [N]."""

    history: list[np.ndarray]
    target: np.ndarray
    candidates: np.ndarray

    @property
    def target_index(self) -> np.ndarray:
        return (self.candidates == self.target[:, None]).argmax(1)

    def __len__(self) -> int:
        return len(self.target)

    def take(self, keep) -> CandidateRows:
        """The rows at positions `keep` (e.g. napo.eval.runner.sample_rows), in that order."""
        keep = np.asarray(keep, np.int64)
        return CandidateRows([self.history[i] for i in keep], self.target[keep], self.candidates[keep])


def load_candidate_splits(path) -> tuple[CFData, dict[str, CandidateRows], dict]:
    """A sequential prepared dir -> (CF training data from the train rows, rows per split, meta)."""
    from data_prep.prepared import SPLITS, load_prepared

    dd, items, meta = load_prepared(path)
    num_items = int(items["item_id"].max()) + 1
    rows = {}
    for name in SPLITS:
        ds = dd[name].select_columns(["user_id", "history", "target", "candidates"]).to_dict()
        rows[name] = CandidateRows([np.asarray(h, np.int64) for h in ds["history"]],
                                   np.asarray(ds["target"], np.int64), np.asarray(ds["candidates"], np.int64))
        if name == "train":
            raw_user = np.asarray(ds["user_id"], np.int64)
    lengths = np.array([len(h) for h in rows["train"].history])
    user = np.concatenate([np.repeat(raw_user, lengths), raw_user])
    item = np.concatenate([*rows["train"].history, rows["train"].target])
    pairs = np.unique(np.stack([np.unique(user, return_inverse=True)[1], item], 1), axis=0)
    counts = np.zeros(num_items, np.int64)
    counts[items["item_id"].to_numpy()] = items["train_count"].to_numpy()
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    data = CFData(int(pairs[:, 0].max()) + 1, num_items, (pairs[:, 0].copy(), pairs[:, 1].copy()),
                  empty, empty, counts)
    return data, rows, meta


@torch.no_grad()
def fold_in(model, cfg: CFConfig, rows: CandidateRows) -> tuple[torch.Tensor, np.ndarray]:
    """Fold-in user vectors h [N, d] (mean of history item vectors; unit length for cosine
    losses) and their candidate scores [N, C] (float64)."""
    _, items = vectors(model, cfg)  # [I, d]
    lengths = torch.tensor([len(h) for h in rows.history])
    flat = torch.from_numpy(np.concatenate(rows.history)) if len(rows.history) else torch.zeros(0, dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(rows.history)), lengths)
    h = torch.zeros(len(rows.history), items.shape[1]).index_add_(0, owner, items[flat])
    h = h / lengths.clamp(min=1)[:, None]  # [N, d]
    if cfg.cosine:
        h = F.normalize(h, dim=-1)
    cand = torch.from_numpy(rows.candidates)  # [N, C]
    return h, torch.einsum("nd,ncd->nc", h, items[cand]).double().numpy()


def candidate_scores(model, cfg: CFConfig, rows: CandidateRows) -> np.ndarray:
    """Fold-in candidate scores [N, C] (see fold_in)."""
    return fold_in(model, cfg, rows)[1]


def row_metrics(scores: np.ndarray, rows: CandidateRows, train_counts=None) -> dict:
    """hr@k, ndcg@k, mrr; with train_counts also the popularity report (pop/...), through
    rank_results, the function napo-eval measures every candidate scorer with."""
    if train_counts is None:
        return ranking_metrics(scores, rows.target_index, KS)
    return rank_results(scores, rows.candidates, rows.target_index, rows.target, train_counts, KS, POP_KS)[0]

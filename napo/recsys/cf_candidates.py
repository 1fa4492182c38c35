"""CF comparators on the 20-candidate protocol of the LLM recipes (a sequential prepared dir).

    python -m napo.recsys.cf_candidates --config recipes/configs/ml-100k/cf-candidates-mf-ssm.yaml \
        --dataset_dir runs/data/ml-100k --output_dir runs/cf-cand/mf-ssm

Graph: the train rows only. A train row's user owns its history items and its target; the
(user, item) set of every train user is the MF / LightGCN training data (valid and test users
are unseen under the user-level split, and their rows are never trained on).
User vector of a row (any split): fold-in by the MEAN of the item vectors of its history,
    h = (1 / |H|) sum_{i in H} v_i,
where v are the backbone's output item vectors (LightGCN: after propagation; cosine losses: unit
vectors, and the candidates are scored by the cosine of h and v_c). This is one LightGCN layer
applied to a new user node, so it needs no per-user parameters; for MF it scores a candidate by
its mean similarity to the history items (an item-based reading of MF's item space).
Model selection: valid ndcg@10 of the candidate protocol. Metrics: napo.eval.metrics
(ranking_metrics, pessimistic ties; popularity_report) under the same keys as napo-recsys.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napo.eval.metrics import popularity_report, ranked_candidates, ranking_metrics
from napo.recsys.cf_train import (
    CFConfig,
    CFData,
    build_model,
    fit,
    parse_args,
    save_checkpoint,
    vectors,
)

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
def candidate_scores(model, cfg: CFConfig, rows: CandidateRows) -> np.ndarray:
    """Fold-in user vectors (mean of history item vectors) scored against the candidates: [N, C]."""
    _, items = vectors(model, cfg)  # [I, d]
    lengths = torch.tensor([len(h) for h in rows.history])
    flat = torch.from_numpy(np.concatenate(rows.history)) if len(rows.history) else torch.zeros(0, dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(rows.history)), lengths)
    h = torch.zeros(len(rows.history), items.shape[1]).index_add_(0, owner, items[flat])
    h = h / lengths.clamp(min=1)[:, None]  # [N, d]
    if cfg.cosine:
        h = F.normalize(h, dim=-1)
    cand = torch.from_numpy(rows.candidates)  # [N, C]
    return torch.einsum("nd,ncd->nc", h, items[cand]).double().numpy()


def row_metrics(scores: np.ndarray, rows: CandidateRows, train_counts=None) -> dict:
    out = ranking_metrics(scores, rows.target_index, KS)
    if train_counts is not None:
        ranked = ranked_candidates(scores, rows.candidates, rows.target_index)
        out.update(popularity_report(ranked, rows.target, train_counts, (1, 10)))
    return out


def main(argv: list[str] | None = None) -> int:
    from data_prep.prepared import PreparedDataError
    from napo.utils import set_seed, write_run_info

    args, values = parse_args(argv)
    try:
        cfg = CFConfig(**values)
    except (TypeError, ValueError) as err:
        print(f"error: config: {err}", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.sampler == "shapley":
        print("error: config: sampler shapley needs the CF protocol's validation items; use uniform here",
              file=sys.stderr)
        return 2
    set_seed(cfg.seed)
    try:
        data, rows, meta = load_candidate_splits(args.dataset_dir)
    except PreparedDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if cfg.model == "MostPop":  # candidates ranked by training count
        def score(split):
            return data.train_counts[rows[split].candidates].astype(np.float64)
        history = []
    else:
        model = build_model(cfg, data)
        result = fit(model, cfg, data, progress=not args.quiet,
                     validate=lambda m: row_metrics(candidate_scores(m, cfg, rows["valid"]), rows["valid"])["ndcg@10"])
        save_checkpoint(model, cfg, out / "checkpoint", num_users=data.num_users, num_items=data.num_items)
        history = result.history

        def score(split):
            return candidate_scores(model, cfg, rows[split])
    fit_s = time.time() - start
    metrics = {f"valid/{k}": v for k, v in row_metrics(score("valid"), rows["valid"]).items()}
    metrics.update(row_metrics(score("test"), rows["test"], data.train_counts))
    metrics["train/fit_seconds"] = round(fit_s, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_run_info(out, {**dataclasses.asdict(cfg), "dataset_dir": str(args.dataset_dir),
                         "dataset_fingerprint": meta["fingerprint"], "history": history,
                         "protocol": "20-candidate, fold-in = mean of history item vectors"}, cfg.seed)
    shown = {k: round(metrics[k], 4) for k in ("hr@1", "hr@5", "ndcg@10", "mrr")}
    print(f"{cfg.model}-{cfg.loss} candidates test {json.dumps(shown)} -> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

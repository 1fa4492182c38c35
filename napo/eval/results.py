"""From raw outputs (candidate scores, answer texts) to metrics and per-example predictions.

Pure functions, no model: every scorer (LLM, Popularity, SASRec, test stubs) ends here, so all
methods are measured by the same code. Metric definitions live in `napo.eval.metrics`.

Rank section (scores [N, C]): `hr@k`, `ndcg@k`, `mrr` (pessimistic ties) and the popularity
report of the ranked candidate lists (`pop/...`).

Generate section (answers): with hit = valid and matched to the target,
  `hr@1` = hits / all examples (S-DPO, NAPO), `hr@1_valid` = hits / valid answers (LLaRA),
  `valid_ratio` = valid / all, counts by matching rule, and the popularity view of the answers:
  `pop/hr@1/{band}` = hits / all targets of the band, `pop/balance@1`, and, over valid answers
  only (an invalid answer recommends nothing), `pop/avg_popularity@1`, `pop/coverage@1`,
  `pop/gini@1`, `pop/tail_share@1`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napo.eval.matching import CONTAINED, EXACT, match_answer
from napo.eval.metrics import (
    BAND_NAMES,
    DEFAULT_KS,
    FULL_KS,
    gini,
    metrics_from_ranks,
    popularity_bands,
    popularity_report,
    ranked_candidates,
    target_ranks,
)

POP_KS = (1, 10)
TRIE = "trie"  # match rule of a constrained answer (its item ids come from the decoding trie)
_EXPOSURE_KEYS = ("avg_popularity", "coverage", "gini", "tail_share")


def rank_results(
    scores, candidates, target_index, targets, train_counts,
    ks: Sequence[int] = DEFAULT_KS, pop_ks: Sequence[int] = POP_KS,
) -> tuple[dict[str, float], list[dict]]:
    """Metrics and per-example predictions of a candidate ranking.

    scores [N, C] float (higher is better, candidate order); candidates [N, C] item ids;
    target_index [N]; targets [N] item ids; train_counts [num_items].
    Per example: `ranking` (candidate ids, best first, the target after its ties), `scores`
    (candidate order) and `target_rank` (1-based, pessimistic).
    """
    scores = np.asarray(scores, dtype=np.float64)
    ranks = target_ranks(scores, target_index)
    metrics = metrics_from_ranks(ranks, ks)
    ranked = ranked_candidates(scores, candidates, target_index)
    metrics.update(popularity_report(ranked, targets, train_counts, pop_ks))
    predictions = [
        {"ranking": ranked[i].tolist(), "scores": scores[i].tolist(), "target_rank": int(ranks[i])}
        for i in range(len(ranks))
    ]
    return metrics, predictions


def full_results(
    ranks, top_items, targets, train_counts=None,
    ks: Sequence[int] = FULL_KS, pop_ks: Sequence[int] = POP_KS,
) -> dict[str, float]:
    """The full-catalogue section (recommenders' `full/...` keys and the LLM's "full" section).

    ranks [N] pessimistic 1-based ranks over the catalogue (`full_ranks`); top_items [N, R] item
    ids best first (`top_items`, R >= max(pop_ks)); targets [N]; train_counts [num_items] or None.
    Returns hr@k, ndcg@k, mrr and, with train_counts, the popularity report of the top lists.
    """
    out = metrics_from_ranks(ranks, ks)
    if train_counts is not None:
        out.update(popularity_report(top_items, targets, train_counts, pop_ks))
    return out


def generate_results(
    answers: Sequence[str], titles: Sequence[Sequence[str]], candidates, targets, train_counts,
    containment: str = "word",
) -> tuple[dict[str, float], list[dict]]:
    """Metrics and per-example predictions of generated answers.

    answers [N]: texts, or ``{"answer": text, "item_ids": [ids]}`` from constrained decoding
    (`napo.eval.constrained`: the items whose tokens the answer is; valid when exactly one, and
    then not necessarily a candidate); titles [N][C] candidate texts (candidate order);
    candidates [N, C] item ids; targets [N]; train_counts [num_items]; containment: "word" or
    "substring" (see `napo.eval.matching`). Per example: `answer`, `matched` (item id or None),
    `match_rule` ("exact", "contained", "trie" or None), `hit`.
    """
    n = len(answers)
    counts = np.asarray(train_counts, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    matched = np.full(n, -1, dtype=np.int64)
    rules, ambiguous, texts = [], 0, []
    for i, (answer, row_titles) in enumerate(zip(answers, titles, strict=True)):
        if isinstance(answer, dict):  # constrained decoding names its items: no text matching
            ids = answer["item_ids"]
            texts.append(answer["answer"])
            rules.append(TRIE if len(ids) == 1 else None)
            if len(ids) == 1:
                matched[i] = int(ids[0])
            elif len(ids) > 1:
                ambiguous += 1  # items sharing one title's tokens
            continue
        texts.append(answer)
        m = match_answer(answer, row_titles, containment)
        rules.append(m.rule)
        if m.valid:
            matched[i] = int(candidates[i][m.index])
        elif m.num_contained > 1:
            ambiguous += 1
    valid = matched >= 0
    hit = valid & (matched == targets)
    num_valid, num_hits = int(valid.sum()), int(hit.sum())
    metrics: dict[str, float] = {
        "hr@1": num_hits / n if n else float("nan"),
        "hr@1_valid": num_hits / num_valid if num_valid else float("nan"),
        "valid_ratio": num_valid / n if n else float("nan"),
        "num_valid": num_valid,
        "num_hits": num_hits,
        "num_exact": sum(r == EXACT for r in rules),
        "num_contained": sum(r == CONTAINED for r in rules),
        **({"num_trie": sum(r == TRIE for r in rules)} if TRIE in rules else {}),
        "num_ambiguous": ambiguous,
        "num_no_match": n - num_valid - ambiguous,
    }
    # hits over ALL targets of each band: an invalid answer is a miss (rank "not ranked")
    ranks = np.where(hit, 1.0, np.inf)
    band_of_target = popularity_bands(counts)[targets] if n else np.zeros(0, dtype=np.int8)
    band_hrs = []
    for b, name in enumerate(BAND_NAMES):
        sel = band_of_target == b
        metrics[f"pop/targets/{name}"] = float(sel.mean()) if n else float("nan")
        if sel.any():
            hr = metrics_from_ranks(ranks[sel], [1])["hr@1"]
            band_hrs.append(hr)
        else:
            hr = float("nan")
        metrics[f"pop/hr@1/{name}"] = hr
    metrics["pop/balance@1"] = 1.0 - gini(band_hrs) if band_hrs else float("nan")
    if num_valid:
        exposure = popularity_report(matched[valid][:, None], targets[valid], counts, (1,))
        for key in _EXPOSURE_KEYS:
            metrics[f"pop/{key}@1"] = exposure[f"pop/{key}@1"]
    else:
        for key in _EXPOSURE_KEYS:
            metrics[f"pop/{key}@1"] = float("nan")
    predictions = [
        {"answer": texts[i], "matched": int(matched[i]) if valid[i] else None,
         "match_rule": rules[i], "hit": bool(hit[i])}
        for i in range(n)
    ]
    return metrics, predictions


def mode_agreement(predictions: Sequence[dict]) -> dict[str, float]:
    """How often `generate` names the item `rank` puts first, over the valid answers.

    predictions: per-example dicts carrying both `ranking` (rank mode) and `matched` (generate).
    A low share means greedy decoding often leaves the highest-likelihood candidate (e.g. a
    title whose first token is likely but whose whole sequence is not).
    """
    valid = [p for p in predictions if p.get("matched") is not None]
    agree = sum(int(p["matched"] == p["ranking"][0]) for p in valid)
    return {"num_valid": len(valid), "top1_agree": agree,
            "top1_agree_ratio": agree / len(valid) if valid else float("nan")}

"""Every metric of both modes on a 3-example dataset with known scores and answers."""

import json
import math

import numpy as np
import pytest
from datasets import Dataset

from napo.eval.matching import match_answer, normalize_title
from napo.eval.report import EvalOutputError, compare, load_metrics, load_per_row
from napo.eval.rows import candidate_titles
from napo.eval.runner import evaluate_rows, shard_bounds
from napo.eval.scorers import PopularityScorer, PrecomputedScorer
from napo.eval.stats import row_values

TITLES = ["Heat", "Heat Wave", "Alien", "Aliens", "Toy Story", "Fargo", "Jaws", "Babe"]
# total 100; sorted by count: 0(30) 4(20) | 5(15) 1(10) | 6(10) 2(5) 3(5) 7(5)
# head = {0, 4} (mass before < 1/3), mid = {5, 1} (< 2/3), tail = {6, 2, 3, 7}
TRAIN_COUNTS = [30, 10, 5, 5, 20, 15, 10, 5]
CANDIDATES = [[1, 0, 5, 6], [2, 3, 4, 7], [4, 5, 6, 0]]
TARGETS = [1, 3, 4]  # bands: mid, tail, head
SCORES = {
    0: [2.0, 3.0, 4.0, 0.0],  # target (slot 0) behind two -> rank 3
    1: [5.0, 5.0, 1.0, 0.0],  # target (slot 1) tied with slot 0 -> pessimistic rank 2
    2: [9.0, 1.0, 2.0, 3.0],  # target (slot 0) first -> rank 1
}
ANSWERS = {
    0: "  HEAT wave. ",          # exact match of "Heat Wave" although "Heat" is contained too: hit
    1: "I would pick Alien.",    # "Alien" contained ("Aliens" is not, word-wise): valid, not a hit
    2: "no idea",                # no title: invalid
}


def _rows() -> Dataset:
    records = []
    for i, (cands, tgt) in enumerate(zip(CANDIDATES, TARGETS, strict=True)):
        records.append({
            "user_id": 10 + i, "history": [7], "target": tgt, "candidates": cands,
            "prompt": f"prompt {i}", "chosen": TITLES[tgt],
            "rejected": [TITLES[c] for c in cands if c != tgt],
        })
    return Dataset.from_list(records)


class StubScorer:
    name = "stub"

    def __call__(self, batch, indices):
        return np.asarray([SCORES[i] for i in indices])


class StubGenerator:
    def __call__(self, batch, indices):
        return [ANSWERS[i] for i in indices]


def test_matching_rules():
    assert normalize_title("  Heat-Wave!! ") == "heat wave"
    titles = ["Heat", "Heat Wave", "Aliens"]
    m = match_answer("heat wave", titles)
    assert (m.index, m.rule, m.num_contained) == (1, "exact", 2)
    # the papers' rule: two titles contained -> ambiguous, invalid
    m = match_answer("Heat Wave (1995)", titles)
    assert (m.index, m.rule, m.num_contained) == (None, None, 2)
    m = match_answer("I think: HEAT.", titles)
    assert (m.index, m.rule) == (0, "contained")
    assert not match_answer("Alien", titles).valid  # whole words: "alien" is not "aliens"
    assert not match_answer("Heathers", titles).valid
    assert not match_answer("", titles).valid
    # item tokens: <item_1> must not be found inside <item_12>
    assert match_answer("<item_12>", ["<item_1>", "<item_12>"]).index == 1
    assert match_answer("x <item_1> y", ["<item_1>", "<item_12>"]).index == 0
    # two candidates with the same normalised title cannot be told apart
    assert not match_answer("heat", ["Heat", "HEAT!"]).valid
    # the papers' plain substring test: "alien" is inside "aliens", "heat" inside "heathers"
    assert match_answer("Alien", titles, "substring").index is None  # "aliens" is not inside "alien"
    m = match_answer("Aliens!", ["Alien", "Aliens"], "substring")
    assert (m.index, m.rule, m.num_contained) == (1, "exact", 2)  # exact first, whatever is contained
    m = match_answer("I pick Aliens 2", ["Alien", "Aliens"], "substring")
    assert (m.index, m.num_contained) == (None, 2)  # both contained -> ambiguous
    assert match_answer("I pick Aliens 2", ["Alien", "Aliens"]).index == 1  # whole words: only "aliens"
    assert match_answer("Heathers", titles, "substring").index == 0
    assert match_answer("<item_12>", ["<item_1>", "<item_12>"], "substring").index == 1  # exact wins
    with pytest.raises(ValueError, match="containment"):
        match_answer("x", titles, "fuzzy")


def test_candidate_titles_follow_candidate_order():
    assert candidate_titles([5, 3, 9], 3, "T3", ["T5", "T9"]) == ["T5", "T3", "T9"]
    with pytest.raises(ValueError, match="occurs 0 times"):
        candidate_titles([5, 9], 3, "T3", ["T5"])


def test_shards_are_whole_batches_in_order():
    bounds = [shard_bounds(10, 3, 2, p) for p in range(2)]
    assert bounds == [(0, 6), (6, 10)]  # batches [0-2][3-5] | [6-8][9]
    assert [shard_bounds(2, 4, 3, p) for p in range(3)] == [(0, 0), (0, 0), (0, 2)]


def test_both_modes_metrics_predictions_and_report(tmp_path):
    out = tmp_path / "stub"
    metrics = evaluate_rows(_rows(), TRAIN_COUNTS, out, scorer=StubScorer(), generator=StubGenerator(),
                            batch_size=2, ks=(1, 2, 3), pop_ks=(1, 2), info={"name": "stub"},
                            show_progress=False)
    rank = metrics["rank"]
    # ranks [3, 2, 1]
    assert rank["hr@1"] == pytest.approx(1 / 3)
    assert rank["hr@2"] == pytest.approx(2 / 3)
    assert rank["hr@3"] == pytest.approx(1.0)
    assert rank["ndcg@1"] == pytest.approx(1 / 3)
    assert rank["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert rank["ndcg@3"] == pytest.approx((1 / 2 + 1 / math.log2(3) + 1) / 3)
    assert rank["mrr"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    # popularity of the ranked lists: top-1 items are 5 (mid), 2 (tail), 4 (head)
    assert rank["pop/hr@1/head"] == 1.0 and rank["pop/hr@1/mid"] == 0.0 and rank["pop/hr@1/tail"] == 0.0
    assert rank["pop/hr@2/tail"] == 1.0  # the tied target ranks 2nd
    assert rank["pop/balance@1"] == pytest.approx(1 / 3)  # 1 - Gini([1, 0, 0]) = 1 - 2/3
    assert rank["pop/avg_popularity@1"] == pytest.approx((15 + 5 + 20) / 3)
    assert rank["pop/tail_share@1"] == pytest.approx(1 / 3)
    assert rank["pop/coverage@1"] == pytest.approx(3 / 8)
    # exposure of the 8 items in the top-1 lists: three 1s -> Gini = 2*21/(8*3) - 9/8
    assert rank["pop/gini@1"] == pytest.approx(15 / 24)
    assert rank["pop/ndcg@2/tail"] == pytest.approx(1 / math.log2(3))
    assert rank["pop/targets/head"] == rank["pop/targets/mid"] == rank["pop/targets/tail"] == pytest.approx(1 / 3)

    gen = metrics["generate"]
    assert gen["hr@1"] == pytest.approx(1 / 3)        # hits / all (S-DPO, NAPO)
    assert gen["hr@1_valid"] == pytest.approx(1 / 2)  # hits / valid (LLaRA)
    assert gen["valid_ratio"] == pytest.approx(2 / 3)
    assert (gen["num_hits"], gen["num_valid"], gen["num_exact"], gen["num_contained"],
            gen["num_ambiguous"], gen["num_no_match"]) == (1, 2, 1, 1, 0, 1)
    assert (gen["pop/hr@1/head"], gen["pop/hr@1/mid"], gen["pop/hr@1/tail"]) == (0.0, 1.0, 0.0)
    assert gen["pop/avg_popularity@1"] == pytest.approx((10 + 5) / 2)  # valid answers 1 and 2
    assert gen["pop/tail_share@1"] == pytest.approx(1 / 2)
    assert gen["pop/balance@1"] == pytest.approx(1 / 3)
    assert gen["pop/coverage@1"] == pytest.approx(2 / 8)
    assert gen["pop/gini@1"] == pytest.approx(12 / 16)  # two 1s among 8 items
    assert metrics["num_examples"] == 3 and metrics["num_candidates"] == 4
    assert metrics["modes"] == ["rank", "generate"]
    # valid answers: ex0 names item 1 (rank's first is 5), ex1 names item 2 (rank's first too)
    assert metrics["agreement"] == {"num_valid": 2, "top1_agree": 1, "top1_agree_ratio": 0.5}

    # outputs on disk
    on_disk = load_metrics(out)
    assert on_disk["rank"]["mrr"] == pytest.approx(rank["mrr"])
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["target_rank"] for p in preds] == [3, 2, 1]
    assert preds[0]["ranking"] == [5, 0, 1, 6]
    assert preds[1]["ranking"] == [2, 3, 4, 7]  # the target after the candidate it ties with
    assert preds[2]["ranking"] == [4, 0, 6, 5]
    assert [(p["matched"], p["match_rule"], p["hit"]) for p in preds] == [
        (1, "exact", True), (2, "contained", False), (None, None, False)]
    assert [p["user_id"] for p in preds] == [10, 11, 12]
    report = (out / "report.md").read_text()
    assert "| HR@1 | HR@2 | HR@3 | NDCG@1 | NDCG@2 | NDCG@3 | MRR |" in report
    assert "| 0.3333 | 0.6667 | 1.0000 |" in report
    assert "| 0.3333 | 0.5000 | 0.6667 | 1 | 2 | 1 | 1 | 0 | 1 |" in report
    assert "Agreement with `rank`: 1 of 2 valid answers" in report
    for png in ("hr_at_k.png", "hr_by_band.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # per-row results for paired statistics: row ids, candidate ranks, generate hits (inf = miss)
    per_row = load_per_row(out)
    assert per_row["rows"] == [0, 1, 2] and per_row["split"] is None
    assert per_row["ranks"] == {"rank": [3, 2, 1], "generate": [1, None, None]}
    assert row_values(per_row, "generate/hr@1").mean() == pytest.approx(gen["hr@1"])
    assert row_values(per_row, "ndcg@3").mean() == pytest.approx(rank["ndcg@3"])


def test_injected_classic_scorers_and_compare(tmp_path):
    pop = evaluate_rows(_rows(), TRAIN_COUNTS, tmp_path / "pop", scorer=PopularityScorer(TRAIN_COUNTS),
                        ks=(1, 2), info={"name": "Popularity"}, show_progress=False)
    # popularity scores: ex0 [10,30,15,10] target 10 tied with one, behind 2 -> rank 4;
    # ex1 [5,5,20,5] target tied with two, behind one -> 4; ex2 [20,15,10,30] -> 2
    assert pop["rank"]["hr@2"] == pytest.approx(1 / 3)
    assert pop["rank"]["mrr"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 2) / 3)
    pre = evaluate_rows(_rows(), TRAIN_COUNTS, tmp_path / "sasrec",
                        scorer=PrecomputedScorer(np.asarray(list(SCORES.values())), name="SASRec"),
                        ks=(1, 2), batch_size=1, info={"name": "SASRec"}, show_progress=False)
    assert pre["rank"]["mrr"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    stub = evaluate_rows(_rows(), TRAIN_COUNTS, tmp_path / "llm", generator=StubGenerator(),
                         info={"name": "LLM"}, show_progress=False)
    table, paired_part = compare([tmp_path / "pop", tmp_path / "sasrec", tmp_path / "llm"]).split("\n\nPaired")
    lines = table.splitlines()
    assert lines[0].startswith("? / ?: 3 examples, 4 candidates each")
    # columns that no run computed (HR@5, HR@10, NDCG@10: ks were (1, 2)) are left out
    assert lines[2] == ("| method | HR@1 | MRR | gen HR@1 | ValidRatio | gen HR@1 (valid) | HR@10 head | "
                        "HR@10 mid | HR@10 tail | top-1 avg pop | top-10 tail share |")
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[4:]}
    assert list(cells) == ["Popularity", "SASRec", "LLM"]
    # Popularity: top-1 items 0, 4, 0 -> avg popularity (30 + 20 + 30) / 3
    assert cells["Popularity"][:3] == ["0.0000", "0.3333", "–"]
    assert cells["Popularity"][8] == "26.6667"
    assert cells["SASRec"][:2] == ["0.3333", "0.6111"]
    assert cells["LLM"] == ["–", "–", "0.3333", "0.6667", "0.5000", "–", "–", "–", "–", "–"]
    assert stub["generate"]["hr@1"] == pytest.approx(1 / 3)
    # paired rows against the first run (Popularity); the LLM run has no rank section to pair.
    # SASRec ranks [3, 2, 1] vs Popularity [4, 4, 2]: hr@1 [0, 0, 1] vs [0, 0, 0]
    assert paired_part.startswith(" differences against Popularity on the same rows")
    assert "| SASRec vs Popularity | hr@1 | 0.3333 | 0.0000 | +0.333 [" in paired_part
    assert "p 1.000 | - | 1 x 3 | no difference measured |" in paired_part
    assert "LLM vs" not in paired_part
    with pytest.raises(EvalOutputError, match="no metrics.json"):
        compare([tmp_path / "missing"])


def test_compare_figure_groups_seeds_by_name(tmp_path):
    from napo.eval.report import plot_methods, summarize_runs, write_metrics

    hr1 = {"a1": 0.5, "a2": 0.7, "a3": 0.6, "b1": 0.4}
    for run, value in hr1.items():
        (tmp_path / run).mkdir()
        write_metrics(tmp_path / run, {"name": run, "rank": {"hr@1": value, "pop/hr@10/head": 0.9,
                                                             "pop/hr@10/mid": None, "pop/hr@10/tail": value / 2}})
    dirs = [tmp_path / r for r in hr1]
    summary = summarize_runs(dirs, names=["A", "A", "A", "B"])
    assert list(summary) == ["A", "B"]
    mean, se, n = summary["A"]["hr@1"]
    # three seeds 0.5, 0.7, 0.6: mean 0.6, sample std 0.1, s.e. 0.1 / sqrt(3)
    assert (mean, n) == (pytest.approx(0.6), 3) and se == pytest.approx(0.1 / 3 ** 0.5)
    assert summary["A"]["pop/hr@10/tail"][0] == pytest.approx(0.3)
    assert math.isnan(summary["A"]["pop/hr@10/mid"][0]) and summary["A"]["pop/hr@10/mid"][2] == 0
    assert summary["B"]["hr@1"][0] == pytest.approx(0.4) and math.isnan(summary["B"]["hr@1"][1])
    assert plot_methods(summary, tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(EvalOutputError, match="2 names for 4 runs"):
        summarize_runs(dirs, names=["A", "B"])

import math

import numpy as np
import pytest
import torch

from napo.eval.metrics import (
    full_ranking_metrics,
    full_ranks,
    gini,
    metrics_from_ranks,
    popularity_bands,
    popularity_report,
    ranked_candidates,
    ranking_metrics,
    target_ranks,
)


def test_hand_computed_single_row():
    # target score 0.5 is beaten by 0.9 only -> rank 2
    m = ranking_metrics(np.array([[0.1, 0.9, 0.5]]), np.array([2]), ks=(1, 5))
    assert m["hr@1"] == 0.0
    assert m["hr@5"] == 1.0
    assert m["ndcg@1"] == 0.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert m["mrr"] == pytest.approx(0.5)


def test_hand_computed_two_rows_average():
    scores = np.array([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    # row 0: target 0 is best -> rank 1; row 1: target 0 is worst -> rank 4
    m = ranking_metrics(scores, [0, 0], ks=(1, 3))
    assert m["hr@1"] == 0.5
    assert m["hr@3"] == 0.5
    assert m["ndcg@3"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx((1 + 1 / 4) / 2)


def test_ties_are_pessimistic():
    assert target_ranks(np.array([[0.5, 0.5, 0.5]]), [0]).tolist() == [3]
    # tied with one other, beaten by one: rank 3
    assert target_ranks(np.array([[1.0, 2.0, 1.0, 0.0]]), [2]).tolist() == [3]
    m = ranking_metrics(np.zeros((4, 20)), np.arange(4), ks=(1, 10, 20))
    assert m["hr@1"] == 0.0 and m["hr@10"] == 0.0 and m["hr@20"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 20)


def test_k_larger_than_candidates():
    m = ranking_metrics(np.array([[0.0, 1.0, 2.0]]), [0], ks=(1, 20))
    assert m["hr@20"] == 1.0
    assert m["ndcg@20"] == pytest.approx(1 / math.log2(4))


def test_nan_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(np.array([[0.1, float("nan")]]), [0])
    with pytest.raises(ValueError, match="target_index"):
        ranking_metrics(np.array([[0.1, 0.2]]), [2])


def test_torch_input_matches_numpy():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=torch.bfloat16)
    t = torch.randint(0, 5, (7,), generator=g)
    assert ranking_metrics(s, t) == ranking_metrics(s.float().numpy(), t.numpy())


def _reference_metrics(scores, targets, ks):
    """Independent formulation: sort with Python, put the target after its ties."""
    hr = {k: 0.0 for k in ks}
    nd = {k: 0.0 for k in ks}
    rr = 0.0
    for row, t in zip(scores.tolist(), targets.tolist(), strict=True):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == t))
        pos = order.index(t)  # 0-based
        rr += 1.0 / (pos + 1)
        for k in ks:
            if pos < k:
                hr[k] += 1
                nd[k] += 1.0 / math.log2(pos + 2)
    n = len(targets)
    out = {f"hr@{k}": hr[k] / n for k in ks}
    out.update({f"ndcg@{k}": nd[k] / n for k in ks})
    out["mrr"] = rr / n
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_independent_formulation(seed):
    rng = np.random.default_rng(seed)
    # few distinct values -> many ties
    scores = rng.integers(0, 6, size=(200, 20)).astype(np.float64)
    targets = rng.integers(0, 20, size=200)
    ks = (1, 5, 10, 20, 50)
    got = ranking_metrics(scores, targets, ks)
    want = _reference_metrics(scores, targets, ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    # the sorted-list path agrees with the rank path
    cands = np.tile(np.arange(20), (200, 1))
    ranked = ranked_candidates(scores, cands, targets)
    pos = (ranked == targets[:, None]).argmax(axis=1) + 1
    np.testing.assert_array_equal(pos, target_ranks(scores, targets))


def test_metrics_from_ranks_inf_is_miss():
    m = metrics_from_ranks([1, np.inf], ks=(1,))
    assert m["hr@1"] == 0.5 and m["mrr"] == 0.5
    with pytest.raises(ValueError):
        metrics_from_ranks([0], ks=(1,))


def test_full_ranking_with_exclusion():
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    assert full_ranks(scores, [2, 2]).tolist() == [3, 3]
    # list form: item 0 excluded in row 0; row 1 excludes the target itself, which stays ranked
    assert full_ranks(scores, [2, 2], exclude=[[0], [2, 1]]).tolist() == [2, 2]
    mask = np.zeros((2, 4), dtype=bool)
    mask[0, 0] = True
    mask[1, [1, 2]] = True
    assert full_ranks(scores, [2, 2], exclude=mask).tolist() == [2, 2]
    m = full_ranking_metrics(scores, [2, 2], exclude=[[0, 1], []], ks=(1, 5))
    assert m["hr@1"] == 0.5
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 2)


def test_gini_known_values():
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert gini([0, 0.5]) == pytest.approx(0.5)
    assert gini([0, 0, 0]) == 0.0


def test_popularity_bands():
    # total 20: item0 starts at mass 0 (head), item1 at 10 (3*10 >= 20, < 40: mid), item2 at 15 tail
    assert popularity_bands([10, 5, 3, 2, 0]).tolist() == [0, 1, 2, 2, 2]
    # six equal items: masses before are 0,1,2,3,4,5 of 6 -> head,head,mid,mid,tail,tail
    assert popularity_bands([1] * 6).tolist() == [0, 0, 1, 1, 2, 2]
    # order by count, not id; unseen items tail
    assert popularity_bands([0, 2, 5, 3]).tolist() == [2, 2, 0, 1]


def test_popularity_report_hand_computed():
    counts = np.array([6, 3, 2, 1])  # bands: head, mid, tail, tail
    ranked = np.array([[0, 1], [1, 0], [0, 2]])
    targets = np.array([0, 0, 2])
    rep = popularity_report(ranked, targets, counts, ks=(1, 2))
    assert rep["pop/hr@1/head"] == 0.5
    assert rep["pop/hr@1/tail"] == 0.0
    assert math.isnan(rep["pop/hr@1/mid"])
    assert rep["pop/balance@1"] == pytest.approx(0.5)
    assert rep["pop/avg_popularity@1"] == pytest.approx(5.0)
    assert rep["pop/coverage@1"] == pytest.approx(0.5)
    assert rep["pop/gini@1"] == pytest.approx(7 / 12)
    assert rep["pop/tail_share@1"] == 0.0
    assert rep["pop/hr@2/head"] == 1.0 and rep["pop/hr@2/tail"] == 1.0
    assert rep["pop/ndcg@2/head"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert rep["pop/ndcg@2/tail"] == pytest.approx(1 / math.log2(3))
    assert rep["pop/balance@2"] == pytest.approx(1.0)
    assert rep["pop/tail_share@2"] == pytest.approx(1 / 6)
    assert rep["pop/coverage@2"] == pytest.approx(0.75)
    assert rep["pop/targets/head"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# several relevant items per user (CF protocol)


def test_set_metrics_hand_computed():
    from napo.eval.metrics import set_metrics_per_user, set_ranking_metrics

    scores = np.array([[0.9, 0.8, 0.8, 0.1, 0.5, 0.3],
                       [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]])
    targets = [[2, 4], [5]]
    exclude = [[0], []]
    per = set_metrics_per_user(scores, targets, exclude, ks=(2, 3, 10))
    # row 0: item 0 excluded; target 2 ties with non-target 1 -> rank 2; target 4 -> rank 3
    # row 1: all tied -> the target ranks after the 5 others: rank 6
    l2, l3, l4, l7 = (np.log2(x) for x in (2, 3, 4, 7))
    np.testing.assert_allclose(per["recall@2"], [0.5, 0.0])
    np.testing.assert_allclose(per["ndcg@2"], [(1 / l3) / (1 / l2 + 1 / l3), 0.0])
    np.testing.assert_allclose(per["recall@3"], [1.0, 0.0])
    np.testing.assert_allclose(per["ndcg@3"], [(1 / l3 + 1 / l4) / (1 / l2 + 1 / l3), 0.0])
    np.testing.assert_allclose(per["recall@10"], [1.0, 1.0])
    np.testing.assert_allclose(per["ndcg@10"], [(1 / l3 + 1 / l4) / (1 / l2 + 1 / l3), 1 / l7])
    avg = set_ranking_metrics(scores, targets, exclude, ks=(2,))
    assert avg["recall@2"] == pytest.approx(0.25)


def test_set_metrics_idcg_uses_min_k_targets_and_target_stays_ranked():
    from napo.eval.metrics import set_metrics_per_user

    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    per = set_metrics_per_user(scores, [[0, 1, 2, 3]], None, ks=(2,))
    assert per["ndcg@2"][0] == pytest.approx(1.0) and per["recall@2"][0] == pytest.approx(0.5)
    # excluding items ahead of the target lifts it; excluding the target itself does not drop it
    per = set_metrics_per_user(scores, [[3]], [[0, 1, 3]], ks=(1, 2))
    assert per["recall@1"][0] == 0.0 and per["recall@2"][0] == 1.0
    assert per["ndcg@2"][0] == pytest.approx(1 / np.log2(3))


def test_set_metrics_agree_with_single_target_full_ranking():
    from napo.eval.metrics import full_ranking_metrics, set_ranking_metrics

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(50, 30)).astype(float)  # many ties
    t = rng.integers(0, 30, size=50)
    ex = [rng.choice(30, 4, replace=False) for _ in range(50)]
    one = full_ranking_metrics(scores, t, ex, ks=(5, 10))
    many = set_ranking_metrics(scores, [[x] for x in t], ex, ks=(5, 10))
    for k in (5, 10):
        assert many[f"recall@{k}"] == pytest.approx(one[f"hr@{k}"])
        assert many[f"ndcg@{k}"] == pytest.approx(one[f"ndcg@{k}"])

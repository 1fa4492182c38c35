"""Listwise preference batches: tokenized columns, negative draws, aux join, collation."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from napo.collator import (
    ListwiseCollator,
    add_aux_columns,
    completion_item_ids,
    draw_negatives,
    tokenize_preference_dataset,
)
from napo.scoring import collate_listwise


class CharTokenizer:
    """A deterministic stand-in: one id per character, BOS=1, EOS=2 (enough for joint tokenization)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[1] + [3 + ord(c) % 50 for c in t] for t in texts]}


def rows(n=4, num_candidates=6):
    out = []
    for u in range(n):
        cands = [10 * u + j for j in range(num_candidates)]
        target = cands[u % num_candidates]
        out.append({
            "user_id": u, "history": [99], "target": target, "candidates": cands,
            "prompt": f"u{u}:", "chosen": f"i{target}", "rejected": [f"i{c}" for c in cands if c != target],
        })
    return Dataset.from_list(out)


def test_completion_item_ids_follow_rejected_order():
    assert completion_item_ids(7, [3, 7, 5, 1]) == [7, 3, 5, 1]


def test_tokenized_columns_and_idempotence():
    ds = tokenize_preference_dataset(rows(), CharTokenizer())
    row = ds[2]
    assert row["example_idx"] == 2
    assert row["item_ids"] == [22, 20, 21, 23, 24, 25]
    assert row["prompt_ids"] == [1] + [3 + ord(c) % 50 for c in "u2:"]
    # chosen is "i22" + EOS, the rejected follow candidate order without the target
    assert row["completion_ids"][0] == [3 + ord(c) % 50 for c in "i22"] + [2]
    assert row["completion_ids"][1] == [3 + ord(c) % 50 for c in "i20"] + [2]
    assert len(row["completion_ids"]) == 6
    again = tokenize_preference_dataset(ds, None)  # already tokenized: untouched
    assert again is ds


def test_inconsistent_rows_fail_clearly():
    bad = rows(1).map(lambda r: {"rejected": r["rejected"][:-1]})
    with pytest.raises(ValueError, match="rejected titles but"):
        tokenize_preference_dataset(bad, CharTokenizer())


def test_draw_negatives_deterministic_sorted_and_epoch_dependent():
    a = draw_negatives(19, 3, seed=1, example_idx=5)
    assert a == draw_negatives(19, 3, seed=1, example_idx=5)
    assert a == sorted(a) and len(set(a)) == 3 and all(0 <= j < 19 for j in a)
    draws = {tuple(draw_negatives(19, 3, seed=1, example_idx=5, epoch=e)) for e in range(10)}
    assert len(draws) > 1  # resampling changes the negatives across epochs
    assert draw_negatives(2, 3, seed=0, example_idx=0) == [0, 1]  # K >= R keeps all
    # uniform: every negative gets drawn about K/R of the time over many examples
    counts = np.zeros(19)
    for i in range(3000):
        counts[draw_negatives(19, 3, seed=0, example_idx=i)] += 1
    assert np.allclose(counts / 3000, 3 / 19, atol=0.03)


def test_collator_selects_consistent_slots():
    ds = tokenize_preference_dataset(rows(), CharTokenizer())
    ds = ds.add_column("ref_logps", [[float(10 * r + m) for m in range(6)] for r in range(4)])
    collator = ListwiseCollator(pad_token_id=0, num_negatives=2, layout="naive", seed=3)
    deferred = ListwiseCollator(pad_token_id=0, num_negatives=2, layout="naive", seed=3, defer_collation=True)
    examples = [ds[i] for i in range(4)]
    batch, later = collator(examples), deferred(examples)
    assert batch["completion_mask"].shape == (4, 3) and batch["completion_mask"].all()
    assert torch.equal(later["completion_mask"], batch["completion_mask"]) and "input_ids" not in later
    for b, row in enumerate(examples):
        picks = draw_negatives(5, 2, seed=3, example_idx=b)
        slots = [0] + [1 + j for j in picks]
        assert batch["item_ids"][b].tolist() == [row["item_ids"][s] for s in slots]
        assert batch["ref_logps"][b].tolist() == [10.0 * b + s for s in slots]
        # deferred (rescore): the same selection, with the prompt text and the titles in slot order
        assert later["listwise"][b]["completion_ids"] == [row["completion_ids"][s] for s in slots]
        assert later["listwise"][b]["titles"] == [[row["chosen"], *row["rejected"]][s] for s in slots]
        assert later["listwise"][b]["prompt"] == row["prompt"]
    assert batch["example_idx"].tolist() == [0, 1, 2, 3]
    # the model inputs are exactly scoring's collation of the selected completions
    expected = collate_listwise(later["listwise"], 0, "naive")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["gather_slot"], expected["gather_slot"])


def test_collator_keeps_all_negatives_when_asked():
    ds = tokenize_preference_dataset(rows(2), CharTokenizer())
    batch = ListwiseCollator(pad_token_id=0, num_negatives=None, layout="packed")([ds[0], ds[1]])
    assert batch["item_ids"].tolist() == [ds[0]["item_ids"], ds[1]["item_ids"]]
    assert batch["layout"] == "packed" and "listwise" not in batch


def test_resample_collator_follows_epoch():
    ds = tokenize_preference_dataset(rows(1, num_candidates=20), CharTokenizer())
    collator = ListwiseCollator(pad_token_id=0, num_negatives=3, negative_sampling="resample", seed=0)
    seen = set()
    for epoch in range(6):
        collator.epoch = epoch
        seen.add(tuple(collator([ds[0]])["item_ids"][0].tolist()))
    assert len(seen) > 1
    fixed = ListwiseCollator(pad_token_id=0, num_negatives=3, negative_sampling="fixed", seed=0)
    assert len({tuple(fixed([ds[0]])["item_ids"][0].tolist()) for fixed.epoch in range(6)}) == 1


def test_add_aux_columns_reorders_scores_to_completion_order():
    ds = rows(2, num_candidates=4)  # row 1: candidates [10, 11, 12, 13], target 11
    vectors = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0]])
    joined = add_aux_columns(ds, vectors, scores)
    assert joined[1]["aux_user_vector"] == [3.0, 4.0]
    assert joined[1]["aux_scores"] == [11.0, 10.0, 12.0, 13.0]  # target first, then candidate order
    assert joined[0]["aux_scores"] == [0.0, 1.0, 2.0, 3.0]  # target 0 is the first candidate
    with pytest.raises(ValueError, match="rows but the split has"):
        add_aux_columns(ds, vectors[:1], scores[:1])

import pandas as pd
import pytest
from datasets import Dataset

from napo.data import TrainingDataError, check_item_tokens, to_prompt_completion


def _split():
    return Dataset.from_dict({
        "user_id": [0, 1, 2], "prompt": ["p0 Answer:", "p1 Answer:", "p2 Answer:"],
        "chosen": ["<item_1>", "<item_2>", "<item_0>"], "rejected": [["a"], ["b"], ["c"]],
    })


def test_prompt_completion_columns_and_row_order():
    out = to_prompt_completion(_split())
    assert out.column_names == ["prompt", "completion"]
    assert out["completion"] == ["<item_1>", "<item_2>", "<item_0>"]  # verbatim: no space, no EOS
    assert to_prompt_completion(_split(), max_samples=2)["prompt"] == ["p0 Answer:", "p1 Answer:"]
    with pytest.raises(TrainingDataError, match="chosen"):
        to_prompt_completion(Dataset.from_dict({"prompt": ["x"]}))


def test_item_token_check(tiny_item_tokens):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_item_tokens[1])
    items = pd.DataFrame({"item_id": [0, 1, 39]})
    check_item_tokens(tok, {"item_format": "token"}, items)  # all present: no error
    check_item_tokens(tok, {"item_format": "title"}, pd.DataFrame({"item_id": [10_000]}))  # titles: not checked
    with pytest.raises(TrainingDataError, match=r"lacks 1 of them \(e\.g\. <item_10000>\).*--item-tokens"):
        check_item_tokens(tok, {"item_format": "token"}, pd.DataFrame({"item_id": [0, 10_000]}))


def test_preference_splits_join_aux_by_row_before_and_after_truncation(napo_inputs):
    """max_train_samples keeps the first rows; joining the auxiliary outputs to those rows only
    gives what joining the whole split and then truncating gives."""
    from types import SimpleNamespace

    from data_prep.prepared import load_prepared
    from napo.auxiliary import load_aux
    from napo.collator import add_aux_columns
    from napo.data import preference_splits

    dataset, _, meta = load_prepared(napo_inputs["data"])
    aux = str(napo_inputs["root"] / "aux")
    args = SimpleNamespace(source="d", dataset_dir="d", train_split="train", eval_split="valid",
                           max_train_samples=5, max_eval_samples=None)
    got = preference_splits(dataset, meta, args, aux, with_eval=True)
    whole = add_aux_columns(dataset["train"], *load_aux(aux, "train", meta, num_rows=len(dataset["train"])))
    assert got["train"].to_list() == whole.select(range(5)).to_list()
    assert len(got["eval"]) == len(dataset["valid"])

"""Full-catalogue ranking: napo.eval.catalogue and napo-eval --rank_over catalogue."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_prep.prompts import item_token
from napo.eval.catalogue import (
    AuxCatalogue,
    ItemTokenCatalogue,
    Retrieval,
    TitleCatalogue,
    catalogue_completions,
    catalogue_texts,
)
from napo.eval.config import EvalArguments, EvalError
from napo.eval.metrics import FULL_KS, full_ranks, metrics_from_ranks, popularity_report, top_items
from napo.eval.report import compare
from napo.eval.runner import evaluate, load_split
from napo.scoring import collate_listwise, completion_logps, tokenize_listwise
from napo.scripts.evaluate import main as eval_main


def _load(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def brute_force_token_logps(model, tokenizer, prompt: str, texts: list[str]) -> list[float]:
    """log p(text | prompt) of one-token texts, one sequence at a time: tokenize(prompt + text)
    jointly, a plain forward without padding, a float64 log_softmax at the position before it."""
    alone = tokenizer(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(prompt + text)["input_ids"]
            assert ids[: len(alone)] == alone and len(ids) == len(alone) + 1  # one token, appended
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            out.append(torch.log_softmax(logits[-2], dim=-1)[ids[-1]].item())
    return out


def test_item_token_catalogue_equals_brute_force_log_probs(history_data):
    data, model_dir = history_data["token"]
    model, tokenizer = _load(model_dir)
    rows, items, _ = load_split(data, "test", max_examples=7)
    batch = rows[0:7]
    assert len({len(tokenizer(p)["input_ids"]) for p in batch["prompt"]}) > 1  # left padding is exercised
    scores = ItemTokenCatalogue(model, tokenizer, items)(batch, list(range(7)))
    assert scores.shape == (7, len(items))
    for i, prompt in enumerate(batch["prompt"]):
        expected = brute_force_token_logps(model, tokenizer, prompt, [item_token(j) for j in items["item_id"]])
        torch.testing.assert_close(scores[i].double(), torch.tensor(expected, dtype=torch.float64),
                                   atol=2e-5, rtol=0)


def test_napo_eval_full_section_is_the_recommenders_full_ranking(history_data, tmp_path):
    """--rank_over both --exclude_history: the full section = metrics_from_ranks(FULL_KS) and the
    popularity report of brute-force ranks (history excluded, target kept), per_row.json carries
    the same ranks, and the answer layout's candidate scores are the catalogue's at the candidates."""
    data, model_dir = history_data["token"]
    out = tmp_path / "eval"
    assert eval_main(["--model_name_or_path", str(model_dir), "--dataset_dir", str(data), "--output_dir", str(out),
                      "--rank_over", "both", "--scoring", "answer", "--exclude_history", "true",
                      "--batch_size", "4", "--no_progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    per_row = json.loads((out / "per_row.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    model, tokenizer = _load(model_dir)
    rows, items, _ = load_split(data, "test")
    counts = np.asarray(items["train_count"])
    brute = np.array([brute_force_token_logps(model, tokenizer, r["prompt"], [item_token(j) for j in items["item_id"]])
                      for r in rows])  # [N, num_items]
    history = [r["history"] for r in rows]
    ranks = full_ranks(brute, rows["target"], history)
    expected = metrics_from_ranks(ranks, FULL_KS)
    expected.update(popularity_report(top_items(brute, 10, history), rows["target"], counts, (1, 10)))
    assert metrics["full"].keys() == expected.keys()
    for key, value in expected.items():
        assert metrics["full"][key] == pytest.approx(value, nan_ok=True), key
    assert per_row["ranks"]["full"] == [float(r) for r in ranks]
    assert [p["full_rank"] for p in predictions] == ranks.tolist()
    assert metrics["full_settings"]["exclude_history"] is True and metrics["full_settings"]["num_items"] == 24
    assert metrics["full_settings"]["seconds_per_row"] > 0
    # history excluded: every top list avoids the row's history
    assert all(not set(p["full_top"]) & set(h) for p, h in zip(predictions, history, strict=True))
    # 20-candidate ranking by the answer layout reads the same log-probs at the candidates
    for p, row, b in zip(predictions, rows, brute, strict=True):
        np.testing.assert_allclose(p["scores"], b[row["candidates"]], atol=2e-5)
    assert per_row["ranks"]["rank"] == [float(p["target_rank"]) for p in predictions]
    # --compare pairs the full-catalogue ranks too (here against Popularity on the same rows)
    pop = tmp_path / "popularity"
    assert eval_main(["--popularity", "--dataset_dir", str(data), "--output_dir", str(pop), "--rank_over", "both",
                      "--exclude_history", "true", "--no_progress"]) == 0
    table = compare([str(pop), str(out)])
    assert "| full HR@10 | full NDCG@10 |" in table
    assert "| eval vs popularity | full/ndcg@10 |" in table and "| eval vs popularity | full/hr@10 |" in table


def test_title_catalogue_equals_joint_tokenization_scores(history_data):
    """Titles in chunks (prompt once per chunk, the tail shortcut for tokenization) give the
    scores of scoring each prompt with the whole catalogue as completions, tokenized jointly."""
    data, model_dir = history_data["title"]
    model, tokenizer = _load(model_dir)
    rows, items, meta = load_split(data, "test", max_examples=5)
    batch = rows[0:5]
    scorer = TitleCatalogue(model, tokenizer, items, meta["item_format"], chunk_size=7)
    scores = scorer(batch, list(range(5)))
    texts = catalogue_texts(items, "title")
    exact = tokenize_listwise(tokenizer, list(batch["prompt"]), [texts] * 5)
    expected, _ = completion_logps(model, collate_listwise(exact, tokenizer.pad_token_id, "naive"))
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
    assert scorer.cost()["prompt_encodings_per_row"] == 4  # 24 titles in chunks of 7: the prompt 4 times
    # a subset (the retrieval stage) is the same numbers at those ids
    ids = torch.tensor([[3, 0, 17]] * 5)
    torch.testing.assert_close(scorer.score_items(batch, ids), expected.gather(1, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("ending", ["Answer:", "Answer: ", "Answer:\n", "(", ""])
def test_catalogue_completions_match_joint_tokenization(history_data, ending):
    """The tail shortcut gives tokenize_listwise's ids for every prompt, also when a title merges
    with the prompt's end (a trailing space or bracket) or the prompt is shorter than the tail."""
    _, model_dir = history_data["title"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    titles = ["Heat", "Heat Wave", "(Alien)", " Aliens", "Toy Story", "Big", "\"Quoted\" Title"]  # the last merges a trailing space
    prompts = [f"User saw Heat, Fargo{'!' * k}. Next? {ending}" for k in range(3)] + [ending, f"x {ending}"]
    cache: dict = {}
    for _ in range(2):  # the second call reads the cache
        got = catalogue_completions(tokenizer, prompts, titles, cache=cache)
        assert got == tokenize_listwise(tokenizer, prompts, [titles] * len(prompts))
    cut = catalogue_completions(tokenizer, prompts, titles, max_prompt_length=4)
    assert cut == tokenize_listwise(tokenizer, prompts, [titles] * len(prompts), max_prompt_length=4)


class _Stub:
    """A catalogue scorer with fixed scores per row (first stage) that also scores subsets."""

    def __init__(self, table, name="stub"):
        self.table = torch.as_tensor(table, dtype=torch.float64)
        self.num_items = self.table.shape[1]
        self.name = name

    def __call__(self, batch, indices):
        return self.table[list(indices)]

    def score_items(self, batch, item_ids):
        return self.table[torch.as_tensor(batch["row"])[:, None], item_ids]


def test_retrieval_reranks_the_retrieved_items_and_keeps_the_rest_in_aux_order():
    aux = _Stub([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    llm = _Stub([[-3.0, -1.0, -2.0, -0.5, 0.0, 0.0]])
    batch = {"row": [0], "history": [[0]]}
    scores = Retrieval(aux, llm, top_n=3)(batch, [0])
    order = np.argsort(-scores.numpy()[0], kind="stable").tolist()
    assert order == [1, 2, 0, 3, 4, 5]  # aux top 3 = {0, 1, 2} by the LLM, then 3, 4, 5 by aux
    scores = Retrieval(aux, llm, top_n=3, exclude_history=True)(batch, [0])
    order = np.argsort(-scores.numpy()[0], kind="stable").tolist()
    assert order[:3] == [3, 1, 2]  # item 0 (history) is not retrieved; 1, 2, 3 re-ranked by the LLM
    assert full_ranks(scores.numpy(), [0], [[0]])[0] == 4  # the target stays ranked: behind the 3 retrieved
    assert full_ranks(scores.numpy(), [2], [[0]])[0] == 3  # a retrieved one: in the LLM order


def test_aux_catalogue_is_user_times_item_vectors():
    users, items = torch.randn(4, 3), torch.randn(9, 3)
    scorer = AuxCatalogue(users, items)
    out = scorer({"row_index": [3, 1]}, [0, 1])
    torch.testing.assert_close(out, torch.stack([users[3] @ items.T, users[1] @ items.T]))
    with pytest.raises(EvalError, match="row 7 asked for"):
        scorer({"row_index": [7]}, [0])


def test_catalogue_ranking_refuses_prompts_that_list_candidates(tiny_dataset_dir, tiny_model_dir, tmp_path):
    rows, items, meta = load_split(tiny_dataset_dir, "test", max_examples=2)
    model, tokenizer = _load(tiny_model_dir)
    args = EvalArguments(model_name_or_path=str(tiny_model_dir), dataset_dir=str(tiny_dataset_dir),
                         output_dir=str(tmp_path / "x"), rank_over="catalogue")
    with pytest.raises(EvalError, match="prompts list the candidates.*--prompt-style history"):
        evaluate(args, rows, items, meta, model=model, tokenizer=tokenizer)
    with pytest.raises(EvalError, match="retrieve_top"):
        EvalArguments(model_name_or_path="m", dataset_dir="d", output_dir="o", rank_over="catalogue",
                      retrieve_from="aux")
    with pytest.raises(EvalError, match="constrain 'nothing'"):
        EvalArguments(model_name_or_path="m", dataset_dir="d", output_dir="o", constrain=["nothing"])
    # a YAML string is split, not read character by character
    assert EvalArguments(model_name_or_path="m", dataset_dir="d", output_dir="o",
                         constrain="none candidates").constrain == ["none", "candidates"]


def test_the_model_card_gets_the_full_catalogue_metrics(tmp_path):
    from napo.cards import add_evaluation, read_card, write_card

    write_card(tmp_path, {"method": "sft", "model_name": "m", "evaluations": []})
    metrics = {"dataset": "d", "split": "test", "num_examples": 3, "rank": {"hr@1": 0.5, "ndcg@10": 0.6},
               "full": {"hr@10": 0.25, "ndcg@10": 0.125, "pop/coverage@10": 0.1}}
    assert add_evaluation(tmp_path, metrics, name="run")
    row = read_card(tmp_path)["evaluations"][-1]["metrics"]
    assert row == {"hr@1": 0.5, "ndcg@10": 0.6, "full/hr@10": 0.25, "full/ndcg@10": 0.125}
    assert "full/hr@10" in (tmp_path / "README.md").read_text()

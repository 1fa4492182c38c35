"""Constrained decoding (napo.eval.constrained, napo-eval --constrain): only real items come out,
and the answer is the trie-greedy title, checked against a brute force."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from napo.eval.catalogue import catalogue_texts
from napo.eval.constrained import ConstrainedGenerator, TitleTrie
from napo.eval.generate import GreedyGenerator
from napo.eval.rows import candidate_completions
from napo.eval.runner import load_split
from napo.scoring import tokenize_listwise
from napo.scripts.evaluate import main as eval_main


def test_title_trie_known_answer():
    trie = TitleTrie([[1, 2, 9], [1, 2, 3, 9], [1, 4, 9], [5, 9], [5, 9]], [10, 11, 12, 13, 14])
    assert sorted(trie.allowed([])) == [1, 5]
    assert sorted(trie.allowed([1])) == [2, 4]
    assert sorted(trie.allowed([1, 2])) == [3, 9]  # "Heat" ends here or goes on to "Heat Wave"
    assert trie.allowed([1, 2, 9]) == [] and trie.allowed([7]) == []
    assert trie.items([1, 2, 9]) == [10] and trie.items([1, 2, 3, 9]) == [11]
    assert trie.items([1, 2]) == []  # not a complete answer
    assert trie.items([5, 9]) == [13, 14]  # two items with the same tokens
    assert trie.depth == 4


def brute_force_trie_greedy(model, prompt_ids: list[int], answers: list[list[int]]) -> list[int]:
    """The trie-greedy answer by definition, without a trie, a cache or padding: at each step the
    allowed next tokens are those that continue some allowed answer; take the one the model gives
    the highest logit after prompt + tokens so far (a full forward each step; ties: smaller id);
    stop when the tokens taken are a complete answer that no other answer extends."""
    taken: list[int] = []
    with torch.no_grad():
        while True:
            nxt = {a[len(taken)] for a in answers if len(a) > len(taken) and a[: len(taken)] == taken}
            if not nxt:
                return taken
            logits = model(input_ids=torch.tensor([prompt_ids + taken])).logits[0, -1].double()
            taken.append(max(nxt, key=lambda t: (logits[t].item(), -t)))


def _models(tiny_model_dir, trained_model_dir):
    for path in (tiny_model_dir, trained_model_dir):
        yield AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval(), \
            AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("constrain", ["candidates", "catalogue"])
def test_constrained_decode_is_the_trie_greedy_title_and_never_a_non_title(
        tiny_dataset_dir, tiny_model_dir, trained_model_dir, constrain):
    """Titles share prefixes ("Heat", "Heat Wave", "Heat of Night"; "Alien", "Aliens"; "Casino",
    "Casino Royale") on a BPE tokenizer; a random model and one fitted on 15 rows."""
    rows, items, meta = load_split(tiny_dataset_dir, "test")
    batch = rows[0: len(rows)]
    titles = catalogue_texts(items, "title")
    shared = [t for t in titles if any(o != t and o.startswith(t) for o in titles)]
    assert {"Heat", "Alien", "Casino"} <= set(shared)
    free_non_titles = 0
    for model, tokenizer in _models(tiny_model_dir, trained_model_dir):
        gen = ConstrainedGenerator(model, tokenizer, constrain, items=items, item_format="title")
        results = []
        for start in range(0, len(rows), 8):  # batches of 8: left padding and finished rows in a batch
            results += gen.generate_ids(rows[start: start + 8])
        answers = gen(batch, list(range(len(rows))))
        if constrain == "candidates":
            allowed = tokenize_listwise(tokenizer, list(batch["prompt"]), candidate_completions(batch))
            ids_of = [list(c) for c in batch["candidates"]]
        else:
            allowed = tokenize_listwise(tokenizer, list(batch["prompt"]), [titles] * len(rows))
            ids_of = [list(items["item_id"])] * len(rows)
        for i, ((ids, _), answer) in enumerate(zip(results, answers, strict=True)):
            sequences = allowed[i]["completion_ids"]
            assert ids in sequences, f"row {i}: decoded a non-title"
            assert ids == brute_force_trie_greedy(model, allowed[i]["prompt_ids"], sequences), f"row {i}"
            assert answer["item_ids"] == [ids_of[i][sequences.index(ids)]]
            assert answer["answer"] == tokenizer.decode(ids, skip_special_tokens=True)
        free = GreedyGenerator(model, tokenizer)(batch, list(range(len(rows))))
        free_non_titles += sum(a not in titles for a in free)
    assert free_non_titles > 0  # the constraint changes something: free decoding leaves the catalogue


def test_napo_eval_constrained_sections_and_per_row(trained_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "gen"
    assert eval_main(["--model_name_or_path", str(trained_model_dir), "--dataset_dir", str(tiny_dataset_dir),
                      "--output_dir", str(out), "--mode", "both", "--constrain", "none", "candidates", "catalogue",
                      "--batch_size", "8", "--no_progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    per_row = json.loads((out / "per_row.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["modes"] == ["rank", "generate", "generate/candidates", "generate/catalogue"]
    for name in ("generate/candidates", "generate/catalogue"):
        section = metrics[name]
        assert section["valid_ratio"] == 1.0 and section["num_trie"] == len(predictions)
        hits = [p[name]["hit"] for p in predictions]
        assert section["hr@1"] == pytest.approx(sum(hits) / len(hits))
        assert per_row["ranks"][name] == [1.0 if h else None for h in hits]
        assert all(p[name]["match_rule"] == "trie" for p in predictions)
    # a candidates-constrained answer is always one of the row's candidates
    rows, _, _ = load_split(tiny_dataset_dir, "test")
    assert all(p["generate/candidates"]["matched"] in r["candidates"] for p, r in zip(predictions, rows, strict=True))
    # the fitted rows are reproduced by every decoding; the free one keeps its own keys
    assert metrics["generate"]["hr@1"] == pytest.approx(sum(p["hit"] for p in predictions) / len(predictions))
    assert per_row["ranks"]["generate"] == [1.0 if p["hit"] else None for p in predictions]
    report = (out / "report.md").read_text()
    assert "| candidates trie | " in report and "| catalogue trie | " in report

"""The evaluator on a real prepared dataset and a tiny LLM: rank/generate agreement, scoring
options, classic recommenders through the recipe, and 1- vs 2-process runs."""

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_launch

from napo.eval.config import EvalArguments
from napo.eval.generate import GreedyGenerator, greedy_config, left_pad
from napo.eval.metrics import ranking_metrics
from napo.eval.rank import LikelihoodScorer
from napo.eval.runner import evaluate, load_split

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "evaluate.py"


def _recipe():
    return importlib.import_module("napo.scripts.evaluate")


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def _test_rows(dataset_dir):
    from data_prep.prepared import load_prepared

    dataset, items, meta = load_prepared(dataset_dir)
    return dataset["test"][:], items, meta


def _predictions(out):
    return [json.loads(line) for line in (Path(out) / "predictions.jsonl").read_text().splitlines()]


def test_rank_and_generate_agree_when_greedy_follows_the_top_candidate(trained_model_dir, tiny_dataset_dir, tmp_path):
    """Agreement condition, made precise: let r be rank's top-1 candidate and g the greedily
    generated ids (cut after the first EOS). If g equals r's completion ids (title + EOS) token
    for token, greedy decoding followed the highest-likelihood candidate; then the answer is
    r's title, generate matches it exactly, and both modes name the same item. On those rows
    the rank score of r also equals the sum of the greedy steps' log-probs (packed scoring vs
    incremental decoding with a KV cache and left padding)."""
    model, tokenizer = _load(trained_model_dir)
    out = tmp_path / "both"
    args = EvalArguments(model_name_or_path=str(trained_model_dir), dataset_dir=str(tiny_dataset_dir),
                         output_dir=str(out), mode="both", batch_size=4, no_progress=True)
    evaluate(args, *load_split(tiny_dataset_dir, "test"), model=model, tokenizer=tokenizer)
    preds = _predictions(out)
    rows, _, _ = _test_rows(tiny_dataset_dir)
    completions = LikelihoodScorer(model, tokenizer).tokenize(rows)
    generator = GreedyGenerator(model, tokenizer)
    prompts = generator.prompt_ids(rows)

    followed, not_followed = [], []
    for start in range(0, len(prompts), 4):  # the evaluator's batches
        batch = prompts[start: start + 4]
        input_ids, attention_mask = left_pad(batch, tokenizer.pad_token_id)
        config = greedy_config(tokenizer)
        config.output_logits, config.return_dict_in_generate = True, True
        with torch.no_grad():
            res = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        steps = torch.stack(res.logits, dim=1).float().log_softmax(-1)  # [b, steps, V]
        generated = res.sequences[:, input_ids.shape[1]:]
        for j in range(len(batch)):
            i = start + j
            ids = generated[j].tolist()
            cut = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
            ids = ids[:cut]
            top_item = preds[i]["ranking"][0]
            slot = rows["candidates"][i].index(top_item)
            if ids == completions[i]["completion_ids"][slot]:
                greedy_logp = steps[j, torch.arange(cut), torch.tensor(ids)].sum().item()
                followed.append((i, top_item, slot, greedy_logp))
            else:
                not_followed.append(i)
    # the fitted model follows its top candidate on some rows and not on others
    assert len(followed) >= 5 and len(not_followed) >= 3, (len(followed), len(not_followed))
    for i, top_item, slot, greedy_logp in followed:
        assert preds[i]["matched"] == top_item, i
        assert preds[i]["match_rule"] == "exact", i
        assert preds[i]["answer"] == rows["chosen"][i] if preds[i]["hit"] else True
        assert preds[i]["scores"][slot] == pytest.approx(greedy_logp, abs=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["generate"]["num_valid"] >= len(followed)
    assert metrics["agreement"]["top1_agree"] >= len(followed)


def test_length_normalize_and_layouts(trained_model_dir, tiny_dataset_dir):
    model, tokenizer = _load(trained_model_dir)
    rows, _, _ = _test_rows(tiny_dataset_dir)
    batch = {k: v[:6] for k, v in rows.items()}
    packed = LikelihoodScorer(model, tokenizer)
    summed = packed(batch, range(6))
    naive = LikelihoodScorer(model, tokenizer, layout="naive")(batch, range(6))
    torch.testing.assert_close(summed, naive, atol=1e-4, rtol=0)
    mean = LikelihoodScorer(model, tokenizer, length_normalize=True)(batch, range(6))
    lengths = torch.tensor([[len(c) for c in ex["completion_ids"]] for ex in packed.tokenize(batch)])
    torch.testing.assert_close(mean * lengths, summed, atol=1e-4, rtol=0)
    assert lengths.min() >= 2  # a title token and EOS at least


def test_recipe_classic_recommenders_and_compare(tiny_dataset_dir, tmp_path, capsys):
    from napo.auxiliary import write_aux

    recipe = _recipe()
    rows, items, meta = _test_rows(tiny_dataset_dir)
    counts = dict(zip(items["item_id"], items["train_count"], strict=True))
    # popularity, computed independently: rank = 1 + #other candidates with count >= the target's
    expected = [sum(counts[c] >= counts[t] for c in cands if c != t) + 1
                for cands, t in zip(rows["candidates"], rows["target"], strict=True)]
    assert recipe.main(["--popularity", "--dataset_dir", str(tiny_dataset_dir), "--output_dir",
                        str(tmp_path / "Popularity"), "--no_progress"]) == 0
    pop = json.loads((tmp_path / "Popularity" / "metrics.json").read_text())
    assert pop["rank"]["mrr"] == pytest.approx(np.mean([1 / r for r in expected]))
    assert pop["rank"]["hr@1"] == pytest.approx(np.mean([r == 1 for r in expected]))
    assert [p["target_rank"] for p in _predictions(tmp_path / "Popularity")] == expected

    # an auxiliary recommender's candidate scores (contracts.md §2), row-aligned with the split
    rng = np.random.default_rng(0)
    for split, n in meta["counts"]["splits"].items():
        write_aux(tmp_path / "aux", split, rng.normal(size=(n["examples"], 4)),
                  rng.normal(size=(n["examples"], 5)), dataset_fingerprint=meta["fingerprint"], model="SASRec")
    from napo.auxiliary import load_aux

    _, scores = load_aux(tmp_path / "aux", "test", meta)
    target_index = [c.index(t) for c, t in zip(rows["candidates"], rows["target"], strict=True)]
    assert recipe.main(["--scores_from_aux", str(tmp_path / "aux"), "--dataset_dir", str(tiny_dataset_dir),
                        "--output_dir", str(tmp_path / "SASRec"), "--no_progress", "--batch_size", "3"]) == 0
    sasrec = json.loads((tmp_path / "SASRec" / "metrics.json").read_text())
    reference = ranking_metrics(scores.numpy(), target_index)
    for key, value in reference.items():
        assert sasrec["rank"][key] == pytest.approx(value), key
    assert sasrec["scorer"] == "SASRec"

    capsys.readouterr()
    table_file = tmp_path / "table.md"
    assert recipe.main(["--compare", str(tmp_path / "Popularity"), str(tmp_path / "SASRec"),
                        "--output", str(table_file)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == table_file.read_text().strip()
    lines = printed.strip().splitlines()
    assert lines[2].startswith("| method | HR@1 | HR@5 | HR@10 | NDCG@10 | MRR |")
    assert lines[4].startswith(f"| Popularity | {pop['rank']['hr@1']:.4f} |")
    assert lines[5].startswith(f"| SASRec | {sasrec['rank']['hr@1']:.4f} |")


def test_recipe_errors_are_one_line(tiny_dataset_dir, tmp_path, capsys):
    recipe = _recipe()

    def exit_code(argv):
        with pytest.raises(SystemExit) as stop:
            recipe.main(argv)
        return stop.value.code

    assert exit_code(["--compare", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no metrics.json" in err and "\n" not in err
    assert exit_code(["--popularity", "--dataset_dir", str(tmp_path / "missing"),
                      "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert exit_code(["--popularity", "--dataset_dir", str(tiny_dataset_dir), "--split", "nope",
                      "--output_dir", str(tmp_path / "out")]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
    assert exit_code(["--popularity", "--mode", "both", "--dataset_dir", str(tiny_dataset_dir),
                      "--output_dir", str(tmp_path / "out")]) == 2
    assert "use mode rank" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no partial output


def _run(cmd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env_extra or {})}
    proc = run_launch(cmd, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_one_and_two_processes_give_identical_results(trained_model_dir, tiny_dataset_dir, tmp_path):
    args = ["--model_name_or_path", str(trained_model_dir), "--dataset_dir", str(tiny_dataset_dir),
            "--mode", "both", "--batch_size", "4", "--no_progress"]
    assert _recipe().main([*args, "--output_dir", str(tmp_path / "one")]) == 0  # this process
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--mixed_precision", "no",
          str(RECIPE), *args, "--output_dir", str(tmp_path / "two")], {"ACCELERATE_USE_CPU": "true"})
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert json.loads((tmp_path / "two" / "run.json").read_text())["config"]["num_processes"] == 2
    assert one["rank"] == two["rank"] and one["generate"] == two["generate"]
    assert one["num_examples"] == two["num_examples"] == 25
    assert 0 < one["generate"]["num_valid"]  # the fitted model gives real answers to compare
    assert (tmp_path / "one" / "predictions.jsonl").read_text() == (tmp_path / "two" / "predictions.jsonl").read_text()


def test_recipe_applies_an_adapter_to_its_base(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = _load(tiny_model_dir)
    torch.manual_seed(0)
    # random A and B (not the zero-B default), so the adapter really changes the scores
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    rows, _, _ = _test_rows(tiny_dataset_dir)
    batch = {k: v[:6] for k, v in rows.items()}
    with_adapter = LikelihoodScorer(peft_model, tokenizer)(batch, range(6))
    with peft_model.disable_adapter():
        base = LikelihoodScorer(peft_model, tokenizer)(batch, range(6))
    assert (with_adapter - base).abs().max() > 1e-2
    assert _recipe().main(["--model_name_or_path", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"),
                           "--dataset_dir", str(tiny_dataset_dir), "--max_examples", "6",
                           "--output_dir", str(tmp_path / "eval"), "--no_progress"]) == 0
    scores = torch.tensor([p["scores"] for p in _predictions(tmp_path / "eval")])
    torch.testing.assert_close(scores, with_adapter, atol=1e-4, rtol=0)  # merged adapter = unmerged

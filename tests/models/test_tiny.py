import json

import pytest
import torch

from data_prep.prompts import item_token
from napo.models.tiny import (
    TinyModelError,
    build_config,
    build_tiny_from_data,
    build_tiny_model,
    main,
    train_bpe,
    wrap_tokenizer,
)

TEXTS = ["Toy Story (1995)", "Heat (1995)", "This user has watched Toy Story (1995), Heat (1995). Answer:"] * 5


def test_bpe_training_is_deterministic():
    a = train_bpe(TEXTS, vocab_size=300).to_str()
    b = train_bpe(list(TEXTS), vocab_size=300).to_str()
    assert a == b


def test_special_token_ids_and_bos_prepended():
    tok = wrap_tokenizer(train_bpe(TEXTS, vocab_size=300))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("Heat (1995)")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id  # BOS added, EOS not
    assert tok.decode(ids, skip_special_tokens=True) == "Heat (1995)"
    # an EOS written in the text is one special token (TRL appends "</s>" to completions)
    assert tok("Heat</s>")["input_ids"][-1] == tok.eos_token_id


def test_save_load_round_trip(synthetic_dirs, tmp_path):
    from transformers import AutoTokenizer

    record = build_tiny_model(synthetic_dirs["title"], tmp_path, vocab_size=400, hidden_size=32,
                              num_layers=1, num_heads=2)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    left = AutoTokenizer.from_pretrained(tmp_path, padding_side="left")
    text = "Ghost Island (1999), Red Man (1953)! Answer:"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == text
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == record["vocab_size"]
    batch = left(["a", "a b c d"], padding=True)["input_ids"]
    assert batch[0][0] == left.pad_token_id and batch[1][0] == left.bos_token_id
    assert tok.padding_side == "right"
    saved = json.loads((tmp_path / "napo_tiny.json").read_text())
    assert saved["source"]["item_format"] == "title" and saved["num_item_tokens"] == 0
    assert saved["max_sampled_sequence_tokens"] <= saved["max_position_embeddings"]


def test_item_tokens_are_single_tokens(tiny_token_model, synthetic_dirs):
    from transformers import AutoTokenizer

    from data_prep.prepared import load_prepared

    tok = AutoTokenizer.from_pretrained(tiny_token_model)
    dataset, items, _ = load_prepared(synthetic_dirs["token"])
    ids = [tok.convert_tokens_to_ids(item_token(i)) for i in items["item_id"]]
    assert len(set(ids)) == len(items)
    # ids follow item order right after the BPE vocabulary
    assert ids == list(range(ids[0], ids[0] + len(items)))
    for i, token_id in zip(items["item_id"][:5], ids[:5], strict=True):
        assert tok(item_token(i))["input_ids"] == [tok.bos_token_id, token_id]
    row = dataset["train"][0]
    prompt_ids = tok(row["prompt"])["input_ids"]
    joint = tok(row["prompt"] + row["chosen"] + tok.eos_token)["input_ids"]
    assert joint[: len(prompt_ids)] == prompt_ids  # the prompt alone is a prefix
    assert joint[len(prompt_ids):] == [tok.convert_tokens_to_ids(row["chosen"]), tok.eos_token_id]
    assert tok.decode(joint, skip_special_tokens=True) == row["prompt"] + row["chosen"]


def test_model_loads_with_auto_classes(tiny_token_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_token_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_token_model)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    enc = tok(["hello there"], return_tensors="pt")
    logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()


def test_qwen2_and_same_seed_same_weights(synthetic_dirs, tmp_path):
    import pandas as pd
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    dataset = load_from_disk(str(synthetic_dirs["title"]))
    items = pd.read_json(synthetic_dirs["title"] / "items.jsonl", lines=True)
    kw = dict(arch="qwen2", vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    build_tiny_from_data(dataset, items, tmp_path / "a", **kw)
    build_tiny_from_data(dataset, items, tmp_path / "b", **kw)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert isinstance(a, Qwen2ForCausalLM)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_config_errors_are_one_line():
    with pytest.raises(TinyModelError, match="not divisible"):
        build_config("llama", vocab_size=10, hidden_size=30, num_layers=1, num_heads=4,
                     max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with pytest.raises(TinyModelError, match="not supported"):
        build_config("gpt2", vocab_size=10, hidden_size=32, num_layers=1, num_heads=4,
                     max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def test_cli(synthetic_dirs, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["--dataset-dir", str(synthetic_dirs["token"]), "--output-dir", str(out), "--item-tokens",
                 "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--vocab-size", "300"]) == 0
    assert json.loads((out / "napo_tiny.json").read_text())["num_item_tokens"] == 60
    capsys.readouterr()
    assert main(["--dataset-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]
    assert not (tmp_path / "x").exists()

"""Datasets beyond the prepared directory: TRL's standard formats through `dataset_name`."""

import json
import math
from types import SimpleNamespace

import pytest
import yaml
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from data_prep.prepared import load_prepared
from napo.collator import listwise_text, tokenize_preference_dataset
from napo.config import DatasetArguments
from napo.data import (
    TrainingDataError,
    check_objective_data,
    load_training_data,
    to_prompt_completion,
)


def _trl_rows(data_dir, split="train"):
    """TRL's standard preference rows from the tiny prepared data: rejected = ONE string."""
    dataset, _, _ = load_prepared(data_dir)
    rows = dataset[split]
    return [{"prompt": p, "chosen": c, "rejected": r[0]}
            for p, c, r in zip(rows["prompt"], rows["chosen"], rows["rejected"], strict=True)]


def test_string_rejected_is_one_negative_not_one_per_character(tiny_item_tokens):
    """Regression: a string `rejected` used to be iterated as characters ("<item_3>" -> "<", "i", ...)."""
    data_dir, model_dir = tiny_item_tokens
    rows = _trl_rows(data_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tokenized = tokenize_preference_dataset(Dataset.from_list(rows), tok)  # the string rows as they are
    assert tokenized["rejected"] == [[r["rejected"]] for r in rows]
    assert all(len(c) == 2 for c in tokenized["completion_ids"])  # chosen + exactly one negative
    negative = tok(rows[0]["rejected"], add_special_tokens=False)["input_ids"]
    assert tokenized[0]["completion_ids"][1][: len(negative)] == negative  # the whole title, not "<"


def test_list_rejected_is_kept_and_bad_rows_get_one_line():
    listwise = Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": [["b", "c"]]})
    assert listwise_text(listwise) is listwise  # nothing to convert, no copy
    with pytest.raises(TrainingDataError, match=r"lacks column\(s\) \['rejected'\] \(has prompt, chosen\)"):
        listwise_text(Dataset.from_dict({"prompt": ["p"], "chosen": ["a"]}))
    with pytest.raises(TrainingDataError, match="prompt a string, chosen a string, rejected another type"):
        listwise_text(Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": [3]}))
    chat = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": "hi"}]], "chosen": [[{"role": "assistant", "content": "a"}]],
        "rejected": [[{"role": "assistant", "content": "b"}]],
    })
    with pytest.raises(TrainingDataError, match="conversational .* but the tokenizer has no chat template"):
        listwise_text(chat, tokenizer=None)


def test_sft_accepts_prompt_completion_and_prompt_chosen():
    pc = to_prompt_completion(Dataset.from_dict({"prompt": ["p0", "p1"], "completion": ["a", "b"], "x": [1, 2]}))
    assert pc.column_names == ["prompt", "completion"] and pc["completion"] == ["a", "b"]
    pref = to_prompt_completion(Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}))
    assert pref.column_names == ["prompt", "completion"] and pref["completion"] == ["a"]
    with pytest.raises(TrainingDataError, match=r"lacks column\(s\) \['chosen'\] \(has prompt, answer\): SFT needs prompt and completion"):
        to_prompt_completion(Dataset.from_dict({"prompt": ["p"], "answer": ["a"]}))


def test_dataset_name_reads_a_local_path_and_a_saved_dataset(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(3)]
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset, items, meta = load_training_data(DatasetArguments(dataset_name=str(tmp_path / "files")))
    assert list(dataset) == ["train"] and dataset["train"]["rejected"] == ["b0", "b1", "b2"]
    assert len(items) == 0 and meta["dataset"] == str(tmp_path / "files") and meta["fingerprint"] is None
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    dataset, _, _ = load_training_data(DatasetArguments(dataset_name=str(tmp_path / "saved")))
    assert dataset["train"]["chosen"] == ["a0", "a1", "a2"]
    with pytest.raises(TrainingDataError, match="cannot load dataset_name"):
        load_training_data(DatasetArguments(dataset_name=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="exactly one of dataset_dir"):
        DatasetArguments(dataset_dir="a", dataset_name="b")


def test_sharing_and_margin_refuse_data_without_item_ids():
    split = Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": [["b"]]})
    napo = SimpleNamespace(share_negatives=True, margin_alpha=0.3, aux_dir="aux")
    with pytest.raises(TrainingDataError, match=r"^hub/x has no item ids \(columns target, candidates\), so "
                       r"share_negatives, margin_alpha > 0, aux_dir cannot work on it: .* loss_type dpo or sdpo"):
        check_objective_data(napo, split, "hub/x")
    check_objective_data(SimpleNamespace(share_negatives=False, margin_alpha=0.0, aux_dir=None), split, "hub/x")


@pytest.fixture(scope="module")
def trl_dataset_dir(tmp_path_factory, tiny_item_tokens):
    root = tmp_path_factory.mktemp("trl_format")
    (root / "data").mkdir()
    rows = _trl_rows(tiny_item_tokens[0])
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(root, model_dir, name, **settings):
    config = dict(
        dataset_name=str(root / "data"), model_name_or_path=str(model_dir), output_dir=str(root / name),
        use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
        per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none",
        use_cpu=True, gradient_checkpointing=False, save_strategy="no", dataloader_pin_memory=False,
        eval_strategy="no",
    )
    config.update(settings)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_trl_format_trains_one_negative_per_row(trl_dataset_dir, tiny_item_tokens):
    """S-DPO on TRL's pairs trains exactly the one negative of each row (num_negatives 1; more is
    refused, tests/test_trl_user.py); the zero-init LoRA makes policy == reference, so the first
    loss is log(1 + 1)."""
    from napo.scripts.preference import main

    config = _config(trl_dataset_dir, tiny_item_tokens[1], "sdpo", loss_type="sdpo", num_negatives=1)
    trainer = main(["--config", config])
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    assert all(h["napo/pool_size"] == 1.0 for h in logs)
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert all(len(c) == 2 for c in trainer.train_dataset["completion_ids"])


def test_napo_on_data_without_item_ids_stops_with_one_line(trl_dataset_dir, tiny_item_tokens, capsys):
    from napo.scripts.preference import main

    config = _config(trl_dataset_dir, tiny_item_tokens[1], "napo", loss_type="napo", aux_dir="aux")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "has no item ids" in err[0] and "share_negatives" in err[0]


def test_sft_trains_on_trl_prompt_completion_rows(trl_dataset_dir, tiny_item_tokens):
    """SFT through dataset_name on TRL's prompt/completion rows: the loss covers completion + EOS only."""
    from napo.scripts.sft import main

    root, model_dir = trl_dataset_dir, tiny_item_tokens[1]
    rows = [json.loads(line) for line in (root / "data" / "train.jsonl").read_text().splitlines()]
    (root / "pc").mkdir(exist_ok=True)
    (root / "pc" / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows))
    config = _config(root, model_dir, "sft", dataset_name=str(root / "pc"))
    trainer = main(["--config", config])
    assert trainer.state.global_step == 2 and len(trainer.train_dataset) == len(rows)
    tok = AutoTokenizer.from_pretrained(model_dir)
    first = trainer.train_dataset[0]
    completion = tok(rows[0]["chosen"], add_special_tokens=False)["input_ids"]
    supervised = [t for t in first["labels"] if t != -100]
    assert supervised == completion + [tok.eos_token_id]  # the title's tokens and EOS, no prompt

"""recipes/sft.py end to end on the offline tiny model with LoRA (a few steps, seconds)."""

import importlib
import json
import math
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _recipe():
    return importlib.import_module("napo.scripts.sft")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from data_prep.synthetic import synthetic_prepared
    from napo.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("sft")
    data = synthetic_prepared(root / "data", item_format="token")
    model = root / "model"
    build_tiny_model(data, model, item_tokens=True, vocab_size=400, hidden_size=32, num_layers=2, num_heads=2)
    return data, model, root


def _config(path, data, model, out, **extra):
    cfg = {
        "dataset_dir": str(data), "model_name_or_path": str(model), "output_dir": str(out),
        "max_train_samples": 4, "per_device_train_batch_size": 4, "max_steps": 8,
        "learning_rate": 3.0e-3, "lr_scheduler_type": "constant", "warmup_steps": 0,
        "use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "lora_target_modules": ["all-linear"], "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "bf16": False, "use_cpu": True, "activation_checkpointing": False,
        "disable_tqdm": True, "seed": 0, "ddp_find_unused_parameters": False,
    }
    cfg.update(extra)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny):
    data, model, root = tiny
    config = _config(root / "sft.yaml", data, model, root / "out")
    return _recipe().main(["--config", config]), root / "out"


def _recording(losses: list):
    """RecSFTTrainer that appends every training loss it computes to ``losses``."""
    from napo.hub import RecSFTTrainer

    class Recording(RecSFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(loss.item())
            return loss

    return Recording


def test_labels_cover_the_completion_only(trained, tiny):
    from datasets import load_from_disk

    trainer, _ = trained
    tok = trainer.processing_class
    row = load_from_disk(str(tiny[0]))["train"][0]
    example = trainer.train_dataset[0]
    expected = tok(row["prompt"] + row["chosen"])["input_ids"] + [tok.eos_token_id]
    assert example["input_ids"] == expected
    item_id = tok.convert_tokens_to_ids(row["chosen"])
    n_prompt = len(tok(row["prompt"])["input_ids"])
    assert example["labels"] == [-100] * n_prompt + [item_id, tok.eos_token_id]


def test_loss_finite_and_decreasing_on_a_repeated_batch(trained):
    trainer, _ = trained
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    # LoRA on a random-init model moves slowly (the frozen tied embeddings bound the logits), but
    # on one repeated batch every step must lower the loss.
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.2, losses


def test_adapter_saved_and_reloaded_gives_identical_logits(trained, tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, out = trained
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and run["config"]["model"]["lora_r"] == 8
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny[1]), out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["This user has watched <item_3>. Answer:"], return_tensors="pt")
    trained_model = trainer.model.eval()
    with torch.no_grad():
        expected = trained_model(**batch).logits
        got = reloaded(**batch).logits
        base = AutoModelForCausalLM.from_pretrained(tiny[1])(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapter did change the model


def test_yaml_typo_fails_with_one_clear_line(tiny, tmp_path, capsys):
    data, model, _ = tiny
    config = _config(tmp_path / "typo.yaml", data, model, tmp_path / "out", lora_rank=8)
    with pytest.raises(SystemExit) as exit_info:
        _recipe().main(["--config", config])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "typo.yaml:" in err[0] and "unknown key 'lora_rank'" in err[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_item_token_data_with_a_title_tokenizer_fails_clearly(tiny, tmp_path, capsys):
    from napo.models.tiny import build_tiny_model

    data, _, _ = tiny
    no_items = tmp_path / "no_items"
    build_tiny_model(data, no_items, item_tokens=False, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2)
    capsys.readouterr()
    config = _config(tmp_path / "c.yaml", data, no_items, tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        _recipe().main(["--config", config])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "item_format 'token'" in err[-1] and "--item-tokens" in err[-1]

    config = _config(tmp_path / "d.yaml", tmp_path / "no_data", no_items, tmp_path / "out")
    with pytest.raises(SystemExit):
        _recipe().main(["--config", config])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_data: not a directory" in err[0]
    assert not (tmp_path / "out").exists()


def _one_sgd_step(tiny, out, compact):
    """One full fine-tuning step of RecSFTTrainer (SGD: the update is lr x gradient), with the
    compact head or TRL's own; returns (loss, entropy, token accuracy, parameters after the step)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from data_prep.prepared import load_prepared
    from napo.data import to_prompt_completion

    data, model_dir, _ = tiny
    losses = []
    Recording = _recording(losses)

    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=8, max_steps=1, learning_rate=0.5,
                     optim="sgd", lr_scheduler_type="constant", warmup_steps=0, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                     dataloader_pin_memory=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = Recording(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(model_dir),
                        train_dataset=to_prompt_completion(load_prepared(data)[0]["train"], 8))
    trainer.compact_head = compact
    trainer.train()
    log = next(h for h in trainer.state.log_history if "entropy" in h)
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return losses[0], log["entropy"], log["mean_token_accuracy"], params


def test_compact_head_gives_the_stock_loss_metrics_and_update(tiny, tmp_path):
    """RecSFTTrainer projects only the completion positions through the LM head (on a CPU, TRL
    projects all of them): one training step must give the same loss, logged metrics and
    parameter update as TRL's own path."""
    from transformers import AutoModelForCausalLM

    fast = _one_sgd_step(tiny, tmp_path / "fast", compact=True)
    stock = _one_sgd_step(tiny, tmp_path / "stock", compact=False)
    assert math.isfinite(stock[0]) and abs(fast[0] - stock[0]) <= 1e-6, (fast[0], stock[0])
    assert fast[1] == pytest.approx(stock[1], abs=1e-5) and fast[2] == pytest.approx(stock[2], abs=1e-9)
    initial = AutoModelForCausalLM.from_pretrained(tiny[1]).state_dict()
    moved = 0.0
    for name, value in stock[3].items():
        torch.testing.assert_close(fast[3][name], value, rtol=0, atol=1e-6, msg=name)
        moved = max(moved, (value - initial[name]).abs().max().item())
    assert moved > 1e-3  # the step did update the weights (so the comparison is not vacuous)


def test_item_softmax_is_the_cross_entropy_over_item_rows(tiny, tmp_path):
    """item_softmax: the loss is -log softmax over the item-token rows (brute force: a plain
    forward of prompt + item, its logits at the last prompt position); one SGD step leaves the
    LM-head row of EOS (in no prompt; the embeddings are tied) untouched, which the
    default next-token loss (it trains EOS) does not; with 2 accumulation steps the loss is the
    mean over the whole accumulated batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.prepared import load_prepared
    from napo.config import RecSFTConfig
    from napo.data import to_prompt_completion

    data, model_dir, _ = tiny
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = to_prompt_completion(load_prepared(data)[0]["train"], 8)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    item_ids = torch.tensor(sorted(i for t, i in tok.get_vocab().items() if t.startswith("<item_")))
    expected = []
    with torch.no_grad():
        for row in rows:
            ids = tok(row["prompt"] + row["completion"])["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -2].double()
            expected.append(-torch.log_softmax(logits[item_ids], 0)[(item_ids == ids[-1]).nonzero()[0, 0]].item())

    def one_step(item_softmax, accumulation=1):
        losses = []
        Recording = _recording(losses)

        args = RecSFTConfig(output_dir=str(tmp_path / f"{item_softmax}{accumulation}"), item_softmax=item_softmax,
                            per_device_train_batch_size=8 // accumulation, gradient_accumulation_steps=accumulation,
                            max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
                            warmup_steps=0, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                            logging_steps=1, disable_tqdm=True, seed=0, dataloader_pin_memory=False)
        trainer = Recording(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, processing_class=tok,
                            train_dataset=rows)
        trainer.train()
        return losses, trainer.model.get_output_embeddings().weight.detach().clone(), trainer

    losses, head, trainer = one_step(True)
    assert losses[0] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    initial = AutoModelForCausalLM.from_pretrained(model_dir).get_output_embeddings().weight
    torch.testing.assert_close(head[tok.eos_token_id], initial[tok.eos_token_id], rtol=0, atol=0)
    assert (head[item_ids] - initial[item_ids]).abs().max() > 1e-4
    assert "item_accuracy" in next(h for h in trainer.state.log_history if "loss" in h)
    _, stock_head, _ = one_step(False)
    assert (stock_head[tok.eos_token_id] - initial[tok.eos_token_id]).abs().max() > 1e-4
    accumulated, accumulated_head, _ = one_step(True, accumulation=2)
    assert sum(accumulated) == pytest.approx(sum(expected) / len(expected), abs=1e-5)  # halves of one mean
    torch.testing.assert_close(accumulated_head, head, rtol=0, atol=1e-5)

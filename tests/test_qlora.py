"""QLoRA on a CPU: SFT -> NAPO -> evaluate -> export with a 4-bit (bitsandbytes nf4) base.

bitsandbytes >= 0.45 runs 4-bit layers on the CPU; `make test` installs it (the `qlora` extra).
"""

import json
import math

import pytest
import torch
import yaml

pytest.importorskip("bitsandbytes", reason="bitsandbytes cannot be imported: install the qlora extra (pip install -e '.[qlora]')")

from safetensors.torch import load_file  # noqa: E402

from data_prep.prepared import load_prepared  # noqa: E402
from napo.auxiliary import write_aux  # noqa: E402
from napo.cards import read_card  # noqa: E402

COMMON = dict(per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, logging_steps=1, report_to="none",
              use_cpu=True, gradient_checkpointing=False, save_strategy="no", dataloader_pin_memory=False,
              eval_strategy="no", load_in_4bit=True)


def run(root, module, name, **settings):
    import importlib

    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(root / name), **COMMON, **settings}))
    return importlib.import_module(module).main(["--config", str(path)])


def linear4bit_count(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_item_tokens):
    """The session's tiny data with a tiny model of hidden size 64: bitsandbytes' CPU inference
    kernel packs weights in blocks of 64 input features (hidden 32 fails in evaluation)."""
    from napo.models.tiny import build_tiny_from_data

    data_dir, _ = tiny_item_tokens
    root = tmp_path_factory.mktemp("qlora")
    dataset, items, meta = load_prepared(data_dir)
    model_dir = root / "model"
    build_tiny_from_data(dataset, items, model_dir, hidden_size=64, num_layers=2, num_heads=2, vocab_size=300,
                         item_tokens=True, seed=0)
    gen = torch.Generator().manual_seed(0)
    for split in dataset:
        n = len(dataset[split])
        write_aux(root / "aux", split, torch.randn(n, 6, generator=gen), torch.randn(n, 8, generator=gen),
                  dataset_fingerprint=meta["fingerprint"], model="SASRec")
    sft = run(root, "napo.scripts.sft", "sft", dataset_dir=str(data_dir), model_name_or_path=str(model_dir),
              use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    napo = run(root, "napo.scripts.preference", "napo", dataset_dir=str(data_dir), sft_adapter=str(root / "sft"),
               loss_type="napo", aux_dir=str(root / "aux"))
    return root, data_dir, model_dir, sft, napo


def test_sft_and_napo_train_lora_on_a_4bit_base(runs):
    root, _, _, sft, napo = runs
    # 2 layers x (q, k, v, o, gate, up, down) quantized; LoRA sits on q and v
    assert linear4bit_count(sft.model) == 14 and linear4bit_count(napo.model) == 14
    sft_losses = [h["loss"] for h in sft.state.log_history if "loss" in h]
    napo_logs = [h for h in napo.state.log_history if "loss" in h]
    assert len(sft_losses) == 2 and all(math.isfinite(x) for x in sft_losses)
    assert len(napo_logs) == 2 and all(math.isfinite(h["loss"]) for h in napo_logs)
    assert all(h["napo/pool_size"] > 3 for h in napo_logs)  # 3 own negatives + shared ones
    trained, start = load_file(root / "napo" / "adapter_model.safetensors"), load_file(root / "sft" / "adapter_model.safetensors")
    assert trained.keys() == start.keys() and any(not torch.equal(trained[k], start[k]) for k in trained)
    for name in ("sft", "napo"):
        assert read_card(root / name)["quantization"].startswith("4-bit nf4 base (bitsandbytes, QLoRA)")


def test_evaluate_on_the_4bit_base_updates_the_card(runs):
    from napo.scripts.evaluate import main

    root, data_dir, model_dir, _, _ = runs
    out = root / "eval"
    assert main(["--model_name_or_path", str(model_dir), "--adapter", str(root / "napo"), "--load_in_4bit", "true",
                 "--dataset_dir", str(data_dir), "--split", "test", "--output_dir", str(out), "--no_progress",
                 "true"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 8 and metrics["num_candidates"] == 8
    rank = metrics["rank"]
    assert 0.0 <= rank["hr@1"] <= rank["hr@5"] <= 1.0 and rank["hr@10"] == 1.0  # 8 candidates: all in the top 10
    row = read_card(root / "napo")["evaluations"][-1]
    assert row["name"] == "eval" and row["metrics"]["mrr"] == rank["mrr"]


def test_export_of_a_4bit_trained_adapter_merges_into_the_full_precision_base(runs):
    from test_export import check_round_trip

    root, data_dir, _, _, _ = runs
    check_round_trip(root / "napo", root / "merged", data_dir)
    config = json.loads((root / "merged" / "config.json").read_text())
    assert "quantization_config" not in config  # a plain fp32 model
    record = read_card(root / "merged")
    assert record["quantization"] is None and record["merged"].endswith("(trained on a 4-bit nf4 base)")

import os
from pathlib import Path

import pytest

# Tests never reach the Hugging Face Hub: models and tokenizers are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference benchmark data beside the checkout; tests using it skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_item_tokens(tmp_path_factory):
    """(prepared data dir, tiny model dir): a synthetic item-token dataset (40 items, 16/8/8 rows,
    8 candidates) and a random-init Llama (hidden 32, 2 layers) whose tokenizer was trained on it.
    Built once per session; the trainer and recipe tests add what they need on top."""
    from data_prep.prepared import load_prepared
    from data_prep.synthetic import synthetic_prepared
    from napo.models.tiny import build_tiny_from_data

    root = tmp_path_factory.mktemp("tiny_item_tokens")
    data_dir = synthetic_prepared(root / "data", num_items=40, rows=(16, 8, 8), num_candidates=8,
                                  item_format="token", seed=0)
    dataset, items, _ = load_prepared(data_dir)
    build_tiny_from_data(dataset, items, root / "model", hidden_size=32, num_layers=2, num_heads=2,
                         vocab_size=300, item_tokens=True, seed=0)
    return data_dir, root / "model"


@pytest.fixture(scope="session")
def napo_inputs(tmp_path_factory, tiny_item_tokens):
    """{"root", "data", "model"}: tiny_item_tokens plus root/sft (an SFT LoRA adapter with dropout 0.1,
    so that the dropout RNG matters) and root/aux (random auxiliary outputs for every split)."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.prepared import load_prepared
    from napo.auxiliary import write_aux

    data_dir, model_dir = tiny_item_tokens
    root = tmp_path_factory.mktemp("napo_inputs")
    dataset, _, meta = load_prepared(data_dir)
    torch.manual_seed(0)
    sft = PeftModel(AutoModelForCausalLM.from_pretrained(model_dir),
                    LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                               task_type="CAUSAL_LM", init_lora_weights=False))
    sft.save_pretrained(root / "sft")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(root / "sft")
    gen = torch.Generator().manual_seed(0)
    for split in dataset:
        n = len(dataset[split])
        write_aux(root / "aux", split, torch.randn(n, 6, generator=gen), torch.randn(n, 8, generator=gen),
                  dataset_fingerprint=meta["fingerprint"], model="SASRec")
    return {"root": root, "data": data_dir, "model": model_dir}

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

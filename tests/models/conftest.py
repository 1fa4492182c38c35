import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def synthetic_dirs(tmp_path_factory):
    """Prepared synthetic datasets (title and item-token formats) in the contract layout."""
    from data_prep.synthetic import synthetic_prepared

    root = tmp_path_factory.mktemp("synthetic")
    return {
        "title": synthetic_prepared(root / "titles", item_format="title"),
        "token": synthetic_prepared(root / "tokens", item_format="token"),
    }


@pytest.fixture(scope="session")
def tiny_token_model(synthetic_dirs, tmp_path_factory):
    """A tiny Llama with item tokens, built from the item-token synthetic dataset."""
    from napo.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_model(synthetic_dirs["token"], out, item_tokens=True, vocab_size=400,
                     hidden_size=32, num_layers=2, num_heads=2)
    return out

"""Shared inputs of the hybrid item-embedding tests: aux item vectors for the session's tiny data."""

import pytest


@pytest.fixture(scope="session")
def hybrid_inputs(tmp_path_factory, tiny_item_tokens):
    """{"data", "model", "aux"}: tiny_item_tokens plus an aux directory whose items.safetensors holds
    random item vectors [40, 6] and whose splits hold random user vectors / candidate scores."""
    import torch

    from data_prep.prepared import load_prepared
    from napo.auxiliary import write_aux, write_item_vectors

    data_dir, model_dir = tiny_item_tokens
    root = tmp_path_factory.mktemp("hybrid_inputs")
    dataset, _, meta = load_prepared(data_dir)
    gen = torch.Generator().manual_seed(1)
    for split in dataset:
        n = len(dataset[split])
        write_aux(root / "aux", split, torch.randn(n, 6, generator=gen), torch.randn(n, 8, generator=gen),
                  dataset_fingerprint=meta["fingerprint"], model="SASRec")
    write_item_vectors(root / "aux", torch.randn(40, 6, generator=gen))
    return {"data": data_dir, "model": model_dir, "aux": root / "aux", "root": root}


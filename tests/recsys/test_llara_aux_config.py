"""The LLaRA-style auxiliary SASRec configs match the NAPO reference's auxiliary model
(napo-reference.md 2.4.2: BCE, hidden 64, 1 block, 1 head, window 10, dropout 0.1) and train by
epochs with early stopping, never by a clock."""

from pathlib import Path

import pytest
import yaml

from napo.recsys.train import RecConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dataset", ["lastfm", "ml-100k"])
def test_llara_aux_config_is_the_references_sasrec(dataset):
    config = RecConfig(**yaml.safe_load((ROOT / f"recipes/configs/{dataset}/sasrec-llara.yaml").read_text()))
    assert (config.model, config.loss, config.sampler, config.num_negatives) == ("SASRec", "bce", "random", 1)
    assert (config.hidden, config.num_blocks, config.num_heads, config.max_len, config.dropout) == (64, 1, 1, 10, 0.1)
    assert config.max_minutes == 0 and config.patience > 0 and config.max_epochs >= 50

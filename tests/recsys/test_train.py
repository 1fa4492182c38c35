from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napo.eval.metrics import ranking_metrics
from napo.recsys.data import load_dataset_dir
from napo.recsys.train import (
    RecConfig,
    fit,
    infer,
    load_checkpoint,
    make_model,
    make_optimizer,
    resolve_device,
    save_checkpoint,
    split_metrics,
)
from napo.utils import set_seed

TINY = dict(hidden=16, num_blocks=1, dropout=0.0, lr=0.01, batch_size=64, max_epochs=12,
            patience=4, select_metric="hr@1", threads=1)


@pytest.mark.parametrize("overrides", [
    dict(model="SASRec", loss="ce"),
    dict(model="SASRec", loss="sampled_softmax", sampler="mixed", num_negatives=8, logq=True),
    dict(model="GRU4Rec", loss="bce", sampler="random", num_negatives=4, all_positions=True),
    dict(model="Caser", loss="sampled_softmax", sampler="adaptive", num_negatives=4),
], ids=lambda o: f"{o['model']}-{o['loss']}")
def test_learns_the_cycle(cycle_dataset, overrides):
    cfg = RecConfig.from_dict({**TINY, **overrides})
    set_seed(0)
    splits, num_items, counts, _ = load_dataset_dir(cycle_dataset, cfg.max_len)
    model = make_model(cfg, num_items, counts)
    result = fit(model, cfg, splits["train"], splits["valid"], counts, progress=False)
    out = infer(model, splits["test"])
    metrics = split_metrics(splits["test"], out, counts)
    # chance is 0.1 (10 candidates); the rule is deterministic
    assert metrics["hr@1"] >= 0.9, (metrics["hr@1"], result.history)
    assert metrics["full/hr@1"] >= 0.5  # chance 1/40
    # the candidate metrics agree with ranking_metrics on the raw scores
    assert metrics["mrr"] == pytest.approx(
        ranking_metrics(out.candidate_scores, splits["test"].target_index)["mrr"])
    # the returned model is the best-on-valid state
    assert result.best_valid == max(h["valid"] for h in result.history if "valid" in h)


def test_popularity_needs_no_training(cycle_dataset):
    cfg = RecConfig.from_dict({"model": "Pop"})
    splits, num_items, counts, _ = load_dataset_dir(cycle_dataset, cfg.max_len)
    model = make_model(cfg, num_items, counts)
    result = fit(model, cfg, splits["train"], splits["valid"], counts, progress=False)
    assert result.epochs_run == 0
    out = infer(model, splits["test"])
    best = np.asarray(counts)[splits["test"].candidates].argmax(axis=1)
    top = out.candidate_scores.argmax(axis=1)
    np.testing.assert_array_equal(top, best)


def test_checkpoint_round_trip(tmp_path, cycle_dataset):
    cfg = RecConfig.from_dict({**TINY, "max_epochs": 1})
    splits, num_items, counts, _ = load_dataset_dir(cycle_dataset, cfg.max_len)
    model = make_model(cfg, num_items, counts).eval()
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    loaded, cfg2 = load_checkpoint(tmp_path / "ckpt")
    assert cfg2 == cfg
    seq = torch.from_numpy(splits["test"].seq[:7])
    with torch.no_grad():
        torch.testing.assert_close(loaded(seq), model(seq))


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown config key"):
        RecConfig.from_dict({"hiden": 3})
    with pytest.raises(ValueError, match="unknown loss"):
        RecConfig.from_dict({"loss": "bpr"})


SEQ_CONFIGS = sorted(p for pattern in ("sasrec*.yaml", "gru4rec*.yaml", "caser*.yaml")
                     for p in (Path(__file__).parents[2] / "recipes" / "configs").glob(f"*/{pattern}"))


@pytest.mark.parametrize("path", SEQ_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sequential_configs_load_and_build(path):
    cfg = RecConfig.from_dict(yaml.safe_load(path.read_text()))
    assert cfg.model == {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser"}[path.stem.split("-")[0]]
    model = make_model(cfg, 50)
    # a full-ranking config must select on the full protocol (Amazon: no candidate lists)
    if path.parent.name in ("beauty", "sports"):
        assert cfg.select_protocol == "full" and cfg.all_positions and model.supports_all_positions
    assert model(torch.zeros(2, cfg.max_len, dtype=torch.long)).shape == (2, 50)


def test_optimizer_is_fused_adam_with_the_per_tensor_update():
    cfg = RecConfig(lr=0.01, weight_decay=0.001)
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(30, 7)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    start = [p.detach().clone() for p in a]
    fused, plain = make_optimizer(a, cfg), torch.optim.Adam(b, lr=0.01, weight_decay=0.001, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(20):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q, p0 in zip(a, b, start, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert (p - p0).abs().max() > 0.05  # 20 steps of lr 0.01 moved them


def test_device_setting(cycle_dataset):
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        RecConfig(device="tpu")
    with pytest.raises(ValueError, match="samplers of loss bce run on the CPU"):
        RecConfig(model="SASRec", loss="bce", device="cuda")
    RecConfig(model="PreferDiff", device="cuda")  # its own loss: no sampler
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the no-device error cannot show here")
    cfg = RecConfig.from_dict({**TINY, "model": "SASRec", "max_epochs": 1, "device": "cuda"})
    splits, num_items, counts, _ = load_dataset_dir(cycle_dataset, cfg.max_len)
    with pytest.raises(ValueError, match="device cuda: no CUDA device is visible here"):
        fit(make_model(cfg, num_items, counts), cfg, splits["train"], splits["valid"], counts, progress=False)

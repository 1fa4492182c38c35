"""The recommender recipe twice with the same config and seed: identical metrics, history, aux outputs."""

import importlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TIMES = ("train/fit_seconds", "train/total_seconds")


def test_same_seed_same_metrics(cycle_dataset, tmp_path):
    recipe = importlib.import_module("napo.scripts.recsys")
    args = ["--config", str(ROOT / "recipes/configs/lastfm/sasrec-tiny.yaml"), "--dataset_dir", str(cycle_dataset),
            "--loss", "bce", "--sampler", "popularity", "--num_negatives", "2", "--dropout", "0.3",
            "--max_epochs", "3", "--quiet"]
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(7 * len(runs))  # a different global RNG state before each run
        assert recipe.main([*args, "--output_dir", str(tmp_path / name)]) == 0
        out = tmp_path / name
        metrics = {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k not in TIMES}
        history = json.loads((out / "run.json").read_text())["config"]["history"]
        runs.append((metrics, history, load_file(out / "aux" / "test.safetensors")))
    (ma, ha, xa), (mb, hb, xb) = runs
    assert ma == mb and ha == hb and len(ha) >= 2 and 0.0 < ma["hr@10"] <= 1.0
    assert all(torch.equal(xa[k], xb[k]) for k in xa)

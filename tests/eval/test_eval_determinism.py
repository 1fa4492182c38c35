"""The evaluation recipe twice on the same model and data: identical metrics and predictions."""

import importlib
import json


def test_evaluate_twice_gives_identical_outputs(trained_model_dir, tiny_dataset_dir, tmp_path):
    recipe = importlib.import_module("napo.scripts.evaluate")
    args = ["--model_name_or_path", str(trained_model_dir), "--dataset_dir", str(tiny_dataset_dir),
            "--mode", "both", "--batch_size", "4", "--no_progress"]
    for name in ("a", "b"):
        assert recipe.main([*args, "--output_dir", str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["rank"] == b["rank"] and a["generate"] == b["generate"] and 0.0 <= a["rank"]["hr@1"] <= 1.0
    assert (tmp_path / "a" / "predictions.jsonl").read_text() == (tmp_path / "b" / "predictions.jsonl").read_text()

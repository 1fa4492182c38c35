"""scripts/sweep.py: a grid of recipe runs, ranked on valid, resumable; test is refused."""

import json

import pytest
import yaml
from helpers import load_script


def sweep_module():
    return load_script("scripts/sweep.py")


def test_grid_parsing_and_names():
    sweep = sweep_module()
    grid = sweep.parse_grid(["learning_rate=1e-4,5e-4", "beta=1.0"])
    assert grid == {"learning_rate": ["1e-4", "5e-4"], "beta": ["1.0"]}
    assert sweep.point_name({"learning_rate": "1e-4", "beta": "1.0"}) == "learning_rate=1e-4,beta=1.0"
    for bad in (["learning_rate"], ["=1"], ["beta="], ["beta=1", "beta=2"]):
        with pytest.raises(SystemExit, match="error: --grid"):
            sweep.parse_grid(bad)


def test_the_test_split_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_module().main(["--config", "c.yaml", "--dataset_dir", "d", "--output_dir", str(tmp_path / "o"),
                             "--split", "test"])
    assert exit_info.value.code == 2
    assert "must not look at the test split" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # ~40 s: 2 short S-DPO runs and their valid evaluations, each a subprocess
def test_sweep_trains_ranks_on_valid_and_resumes(tmp_path, tiny_item_tokens):
    data_dir, model_dir = tiny_item_tokens
    config = tmp_path / "sdpo.yaml"
    config.write_text(yaml.safe_dump(dict(
        model_name_or_path=str(model_dir), use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
        lora_target_modules=["q_proj", "v_proj"], loss_type="sdpo", num_negatives=3, reference="adapter",
        per_device_train_batch_size=4, max_steps=2, logging_steps=1, report_to="none", use_cpu=True,
        gradient_checkpointing=False, save_strategy="no", dataloader_pin_memory=False)))
    out = tmp_path / "sweep"
    argv = ["--config", str(config), "--dataset_dir", str(data_dir), "--output_dir", str(out),
            "--grid", "learning_rate=1e-4,3e-2", "--eval_examples", "8", "--eval_batch_size", "4"]
    assert sweep_module().main(argv) == 0

    result = json.loads((out / "sweep.json").read_text())
    assert result["split"] == "valid" and result["metric"] == "hr@1"
    assert {r["point"] for r in result["rows"]} == {"learning_rate=1e-4", "learning_rate=3e-2"}
    for row in result["rows"]:  # each row is that run's own valid evaluation
        run_dir = out / row["point"]
        metrics = json.loads((run_dir / "eval-valid" / "metrics.json").read_text())
        assert metrics["split"] == "valid" and metrics["num_examples"] == 8
        assert row["hr@1"] == metrics["rank"]["hr@1"]
        trained = json.loads((run_dir / "run.json").read_text())["config"]["training"]
        assert trained["learning_rate"] == float(row["settings"]["learning_rate"])
    assert [r["hr@1"] for r in result["rows"]] == sorted((r["hr@1"] for r in result["rows"]), reverse=True)
    table = (out / "sweep.md").read_text()
    assert table.index(result["rows"][0]["point"]) < table.index(result["rows"][1]["point"])

    # A second call finds every point done: nothing is retrained or re-evaluated.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".safetensors", ".json")
              and "sweep" not in p.name}
    assert sweep_module().main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

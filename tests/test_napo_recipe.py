"""recipes/napo.py end to end on a synthetic prepared dataset, a tiny model and a fake SFT adapter."""

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from data_prep.prepared import load_prepared
from napo.auxiliary import write_aux

REPO = Path(__file__).resolve().parents[1]


def recipe_main(argv):
    """Run recipes/napo.py's main in this process (the file name would shadow the package)."""
    return importlib.import_module("napo.scripts.preference").main(argv)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_item_tokens):
    """Prepared data, tiny model, an SFT adapter on it and auxiliary outputs for every split."""
    data_dir, model_dir = tiny_item_tokens
    root = tmp_path_factory.mktemp("napo_recipe")
    (root / "data").symlink_to(data_dir, target_is_directory=True)
    (root / "model").symlink_to(model_dir, target_is_directory=True)
    dataset, _, meta = load_prepared(data_dir)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    sft = PeftModel(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                     task_type="CAUSAL_LM", init_lora_weights=False))
    sft.save_pretrained(root / "sft")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(root / "sft")
    gen = torch.Generator().manual_seed(0)
    for split in dataset:
        n = len(dataset[split])
        write_aux(root / "aux", split, torch.randn(n, 6, generator=gen), torch.randn(n, 8, generator=gen),
                  dataset_fingerprint=meta["fingerprint"], model="SASRec")
    return root


def write_config(root, name, **settings):
    config = dict(
        dataset_dir=str(root / "data"), sft_adapter=str(root / "sft"), output_dir=str(root / name),
        per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=3, learning_rate=1e-2,
        logging_steps=1, report_to="none", use_cpu=True, gradient_checkpointing=False, save_strategy="no",
        dataloader_pin_memory=False, eval_strategy="steps", eval_steps=3, max_eval_samples=8,
    )
    config.update(settings)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("loss_type", ["sdpo", "napo"])
def test_recipe_trains_from_the_sft_adapter(setup, loss_type):
    extra = {"aux_dir": str(setup / "aux")} if loss_type == "napo" else {}
    config = write_config(setup, loss_type, loss_type=loss_type, **extra)
    trainer = recipe_main(["--config", str(config)])
    assert trainer.state.global_step == 3
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(trainer.state.log_history[-2]["eval_loss"])
    out = setup / loss_type
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "ref" / "adapter_model.safetensors").is_file()  # the frozen SFT copy (reference)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["training"]["loss_type"] == loss_type
    assert run["config"]["adapter"]["sft_adapter"] == str(setup / "sft")
    # the saved adapter is the SFT adapter trained further: it differs from the SFT one
    from safetensors.torch import load_file

    trained, start = load_file(out / "adapter_model.safetensors"), load_file(setup / "sft" / "adapter_model.safetensors")
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in trained)
    # the frozen reference copy is the SFT adapter, unchanged
    ref = load_file(out / "ref" / "adapter_model.safetensors")
    assert all(torch.equal(ref[k], start[k]) for k in start)


def test_sdpo_starts_at_log_one_plus_k(setup):
    """Policy == reference at step 0 (both are the SFT adapter): the first S-DPO loss is log(1 + K)."""
    config = write_config(setup, "sdpo_k2", loss_type="sdpo", num_negatives=2, max_steps=1, eval_strategy="no")
    trainer = recipe_main(["--config", str(config)])
    first = next(h for h in trainer.state.log_history if "loss" in h)
    assert first["loss"] == pytest.approx(math.log(3), abs=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_full_sft_model_gets_a_fresh_lora_whose_disabled_policy_is_the_reference(setup):
    """A fully fine-tuned SFT output: fresh LoRA on top, reference = adapter off = the SFT model."""
    full = setup / "sft_full"
    if not full.exists():
        AutoModelForCausalLM.from_pretrained(setup / "model").save_pretrained(full)
        AutoTokenizer.from_pretrained(setup / "model").save_pretrained(full)
    config = write_config(setup, "from_full", sft_adapter=str(full), loss_type="sdpo", num_negatives=2,
                          max_steps=2, eval_strategy="no", use_peft=True, lora_r=4, lora_alpha=8,
                          lora_target_modules=["q_proj", "v_proj"])
    trainer = recipe_main(["--config", str(config)])
    assert set(trainer.model.peft_config) == {"default"}  # no "ref" copy: the base is the SFT model
    first = next(h for h in trainer.state.log_history if "loss" in h)
    assert first["loss"] == pytest.approx(math.log(3), abs=1e-5)  # zero-init LoRA: policy == SFT
    out = setup / "from_full"
    assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(full)


def test_missing_inputs_fail_with_one_clear_line(setup, capsys):
    config = write_config(setup, "nodata", loss_type="sdpo", dataset_dir=str(setup / "nope"))
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]


def run_cli(args, **env_extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


def test_yaml_typo_fails_with_one_clear_line(setup, capsys):
    config = write_config(setup, "typo", loss_type="sdpo")
    config.write_text(config.read_text() + "lerning_rate: 0.001\n")
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    line = len(config.read_text().splitlines())
    assert err[0].startswith(f"error: {config}:{line}:1: unknown key 'lerning_rate'")
    assert "did you mean 'learning_rate'?" in err[0]
    assert not (setup / "typo").exists()  # no partial output


def test_invalid_setting_fails_with_one_clear_line(setup, capsys):
    config = write_config(setup, "noaux", loss_type="napo")  # sharing + margin but no aux_dir
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set aux_dir" in err[0]


@pytest.mark.slow
def test_accelerate_launch_of_the_tiny_config(setup):
    """The shipped napo-tiny.yaml, pointed at the synthetic inputs, runs under accelerate launch."""
    out = setup / "launched"
    proc = run_cli([
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--mixed_precision", "no",
        "--num_machines", "1", "--dynamo_backend", "no",
        "recipes/napo.py", "--config", "recipes/configs/ml-100k/napo-tiny.yaml",
        "--dataset_dir", str(setup / "data"), "--sft_adapter", str(setup / "sft"), "--aux_dir", str(setup / "aux"),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--eval_steps", "2", "--logging_steps", "1",
    ], ACCELERATE_USE_CPU="true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "run.json").is_file()
    losses = [float(x.split("'loss': '")[1].split("'")[0]) for x in proc.stdout.splitlines() if "'loss': '" in x]
    assert losses and all(math.isfinite(x) for x in losses)

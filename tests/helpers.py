"""Test helpers shared across test folders (on sys.path through pyproject's pytest `pythonpath`).

load_script: a script of the checkout (recipes/*.py, scripts/*.py) as a module, to call its main()
in the test process. Scripts are files, not package modules (recipes/napo.py would even shadow the
napo package if recipes/ were on sys.path), so they are loaded by path under a private name.

run_launch: a multi-process `accelerate launch`, retried once on a known teardown abort.

napo_config / sft_config: tiny NAPO (sharing + dynamic margin) and SFT run settings over the
`napo_inputs` fixture (tests/conftest.py), for the resume and determinism tests.
"""

import importlib.util
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location("script_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What a worker prints when it aborts in torch/gloo teardown at interpreter exit (a std::thread
# still joinable), after all its work is done and its outputs are written. Rare (about 1 launch in
# 30 here, under load) and not from this project's code; the launch is retried once on exactly this.
TEARDOWN_ABORT = "terminate called without an active exception"


def run_launch(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run of a multi-process `accelerate launch`, retried once on TEARDOWN_ABORT only."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0 and TEARDOWN_ABORT in proc.stderr:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return proc


# Log-history keys that measure time, not training (dropped before comparing two runs).
TIMING = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")


def napo_config(inputs, out):
    """Sharing + dynamic margin (loss_type napo), negatives resampled each epoch (16 rows / 4 = 4
    steps per epoch, 6 steps cross an epoch), a checkpoint every 2 steps."""
    return dict(
        dataset_dir=str(inputs["data"]), sft_adapter=str(inputs["root"] / "sft"), aux_dir=str(inputs["root"] / "aux"),
        output_dir=str(out), loss_type="napo", negative_sampling="resample", per_device_train_batch_size=4,
        max_steps=6, learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True,
        gradient_checkpointing=False, save_strategy="steps", save_steps=2, eval_strategy="no",
        dataloader_pin_memory=False, disable_tqdm=True, seed=3,
    )


def sft_config(inputs, out):
    return dict(
        dataset_dir=str(inputs["data"]), model_name_or_path=str(inputs["model"]), output_dir=str(out),
        per_device_train_batch_size=4, max_steps=6, learning_rate=3e-3, use_peft=True, lora_r=4,
        lora_alpha=8, lora_dropout=0.1, lora_target_modules=["q_proj", "v_proj"], logging_steps=1,
        save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, bf16=False,
        activation_checkpointing=False, disable_tqdm=True, seed=3, dataloader_pin_memory=False,
    )

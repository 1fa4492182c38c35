"""Resume after a kill: a SIGKILLed tiny run resumed with --resume_from_checkpoint ends with the
same weights, log history and margin state as an uninterrupted run (NAPO with sharing + dynamic
margin, SFT); a kill during a save leaves the previous checkpoint, which `true` picks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import TIMING, napo_config, sft_config
from safetensors.torch import load_file

from napo.checkpoints import COMPLETE_MARKER, is_complete, resolve_resume

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "resume_driver.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(napo_inputs):
    return napo_inputs


RECIPES = {"napo.scripts.preference": napo_config, "napo.scripts.sft": sft_config}


def command(module, config_path, *extra):
    return [sys.executable, str(DRIVER), module, "--config", str(config_path), *extra]


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **{k: str(v) for k, v in extra.items()}}


def write(path, config):
    path.write_text(yaml.safe_dump(config))
    return path


def run(cmd, **extra):
    proc = subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_when(cmd, ready, **extra):
    """Start cmd, SIGKILL it as soon as ready() holds; the run must not have finished by then."""
    proc = subprocess.Popen(cmd, env=env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "timed out waiting for the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def final_state(out):
    """(adapter tensors, log history without timings, margin state or None) of a finished run."""
    weights = load_file(out / "adapter_model.safetensors")
    last = out / "checkpoint-6"
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    history = [{k: v for k, v in h.items() if k not in TIMING} for h in history]
    margin = last / "napo_margin.json"
    return weights, history, json.loads(margin.read_text()) if margin.is_file() else None


def assert_same_run(a, b):
    wa, ha, ma = final_state(a)
    wb, hb, mb = final_state(b)
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= 1e-6, diff
    assert len(ha) == len(hb) and ha == hb
    assert ma == mb


@pytest.fixture(scope="module")
def references(inputs):
    """The uninterrupted run of each recipe (one per module)."""
    outs = {}
    for module, make in RECIPES.items():
        out = inputs["root"] / f"ref-{module.rsplit('.', 1)[1]}"
        run(command(module, write(inputs["root"] / f"{out.name}.yaml", make(inputs, out))))
        outs[module] = out
    return outs


@pytest.mark.parametrize("module", list(RECIPES))
def test_killed_after_a_checkpoint_resumes_to_the_same_run(inputs, references, module):
    out = inputs["root"] / f"killed-{module.rsplit('.', 1)[1]}"
    config = write(inputs["root"] / f"{out.name}.yaml", RECIPES[module](inputs, out))
    # slowed steps: the kill lands while step 3 runs, after checkpoint-2 is complete
    kill_when(command(module, config), lambda: is_complete(out / "checkpoint-2"), NAPO_TEST_SLOW=0.5)
    assert not (out / "checkpoint-6").exists() and not (out / "adapter_model.safetensors").exists()
    run(command(module, config, "--resume_from_checkpoint", "true"))
    assert_same_run(references[module], out)
    ref_history = final_state(references[module])[1]
    assert [h["loss"] for h in ref_history if "loss" in h]  # real losses were compared
    if module.endswith("preference"):
        margin = final_state(out)[2]
        assert margin["steps"] == 6 and margin["ema"] != 0.0


def test_killed_during_a_save_resumes_from_the_previous_checkpoint(inputs, references):
    module = "napo.scripts.preference"
    out, flag = inputs["root"] / "killed-in-save", inputs["root"] / "in-save.flag"
    config = write(inputs["root"] / f"{out.name}.yaml", napo_config(inputs, out))
    kill_when(command(module, config), flag.exists, NAPO_TEST_HANG_SAVE=4, NAPO_TEST_FLAG=flag)
    half = out / "checkpoint-4"
    assert (half / "adapter_model.safetensors").is_file()  # the save had begun ...
    assert not (half / "trainer_state.json").exists() and not (half / COMPLETE_MARKER).exists()  # ... not ended
    assert resolve_resume(out, "true") == str(out / "checkpoint-2")
    proc = subprocess.run(command(module, config, "--resume_from_checkpoint", str(half)), env=env(),
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("error: --resume_from_checkpoint")
    assert "incomplete checkpoint" in err[-1] and "checkpoint-2" in err[-1]
    run(command(module, config, "--resume_from_checkpoint", "true"))
    assert is_complete(half)  # rewritten whole by the resumed run
    assert_same_run(references[module], out)

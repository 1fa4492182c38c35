"""The recommender loop resumes a SIGKILLed run exactly; checkpoints are atomic; NaN guard."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from napo.nonfinite import NonFiniteError
from napo.recsys import state as train_state
from napo.recsys.data import load_dataset_dir
from napo.recsys.train import RecConfig, fit, make_model

ROOT = Path(__file__).resolve().parents[2]
TIMES = ("train/fit_seconds", "train/total_seconds")
# bce with sampled negatives (sampler RNG) and dropout (global RNG); patience never reached
ARGS = ["--config", str(ROOT / "recipes/configs/lastfm/sasrec-tiny.yaml"), "--loss", "bce",
        "--num_negatives", "2", "--dropout", "0.3", "--max_epochs", "5", "--patience", "9",
        "--batch_size", "64", "--save_every", "1", "--quiet"]


def run_recsys(data, out, *extra, slow=0.0, popen=False):
    cmd = [sys.executable, str(ROOT / "tests" / "resume_driver.py"), "napo.scripts.recsys", *ARGS,
           "--dataset_dir", str(data), "--output_dir", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "NAPO_TEST_SLOW": str(slow)}
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def outcome(out):
    metrics = {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k not in TIMES}
    history = json.loads((out / "run.json").read_text())["config"]["history"]
    return metrics, history, load_file(out / "checkpoint" / "model.safetensors")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_model_and_metrics(cycle_dataset, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_recsys(cycle_dataset, ref)
    proc = run_recsys(cycle_dataset, killed, slow=1.0, popen=True)
    deadline = time.time() + 240
    while train_state.last_checkpoint(killed / "checkpoints") is None:  # epoch-1 written: kill in epoch 2
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert not (killed / "metrics.json").exists()
    run_recsys(cycle_dataset, killed, "--resume_from_checkpoint", "true")
    (m_ref, h_ref, w_ref), (m_got, h_got, w_got) = outcome(ref), outcome(killed)
    assert len(h_ref) == 5 and h_got == h_ref  # per-epoch losses and valid scores, exactly
    assert m_got == m_ref and 0.0 < m_ref["hr@10"] <= 1.0
    assert max((w_ref[k] - w_got[k]).abs().max().item() for k in w_ref) <= 1e-6
    assert [p.name for _, p in train_state.checkpoints(killed / "checkpoints")] == ["epoch-4", "epoch-5"]  # keep 2


@pytest.fixture(scope="module")
def small(cycle_dataset):
    splits, num_items, counts, _ = load_dataset_dir(cycle_dataset, 10)
    cfg = RecConfig(model="SASRec", hidden=8, num_blocks=1, dropout=0.2, loss="bce", max_epochs=3,
                    patience=9, batch_size=64, threads=1, seed=0)
    return splits, num_items, counts, cfg


def test_resume_in_process_matches_and_a_half_written_save_is_ignored(small, tmp_path):
    splits, num_items, counts, cfg = small
    torch.manual_seed(0)
    full = make_model(cfg, num_items, counts)
    res_full = fit(full, cfg, splits["train"], splits["valid"], counts, progress=False)
    torch.manual_seed(0)
    part = make_model(cfg, num_items, counts)
    fit(part, RecConfig(**{**cfg.__dict__, "max_epochs": 1}), splits["train"], splits["valid"], counts,
        progress=False, checkpoint_dir=tmp_path, save_every=1)
    (tmp_path / ".epoch-2.tmp").mkdir()  # a save killed half-way: never renamed into place
    (tmp_path / ".epoch-2.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    assert train_state.resolve(tmp_path, "true") == tmp_path / "epoch-1"
    torch.manual_seed(123)  # the checkpoint restores the RNGs, whatever the state here
    resumed = make_model(cfg, num_items, counts)
    res = fit(resumed, cfg, splits["train"], splits["valid"], counts, progress=False,
              resume_from=train_state.resolve(tmp_path, "true"))
    assert res.history == res_full.history and res.best_epoch == res_full.best_epoch
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def poison_second_batch(monkeypatch):
    """The loss of the 2nd batch of the run becomes NaN (through the graph: its gradients too)."""
    from napo.recsys import train

    calls, batch_loss = [], train._batch_loss

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = batch_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train, "_batch_loss", poisoned)


def test_nonfinite_loss_stops_with_one_line_naming_the_last_checkpoint(small, tmp_path, monkeypatch):
    splits, num_items, counts, cfg = small
    torch.manual_seed(0)
    model = make_model(cfg, num_items, counts)
    fit(model, RecConfig(**{**cfg.__dict__, "max_epochs": 1}), splits["train"], splits["valid"], counts,
        progress=False, checkpoint_dir=tmp_path, save_every=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    poison_second_batch(monkeypatch)
    with pytest.raises(NonFiniteError) as err:
        fit(model, cfg, splits["train"], splits["valid"], counts, progress=False, checkpoint_dir=tmp_path)
    line = str(err.value)
    assert "\n" not in line and "non-finite loss at epoch 1 batch 2" in line
    assert f"last good checkpoint: {tmp_path / 'epoch-1'}" in line
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())  # never trained on NaN
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # batch 1 did train


def test_nonfinite_skip_drops_the_batch_and_trains_on(small, monkeypatch):
    splits, num_items, counts, cfg = small
    poison_second_batch(monkeypatch)
    torch.manual_seed(0)
    model = make_model(cfg, num_items, counts)
    res = fit(model, cfg, splits["train"], splits["valid"], counts, progress=False, nonfinite="skip")
    assert [r.get("skipped", 0) for r in res.history] == [1, 0, 0]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["valid"]) for r in res.history)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())

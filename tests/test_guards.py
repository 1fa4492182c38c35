"""Non-finite guard of the LLM trainers and checkpoint resolution (napo/guards.py, napo/checkpoints.py)."""

import json
import math

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from data_prep.prepared import load_prepared
from napo.checkpoints import (
    COMPLETE_MARKER,
    CheckpointError,
    is_complete,
    mark_complete,
    resolve_resume,
)
from napo.collator import add_aux_columns
from napo.config import NAPOConfig
from napo.guards import attach_guards
from napo.trainer import NAPOTrainer

# ----------------------------------------------------------------------------- resolving a resume


def test_resolve_resume_picks_the_newest_complete_checkpoint(tmp_path):
    assert resolve_resume(tmp_path, None) is None and resolve_resume(tmp_path, "false") is None
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        resolve_resume(tmp_path, "true")
    for step in (2, 4, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    mark_complete(tmp_path / "checkpoint-2", 2, {"_total_train_tokens": 7})
    mark_complete(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"half")  # killed during its save
    assert resolve_resume(tmp_path, "true") == str(tmp_path / "checkpoint-4")  # 10 > 4 numerically, skipped
    assert resolve_resume(tmp_path, True) == str(tmp_path / "checkpoint-4")
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoint-2")) == str(tmp_path / "checkpoint-2")
    with pytest.raises(CheckpointError) as err:
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-10"))
    assert "incomplete checkpoint" in str(err.value) and "checkpoint-4" in str(err.value)
    with pytest.raises(CheckpointError, match="not a directory"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-99"))
    (tmp_path / "checkpoint-4" / COMPLETE_MARKER).write_text("{trunc")  # a torn marker is no marker
    assert not is_complete(tmp_path / "checkpoint-4")
    assert resolve_resume(tmp_path, "last") == str(tmp_path / "checkpoint-2")


# ----------------------------------------------------------------------------- the guard


@pytest.fixture(scope="module")
def tiny(tiny_item_tokens):
    data_dir, model_dir = tiny_item_tokens
    dataset, _, _ = load_prepared(data_dir)
    n = len(dataset["train"])
    gen = torch.Generator().manual_seed(0)
    train = add_aux_columns(dataset["train"], torch.randn(n, 6, generator=gen), torch.randn(n, 8, generator=gen))
    return model_dir, train


def napo_trainer(tmp_path, tiny, **overrides):
    model_dir, train = tiny
    args = NAPOConfig(output_dir=str(tmp_path / "out"), loss_type="napo", aux_dir="joined", per_device_train_batch_size=4,
                      max_steps=3, learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True, seed=0,
                      gradient_checkpointing=False, save_strategy="steps", save_steps=1, dataloader_pin_memory=False,
                      disable_tqdm=True, **overrides)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return NAPOTrainer(model, args=args, train_dataset=train, processing_class=AutoTokenizer.from_pretrained(model_dir),
                       peft_config=lora)


class Snapshots(TrainerCallback):
    """Trainable parameters before and after every optimizer step; NaN gradients at `poison_step`."""

    def __init__(self, trainer, poison_step=None):
        self.trainer, self.poison_step, self.before, self.after = trainer, poison_step, {}, {}

    def params(self):
        return {n: p.detach().clone() for n, p in self.trainer.model.named_parameters() if p.requires_grad}

    def on_step_begin(self, args, state, control, **kwargs):
        self.before[state.global_step + 1] = self.params()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.poison_step:
            next(p for p in self.trainer.model.parameters() if p.grad is not None).grad[0] = float("nan")

    def on_step_end(self, args, state, control, **kwargs):
        self.after[state.global_step] = self.params()


def poison_loss_at_call(trainer, call):
    """compute_loss returns NaN (through the graph) at its `call`-th invocation."""
    calls, compute = [], trainer.compute_loss

    def compute_loss(*args, **kwargs):
        calls.append(1)
        loss = compute(*args, **kwargs)
        return loss * float("nan") if len(calls) == call else loss

    trainer.compute_loss = compute_loss


def test_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, tiny):
    from napo.nonfinite import NonFiniteError

    trainer = napo_trainer(tmp_path, tiny)
    snaps = Snapshots(trainer)
    trainer.add_callback(snaps)
    attach_guards(trainer, "stop")
    poison_loss_at_call(trainer, 2)
    with pytest.raises(NonFiniteError) as err:
        trainer.train()
    line = str(err.value)
    out = tmp_path / "out"
    assert "\n" not in line and line.startswith("non-finite loss at step 2 (epoch 0.25)")
    assert f"last good checkpoint: {out / 'checkpoint-1'}" in line
    assert is_complete(out / "checkpoint-1") and not (out / "checkpoint-2").exists()
    assert 2 not in snaps.after  # the poisoned step never reached the optimizer ...
    assert all(torch.isfinite(p).all() for p in snaps.params().values())  # ... so weights stay finite


def test_skip_drops_the_update_and_trains_on(tmp_path, tiny):
    trainer = napo_trainer(tmp_path, tiny)
    snaps = Snapshots(trainer, poison_step=2)
    trainer.add_callback(snaps)
    guard = attach_guards(trainer, "skip")
    trainer.train()
    assert guard.skipped == 1 and trainer.state.global_step == 3
    changed = {s: any(not torch.equal(snaps.before[s][n], snaps.after[s][n]) for n in snaps.before[s]) for s in (1, 2, 3)}
    assert changed == {1: True, 2: False, 3: True}
    assert all(torch.isfinite(p).all() for p in snaps.after[3].values())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert json.loads((tmp_path / "out" / "checkpoint-3" / COMPLETE_MARKER).read_text())["step"] == 3


def test_sft_script_stops_with_one_line(tiny_item_tokens, tmp_path, capsys, monkeypatch):
    from trl import SFTTrainer

    from napo.scripts import sft

    data_dir, model_dir = tiny_item_tokens
    calls, compute = [], SFTTrainer.compute_loss

    def compute_loss(self, *args, **kwargs):
        calls.append(1)
        loss = compute(self, *args, **kwargs)
        return loss * float("inf") if len(calls) == 3 else loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", compute_loss)
    out = tmp_path / "sft"
    argv = ["--dataset_dir", str(data_dir), "--model_name_or_path", str(model_dir), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--max_steps", "4", "--use_peft", "true", "--lora_r", "4",
            "--lora_target_modules", "q_proj", "v_proj", "--save_strategy", "steps", "--save_steps", "2",
            "--report_to", "none", "--use_cpu", "true", "--bf16", "false", "--disable_tqdm", "true",
            "--activation_checkpointing", "false"]
    with pytest.raises(SystemExit) as exit_info:
        sft.main(argv)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: non-finite loss at step 3")
    assert f"last good checkpoint: {out / 'checkpoint-2'}" in err[0]

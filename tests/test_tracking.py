"""Curves kept: log_history.jsonl, trainer_state.json and all_results.json with save_strategy no,
and the same losses in TensorBoard's event files (report_to tensorboard, the tracking extra)."""

import json

import pytest
import yaml

from napo.tracking import ALL_RESULTS, LOG_HISTORY, TRAINER_STATE


@pytest.fixture(scope="module")
def sdpo_run(tmp_path_factory, tiny_item_tokens):
    from napo.scripts.preference import main

    data_dir, model_dir = tiny_item_tokens
    root = tmp_path_factory.mktemp("tracking")
    report_to = "tensorboard"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        report_to = "none"
    config = dict(dataset_dir=str(data_dir), model_name_or_path=str(model_dir), output_dir=str(root / "out"),
                  use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"],
                  loss_type="sdpo", num_negatives=2, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                  logging_steps=1, report_to=report_to, use_cpu=True, gradient_checkpointing=False,
                  save_strategy="no", dataloader_pin_memory=False, eval_strategy="steps", eval_steps=3,
                  max_eval_samples=8)
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    return main(["--config", str(root / "run.yaml")]), root / "out", report_to


def test_curves_and_results_are_written_without_checkpoints(sdpo_run):
    trainer, out, _ = sdpo_run
    assert not list(out.glob("checkpoint-*"))
    lines = [json.loads(line) for line in (out / LOG_HISTORY).read_text().splitlines()]
    history = trainer.state.log_history
    assert len(lines) == len(history)  # 3 train logs, 1 eval log, 1 train summary
    assert [x["loss"] for x in lines if "loss" in x] == [h["loss"] for h in history if "loss" in h]
    assert [x["rewards/margins"] for x in lines if "rewards/margins" in x] == [
        h["rewards/margins"] for h in history if "rewards/margins" in h]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    state = json.loads((out / TRAINER_STATE).read_text())
    assert state["global_step"] == 3 and state["log_history"] == history
    results = json.loads((out / ALL_RESULTS).read_text())
    final_eval = [h for h in history if "eval_loss" in h][-1]
    summary = [h for h in history if "train_loss" in h][-1]
    assert results["eval_loss"] == final_eval["eval_loss"] and results["train_loss"] == summary["train_loss"]
    assert results["global_step"] == 3


def test_tensorboard_holds_the_same_losses(sdpo_run):
    trainer, out, report_to = sdpo_run
    if report_to != "tensorboard":
        pytest.skip("tensorboard is not installed (the tracking extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(out.glob("runs/*/events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    expected = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert [s for s, _ in losses] == [s for s, _ in expected]
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)

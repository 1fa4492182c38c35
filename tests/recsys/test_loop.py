"""napo.recsys.loop.run_epochs: validation schedule, early stopping, best-state restore, resume."""

import math

import pytest
import torch

from napo.recsys.loop import LoopState, run_epochs


def _run(scores, *, eval_every=1, patience=2, max_epochs=None, state=None):
    model = torch.nn.Linear(1, 1, bias=False)
    seen = []

    def train_epoch(epoch, deadline):
        assert deadline == math.inf  # no max_minutes
        with torch.no_grad():
            model.weight.fill_(epoch)  # the state "after epoch N" is N
        return {"loss": 1.0 / epoch}

    def validate(m):
        seen.append(int(m.weight.item()))
        assert not m.training
        return scores[int(m.weight.item())]

    result = run_epochs(model, train_epoch, validate, max_epochs=max_epochs or max(scores), eval_every=eval_every,
                        patience=patience, progress=False, state=state)
    return model, result, seen


def test_stops_after_patience_and_restores_the_best_state():
    model, result, seen = _run({1: 0.1, 2: 0.3, 3: 0.2, 4: 0.25, 5: 0.9})
    assert seen == [1, 2, 3, 4]  # epochs 3 and 4 did not improve on 0.3: patience 2
    assert (result.best_epoch, result.best_valid, result.epochs_run) == (2, 0.3, 4)
    assert model.weight.item() == 2.0  # the best epoch's state is back
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.history[2] == {"epoch": 3, "loss": pytest.approx(1 / 3), "valid": 0.2}
    assert result.metrics()["train/best_epoch"] == 2 and result.metrics()["train/epochs"] == 4


def test_eval_every_and_the_last_epoch_are_validated():
    model, result, seen = _run({3: 0.1, 6: 0.2, 7: 0.05}, eval_every=3, max_epochs=7)
    assert seen == [3, 6, 7] and result.best_epoch == 6 and model.weight.item() == 6.0
    assert "valid" not in result.history[0] and result.epochs_run == 7


def test_resume_continues_from_the_state_and_a_stopped_run_stays_stopped():
    state = LoopState(best=0.3, best_epoch=2, bad=0, history=[{"epoch": 1}, {"epoch": 2}], epoch=2,
                      best_state={"weight": torch.full((1, 1), 2.0)})
    model, result, seen = _run({1: 0, 2: 0, 3: 0.5, 4: 0.1, 5: 0.1}, state=state)
    assert seen == [3, 4, 5] and result.best_epoch == 3 and model.weight.item() == 3.0
    assert len(result.history) == 5
    done = LoopState(best=0.3, best_epoch=2, bad=2, epoch=4, best_state={"weight": torch.full((1, 1), 2.0)})
    model, result, seen = _run({1: 0, 5: 1.0}, state=done)
    assert seen == [] and result.epochs_run == 4 and model.weight.item() == 2.0


def test_the_stop_reason_is_recorded():
    _, result, _ = _run({1: 0.1, 2: 0.3, 3: 0.2, 4: 0.25, 5: 0.9})
    assert result.stopped_by == "patience" and not result.stopped_by_clock
    _, result, _ = _run({1: 0.1, 2: 0.2, 3: 0.3})
    assert result.stopped_by == "max_epochs"
    m = result.metrics()
    assert (m["train/stopped_by"], m["train/stopped_by_clock"]) == ("max_epochs", False)
    assert result.record() == {"best_epoch": 3, "epochs": 3, "stopped_by": "max_epochs",
                               "stopped_by_clock": False, "fit_seconds": m["train/fit_seconds"]}


def test_a_clock_stop_says_so(capsys, monkeypatch):
    model = torch.nn.Linear(1, 1, bias=False)
    clock = {"t": 0.0}

    def train_epoch(epoch, deadline):
        clock["t"] += 40.0  # every epoch takes 40 "seconds"
        return {"loss": 1.0}

    monkeypatch.setattr("napo.recsys.loop.time.time", lambda: clock["t"])
    result = run_epochs(model, train_epoch, lambda m: 0.5, max_epochs=10, eval_every=5, patience=3,
                        max_minutes=1.0, progress=False, start=0.0)
    monkeypatch.undo()
    # epoch 2 ends at 80 s > 60 s: validated (off the eval_every schedule) and stopped there
    assert (result.epochs_run, result.stopped_by, result.stopped_by_clock) == (2, "clock", True)
    assert result.history[-1]["valid"] == 0.5 and result.metrics()["train/stopped_by_clock"] is True
    err = capsys.readouterr().err
    assert "max_minutes 1 stopped training at epoch 2 of 10" in err and err.count("\n") == 1


def test_the_thread_policy_is_rechecked_after_every_epoch():
    class Policy:
        current, calls = 2, 0

        def adjust(self):
            self.calls += 1
            self.current = 1
            return 1

    policy = Policy()
    model = torch.nn.Linear(1, 1, bias=False)
    result = run_epochs(model, lambda e, d: {"loss": 0.0}, lambda m: 0.0, max_epochs=3, eval_every=1,
                        patience=5, progress=False, threads=policy)
    assert policy.calls == 3 and [r["threads"] for r in result.history] == [2, 1, 1]

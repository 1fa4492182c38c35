"""napo-tune (napo.recsys.tuning, napo.scripts.tune): the search spaces, a study that resumes after
a kill without re-running finished trials, and a best YAML that reproduces the best trial."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from napo.recsys import spaces
from napo.scripts import recsys, tune

optuna = pytest.importorskip("optuna")

TINY = ["--threads", "1", "--dim", "8", "--batch_size", "64"]


class RangeTrial:
    """Records the range of every suggestion (a stand-in for optuna.Trial)."""

    def __init__(self):
        self.ranges = {}

    def suggest_float(self, name, low, high, log=False):
        self.ranges[name] = (low, high, log)
        return low

    def suggest_categorical(self, name, choices):
        self.ranges[name] = tuple(choices)
        return choices[0]


def _ranges(name):
    trial = RangeTrial()
    spaces.get_space(name)(trial)
    return trial.ranges


def test_spaces_are_at_least_as_wide_as_the_papers():
    bpr = _ranges("bpr")
    assert bpr["lr"][0] <= 1e-4 and bpr["lr"][1] >= 1e-1 and bpr["l2"][1] >= 3e-2  # PSL benchmark, issue 20
    for loss in ("ssm", "bsl", "psl"):
        r = _ranges(loss)
        assert r["lr"][0] <= 1e-3 and r["lr"][1] >= 1e-1 and set(r["weight_decay"]) >= {0.0, 1e-6, 1e-5, 1e-4}
        assert r["tau"][0] <= 0.01 and r["tau"][1] >= 0.5  # raw cosine: the SL grid 0.01..0.5
    bsl = _ranges("bsl")  # tau1 and tau2 independent over the same range: tau1 >= tau2 is searched
    assert bsl["tau"] == bsl["tau2"]
    assert set(_ranges("psl")["activation"]) >= {"tanh", "atan", "relu"}
    assert {"lr", "l2", "shapley_eta", "shapley_uniform_mix"} <= set(_ranges("bpr-shapley"))
    for model in ("SASRec", "GRU4Rec"):
        assert set(_ranges(model)) == {"lr", "dropout"}
    with pytest.raises(ValueError, match="already registered"):
        spaces.register("bpr")(lambda trial: {})
    with pytest.raises(KeyError, match="PreferDiff"):
        spaces.get_space("PreferDiff-not-yet")


def test_space_names_follow_the_config():
    from napo.recsys.cf_train import CFConfig
    from napo.recsys.train import RecConfig

    assert spaces.space_name(CFConfig(model="LightGCN", loss="psl")) == "psl"
    assert spaces.space_name(CFConfig(loss="bpr", sampler="shapley")) == "bpr-shapley"
    assert spaces.space_name(RecConfig(model="GRU4Rec")) == "GRU4Rec"


def _states(db) -> list[tuple[str, int]]:
    """(state, number of drawn settings) of every trial, read-only, while another process writes
    the study (never creates tables)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return list(con.execute("SELECT t.state, COUNT(p.param_id) FROM trials t LEFT JOIN trial_params p "
                                    "ON p.trial_id = t.trial_id GROUP BY t.trial_id ORDER BY t.number"))
    except sqlite3.Error:  # the schema is still being written, or the file is locked
        return []


def _study(storage, name=None):
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name or names[0], storage=storage)


@pytest.mark.slow
def test_a_killed_study_resumes_without_rerunning_finished_trials(cf_dir, tmp_path):
    out, db = tmp_path / "tune", tmp_path / "study.db"
    storage = f"sqlite:///{db}"
    argv = ["--dataset_dir", str(cf_dir / "cf"), "--output_dir", str(out), "--model", "MF", "--loss", "bpr",
            "--storage", storage, "--heartbeat", "1", "--max_epochs", "150", "--eval_every", "1",
            "--patience", "1000", *TINY]
    cmd = [sys.executable, "-m", "napo.scripts.tune", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd, "--trials", "6"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    before = None
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            states = _states(db)
            complete = sum(state == "COMPLETE" for state, _ in states)
            if complete >= 2 and states[-1][0] == "RUNNING" and states[-1][1] == 2:  # lr and l2 drawn
                proc.send_signal(signal.SIGKILL)  # a kill in the middle of a trial
                proc.wait()
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-500:]
    before = _study(storage).trials
    done = {t.number: (t.params, t.value, t.datetime_complete) for t in before if t.state.name == "COMPLETE"}
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(done) >= 2 and len(killed) == 1
    time.sleep(3)  # past the grace period (2 heartbeats): the killed trial is stale

    run = subprocess.run([*cmd, "--trials", "5"], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-500:]
    after = _study(storage).trials
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == 5  # the count continued from the killed run's trials
    for t in after:  # finished trials untouched
        if t.number in done:
            assert (t.params, t.value, t.datetime_complete) == done[t.number]
    stale = after[killed[0].number]
    assert stale.state.name == "FAIL"
    new = [t for t in after if t.number > max(t.number for t in before)]
    assert len(new) == 5 - len(done)  # only the missing trials ran, numbered after the old ones
    # the cut trial was re-queued and run with the settings it had drawn (a kill between two draws
    # leaves only the first; the retry draws the rest)
    assert any(killed[0].params.items() <= t.params.items() for t in new)
    assert (out / "best.yaml").is_file() and "| trial |" in (out / "trials.md").read_text()


@pytest.mark.parametrize("kind", ["cf", "sequential"])
def test_the_best_yaml_reproduces_the_best_trial(cf_dir, cycle_dataset, tmp_path, kind):
    out = tmp_path / "tune"
    if kind == "cf":
        data, model = cf_dir / "cf", ["--model", "MF", "--loss", "ssm", "--num_negatives", "16", *TINY,
                                      "--max_epochs", "6", "--eval_every", "2"]
        key = "valid/ndcg@20"
    else:
        data, model = cycle_dataset, ["--config", "recipes/configs/lastfm/sasrec-tiny.yaml", "--max_epochs", "3"]
        key = "valid/ndcg@10"
    assert tune.main(["--dataset_dir", str(data), "--output_dir", str(out), "--trials", "3", *model]) == 0
    study = _study(f"sqlite:///{out / 'study.db'}")
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert {k: best[k] for k in study.best_params} == study.best_params
    assert recsys.main(["--config", str(out / "best.yaml"), "--dataset_dir", str(data),
                        "--output_dir", str(tmp_path / "run"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics[key] == pytest.approx(study.best_value, abs=1e-12)
    assert metrics["train/epochs"] == study.best_trial.user_attrs["epochs"]
    # a second call with the same study finds the budget spent: no new trial
    assert tune.main(["--dataset_dir", str(data), "--output_dir", str(out), "--trials", "3", *model]) == 0
    assert len(_study(f"sqlite:///{out / 'study.db'}").trials) == 3


def test_a_study_refuses_other_settings(cf_dir, tmp_path, capsys):
    argv = ["--dataset_dir", str(cf_dir / "cf"), "--output_dir", str(tmp_path), "--model", "MF", *TINY,
            "--trials", "1", "--max_epochs", "2"]
    assert tune.main(argv) == 0
    with pytest.raises(SystemExit) as stop:
        tune.main([*argv[:-1], "3"])  # another epoch budget, same study name
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "max_epochs 2" in err and "\n" not in err
    with pytest.raises(SystemExit) as stop:
        tune.main(["--dataset_dir", str(cf_dir / "cf"), "--output_dir", str(tmp_path / "p"), "--model", "MostPop"])
    assert stop.value.code == 2 and "nothing to tune" in capsys.readouterr().err

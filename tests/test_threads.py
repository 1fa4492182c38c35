"""napo.threads: the thread count follows the cores that other processes leave free."""

import pytest
import torch

from napo import threads


class FakeMachine:
    """/proc/stat and os.times stand-ins: `others` and `own` CPU-seconds per wall second."""

    def __init__(self, monkeypatch, cores=2):
        self.t, self.busy, self.own = 0.0, 0.0, 0.0
        self.others_rate, self.own_rate = 0.0, 0.0
        monkeypatch.setattr(threads, "usable_cores", lambda: list(range(cores)))
        monkeypatch.setattr(threads, "_busy_seconds", lambda cores: self.busy)
        monkeypatch.setattr(threads, "_own_seconds", lambda: self.own)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.t)
        monkeypatch.setattr(threads.time, "sleep", self.advance)

    def advance(self, seconds):
        self.t += seconds
        self.busy += (self.others_rate + self.own_rate) * seconds
        self.own += self.own_rate * seconds


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("others,want", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (2.0, 1)])
def test_threads_are_the_free_cores(monkeypatch, restore_threads, others, want):
    m = FakeMachine(monkeypatch)
    m.others_rate = others
    policy = threads.ThreadPolicy(2)
    assert policy.current == want == torch.get_num_threads()
    assert policy.history[-1][1:] == (want, pytest.approx(others))


def test_the_count_follows_the_neighbours_epoch_by_epoch(monkeypatch, restore_threads):
    m = FakeMachine(monkeypatch, cores=4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    policy = threads.ThreadPolicy(0)  # 0 = every usable core without OMP_NUM_THREADS
    assert (policy.limit, policy.current) == (4, 4)
    m.others_rate, m.own_rate = 2.0, 2.0  # two busy neighbours arrive; we still had 4 threads
    m.advance(30.0)
    assert policy.adjust() == 2 == torch.get_num_threads()
    m.others_rate, m.own_rate = 0.0, 2.0  # they leave: our own two threads are not "others"
    m.advance(30.0)
    assert policy.adjust() == 4


def test_fixed_policy_and_limits(monkeypatch, restore_threads):
    m = FakeMachine(monkeypatch)
    m.others_rate = 2.0
    assert threads.ThreadPolicy(2, "fixed").current == 2  # the old behaviour, whatever the load
    assert threads.ThreadPolicy(1).current == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.ThreadPolicy(0).limit == 1  # threads 0 respects the environment
    with pytest.raises(ValueError, match="thread_policy"):
        threads.ThreadPolicy(2, "greedy")


def test_importing_napo_leaves_the_wait_policy_to_the_environment():
    import os
    import subprocess
    import sys

    code = "import napo, os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "unset"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "ACTIVE"

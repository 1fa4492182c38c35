"""The one thread policy of the CPU training loops: how many torch threads a run uses, decided
from the cores this process may use and the load that other processes put on them.

Why: torch splits an operation over its intra-op (OpenMP) threads and waits at a barrier for
the slowest one. When the cores are busy with other processes, the kernel deschedules one of our
threads for a whole time slice and the others wait for it at every barrier; a small model runs
thousands of short parallel regions per second, so the stalls add up. Measured on a 2-core
machine: the demo's SASRec with 2 threads beside two single-threaded CPU jobs took 4-8x its epoch
alone, where a fair share of the cores costs about 2x. One thread per core that is actually free
avoids the stalls, and re-checking after every epoch gives the threads back when the neighbours
leave (bench/threads.py measures both policies).

`thread_policy: adaptive` (the default), with `threads: N` from the config (0 = OMP_NUM_THREADS
when the environment sets it, else every core this process may use, `os.sched_getaffinity`):

    others  = CPU-seconds per second that OTHER processes used on our cores over the last window
              (/proc/stat busy time of those cores minus this process's own CPU time)
    threads = max(1, min(N, floor(cores - others + 0.5)))

The first window is a short sample before training; later windows are the epochs themselves
(`ThreadPolicy.adjust`, called by napo.recsys.loop after each epoch). Without /proc/stat the
1-minute load average stands in for `others`. `thread_policy: fixed` sets exactly N threads (the
behaviour before this policy; benchmarks use it as the baseline).

Reproducibility: torch's reductions give other low-order bits with another thread count, so two
runs of one seed are bit-identical only when they used the same counts; run.json records the
count of every epoch (`history[].threads`), and `thread_policy: fixed` (or `threads: 1`) makes
reruns exact whatever the load.

OMP_WAIT_POLICY is left to the environment. A PASSIVE policy (threads sleep at a barrier instead of
spinning) was the first half of this fix and was measured out (bench/threads.py, 2026-12-07, the
demo's SASRec epoch on 2 cores): alone it cost 1.3-1.5x (14.2-16.8 s against 10.8-12.7 s), and
beside two busy processes it bought nothing over the adaptive count alone (21.2 s against 20.3 s).
"""

from __future__ import annotations

import math
import os
import time

POLICIES = ("adaptive", "fixed")
SAMPLE_SECONDS = 0.3  # the first window, before training starts


def usable_cores() -> list[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def _env_threads() -> int | None:
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def _busy_seconds(cores: list[int]) -> float | None:
    """Busy CPU-seconds of `cores` since boot (/proc/stat: all time but idle and iowait), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    found = 0
    for line in lines:
        name, *values = line.split()
        if name in wanted:
            v = [int(x) for x in values]
            ticks += sum(v[:8]) - v[3] - v[4]  # user..steal, minus idle and iowait
            found += 1
    if found == 0:
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class ThreadPolicy:
    """Sets torch's thread count now and after each epoch (module docstring).

    limit: the config's `threads` (0 = every usable core). policy: adaptive | fixed.
    `current` is the count in force; `history` lists (wall time, threads, others) per decision.
    """

    def __init__(self, limit: int = 0, policy: str = "adaptive", sample_seconds: float = SAMPLE_SECONDS):
        if policy not in POLICIES:
            raise ValueError(f"thread_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if limit < 0:
            raise ValueError(f"threads must be >= 0 (0 = every usable core), got {limit}")
        self.cores = usable_cores()
        self.limit = limit or _env_threads() or len(self.cores)
        self.policy = policy
        self.history: list[tuple[float, int, float | None]] = []
        self._mark = self._sample()
        if policy == "adaptive" and self.limit > 1 and sample_seconds > 0:
            time.sleep(sample_seconds)
        self.current = self._apply(self._decide())

    def _sample(self) -> tuple[float, float | None, float]:
        return time.monotonic(), _busy_seconds(self.cores), _own_seconds()

    def others(self) -> float | None:
        """CPU-seconds per second other processes used on our cores since the last mark."""
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._mark, now
        self._mark = now
        wall = t1 - t0
        if busy0 is None or busy1 is None or wall <= 0:
            try:
                return max(0.0, os.getloadavg()[0] - (self.current if hasattr(self, "current") else 0))
            except OSError:
                return None
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / wall)

    def _decide(self) -> int:
        if self.policy == "fixed" or self.limit == 1:
            self.history.append((time.time(), self.limit, None))
            return self.limit
        others = self.others()
        if others is None:
            n = self.limit
        else:
            n = max(1, min(self.limit, math.floor(len(self.cores) - others + 0.5)))
        self.history.append((time.time(), n, None if others is None else round(others, 2)))
        return n

    @staticmethod
    def _apply(n: int) -> int:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n

    def adjust(self) -> int:
        """Re-decide from the load since the last call (after an epoch); returns the count."""
        if self.policy == "adaptive" and self.limit > 1:
            self.current = self._apply(self._decide())
        return self.current


def apply_threads(limit: int, policy: str = "adaptive") -> ThreadPolicy:
    """The policy for a run whose config says `threads: limit`, `thread_policy: policy`."""
    return ThreadPolicy(limit, policy)

"""NAPO: fine-tune LLMs as recommenders with negative-aware preference optimization."""

import os

# Threads waiting at an OpenMP barrier sleep instead of spinning, so they leave the core to a
# descheduled partner or a neighbouring process (napo/threads.py, bench/threads.py). The OpenMP
# runtime reads this once, when torch is first imported; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

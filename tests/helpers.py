"""Test helpers shared across test folders (on sys.path through pyproject's pytest `pythonpath`).

load_script: a script of the checkout (recipes/*.py, scripts/*.py) as a module, to call its main()
in the test process. Scripts are files, not package modules (recipes/napo.py would even shadow the
napo package if recipes/ were on sys.path), so they are loaded by path under a private name.

run_launch: a multi-process `accelerate launch`, retried once on a known teardown abort.
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

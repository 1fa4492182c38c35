"""Load a script of the checkout (recipes/*.py, scripts/*.py) as a module, to call its main() in
the test process. Scripts are files, not package modules (recipes/napo.py would even shadow the
napo package if recipes/ were on sys.path), so they are loaded by path under a private name."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location("script_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

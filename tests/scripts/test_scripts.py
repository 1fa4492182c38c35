"""Every script: --help works through its launcher, and a misspelt YAML key is one file:line error."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {  # launcher -> (module, a misspelt key, what it should have been)
    "recipes/sft.py": ("napo.scripts.sft", "lerning_rate", "learning_rate"),
    "recipes/napo.py": ("napo.scripts.preference", "gamma", "gamma0"),
    "recipes/recsys.py": ("napo.scripts.recsys", "hiden", "hidden"),
    "recipes/evaluate.py": ("napo.scripts.evaluate", "batchsize", "batch_size"),
    "recipes/export.py": ("napo.scripts.export", "adaptor", "adapter"),
}


@pytest.mark.parametrize("module,key,meant", SCRIPTS.values(), ids=list(SCRIPTS))
def test_misspelt_yaml_key_is_one_line_with_file_and_line(module, key, meant, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"output_dir: somewhere\n\n{key}: 3\n")  # a key every script has
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(["--config", str(cfg)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {cfg}:3:1: unknown key '{key}'; did you mean '{meant}'?"
    ]


@pytest.mark.slow  # five interpreters that import their stacks: ~20 s
@pytest.mark.parametrize("launcher", list(SCRIPTS))
def test_help_through_the_launcher(launcher):
    """`python recipes/X.py --help` from the repository root: recipes/ is first on sys.path there,
    where recipes/napo.py would shadow the package unless the launcher drops that entry."""
    proc = subprocess.run([sys.executable, launcher, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--config FILE" in proc.stdout and "usage:" in proc.stdout


def test_no_module_swaps_and_no_file_named_aux():
    swap = "sys.modules" + "["  # spelt in two pieces so that this file does not match itself
    for folder in ("recipes", "napo", "bench", "tests", "data_prep", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            assert swap not in path.read_text(encoding="utf-8"), path
        # `aux` is a reserved device name on Windows: such a file cannot be checked out there
        assert not list((REPO / folder).rglob("aux.*")), folder

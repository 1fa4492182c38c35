"""bench/diffusion_step.py loads an older commit's napo beside this tree's: here the "older
commit" is this very tree, loaded a second time under the name napo_old (its timing is not
asserted, only that both versions ran in one process, each with its own modules)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import runpy, sys
root = sys.argv[1]
sys.argv = ["bench/diffusion_step.py", "--old-root", root, "--hidden", "16", "--items", "40",
            "--batch", "8", "--rounds", "2"]
try:
    runpy.run_path("bench/diffusion_step.py", run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
import napo.recsys.diffusion as new
old = sys.modules.get("napo_old.recsys.diffusion")
assert old.DiffusionRec is not new.DiffusionRec
assert old.SeqRecommender is sys.modules.get("napo_old.recsys.models").SeqRecommender
assert "napo_old.recsys.data" in sys.modules
print("LOADED", old.__file__)
"""


def test_step_bench_loads_the_other_tree_under_its_own_name():
    out = subprocess.run([sys.executable, "-c", DRIVER, str(REPO)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio new / old:" in out.stdout and "| new (this tree) |" in out.stdout
    assert f"LOADED {REPO / 'napo' / 'recsys' / 'diffusion.py'}" in out.stdout


def test_step_bench_refuses_a_folder_without_the_package(tmp_path):
    out = subprocess.run([sys.executable, "bench/diffusion_step.py", "--old-root", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no napo/recsys/diffusion.py there" in out.stderr

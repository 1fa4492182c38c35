"""FSDP2 runs on two CPU processes (gloo): torch's ``fully_shard`` over a tiny Llama trained with
this toolkit's packed scoring and listwise loss. Each rank holds half of every parameter, and the
sharded run (each rank on half the batch) ends with the parameters and losses of one process
trained alone on the whole batch.

This is torch's FSDP2, not accelerate's: accelerate 1.16 never selects FSDP for CPU processes (an
FSDP launch on CPU is DDP; napo.distributed stops such a launch with one line), so the Trainer
path under ``accelerate_configs/fsdp.yaml`` is checked on a GPU only (bench/gpu_check.sh).
"""

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import run_launch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "result.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = run_launch([str(torchrun), "--nproc_per_node", "2", str(REPO / "tests" / "fsdp_driver.py"), str(out)],
                      env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_each_rank_holds_one_half_of_every_parameter(result):
    assert result["world"] == 2
    rank0, rank1 = result["shards"]
    for name, full_sum in result["full_sums"].items():
        for shard in (rank0[name], rank1[name]):
            assert shard["is_dtensor"]
            assert shard["local_shape"] == [shard["full_shape"][0] // 2, *shard["full_shape"][1:]]
        assert rank0[name]["local_sum"] != rank1[name]["local_sum"]  # different rows ...
        assert rank0[name]["local_sum"] + rank1[name]["local_sum"] == pytest.approx(full_sum, abs=1e-9)  # ... of one tensor


def test_two_sharded_processes_train_like_one_process(result):
    assert result["moved"] > 1e-2  # the parameters did move: the comparison below means something
    assert result["max_param_diff"] < 1e-6
    assert result["sharded_losses"] == pytest.approx(result["alone_losses"], abs=1e-6)
    assert result["sharded_losses"][-1] < result["sharded_losses"][0]

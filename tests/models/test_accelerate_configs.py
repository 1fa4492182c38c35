"""The launch configs parse, and cpu_2proc.yaml really starts two communicating CPU processes."""

import os
import re
import sys
from pathlib import Path

import pytest
from helpers import run_launch

CONFIGS = Path(__file__).resolve().parents[2] / "accelerate_configs"
EXPECTED = {
    "single_gpu.yaml": ("NO", "bf16", 1),
    "ddp.yaml": ("MULTI_GPU", "bf16", 8),
    "fsdp.yaml": ("FSDP", "bf16", 8),
    "deepspeed_zero2.yaml": ("DEEPSPEED", "bf16", 8),
    "deepspeed_zero3.yaml": ("DEEPSPEED", "bf16", 8),
    "cpu_2proc.yaml": ("MULTI_GPU", "no", 2),
}
PROBE = """
import torch
from accelerate import Accelerator
acc = Accelerator()
total = acc.reduce(torch.tensor([acc.process_index + 1.0]), reduction="sum").item()
print(f"rank {acc.process_index} of {acc.num_processes} {acc.distributed_type.value} sum {total:g}", flush=True)
acc.end_training()  # without it a worker aborts at exit now and then (gloo threads still alive)
"""


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert (config.distributed_type.value, config.mixed_precision, config.num_processes) == EXPECTED[name]


@pytest.mark.slow
def test_cpu_2proc_runs_two_ranks(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    launcher = Path(sys.executable).with_name("accelerate")
    result = run_launch([str(launcher), "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"), str(script)],
                        env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # The two workers share one stdout pipe, so their lines may interleave: match, don't split.
    lines = sorted(re.findall(r"rank \d+ of \d+ \w+ sum [\d.]+", result.stdout))
    assert lines == ["rank 0 of 2 MULTI_CPU sum 3", "rank 1 of 2 MULTI_CPU sum 3"]

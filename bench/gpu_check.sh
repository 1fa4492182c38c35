#!/usr/bin/env bash
# The checks that need a GPU, as one script: (1) the distributed strategies (issue 21): FSDP2 and,
# when deepspeed is installed, DeepSpeed ZeRO-2/3 launched from accelerate_configs/ must record that
# strategy in run.json and train like one process (bench/distributed_check.py: a tiny S-DPO run,
# 4 steps, fp32); with one GPU the launches use 1 process (FSDP then shards over one rank: the
# strategy and the Trainer path are checked, not the sharding itself); (2) issue 6's K-negatives
# measurement (bench/kneg.py) on one GPU: a random-init ~1.2B Llama (Llama-3.2-1B shape: hidden
# 2048, 16 layers, 32/8 heads, vocab 128256), bf16, sdpa, B=4 prompts of 384 tokens, completions of
# 8 tokens, K in {1, 3, 7, 19}, median of 5 steps, plus the naive-full and TRL DPOTrainer K=1 rows.
# Each configuration is its own process.
# Usage: bash bench/gpu_check.sh [OUTPUT_DIR]     (hard limit 8 minutes; rows that run out of
# GPU memory are reported as errors instead of stopping the run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-bench_out/gpu_check}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
GPUS=$(nvidia-smi -L | wc -l)
PROCS=$(( GPUS >= 2 ? 2 : 1 ))
CONFIGS="accelerate_configs/fsdp.yaml accelerate_configs/ddp.yaml"
if "$PY" -c "import deepspeed" 2>/dev/null; then
    CONFIGS="$CONFIGS accelerate_configs/deepspeed_zero2.yaml accelerate_configs/deepspeed_zero3.yaml"
else
    echo "deepspeed is not installed: the DeepSpeed ZeRO configs stay unverified (pip install deepspeed)"
fi
# Strategy check: a FAIL line is a result, not a reason to skip the measurement below.
timeout 150 "$PY" bench/distributed_check.py $CONFIGS --num_processes "$PROCS" --output-dir "$OUT/distributed" \
    || echo "distributed check: FAIL or timeout (see the lines above)"
timeout 320 "$PY" bench/kneg.py --device cuda --dtype bfloat16 --attn sdpa --arch llama \
    --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 128256 \
    --batch 4 --prompt-len 384 --completion-len 8 --ks 1 3 7 19 --repeats 5 --output-dir "$OUT"
echo "results: $OUT/results.json (run record: $OUT/run.json), $OUT/distributed/results.json"

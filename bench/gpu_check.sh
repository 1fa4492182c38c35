#!/usr/bin/env bash
# Issue 6's K-negatives measurement (bench/kneg.py) on one GPU: a random-init ~1.2B Llama
# (Llama-3.2-1B shape: hidden 2048, 16 layers, 32/8 heads, vocab 128256), bf16, sdpa,
# B=4 prompts of 384 tokens, completions of 8 tokens, K in {1, 3, 7, 19}, median of 5 steps,
# plus the naive-full and TRL DPOTrainer K=1 rows. Each configuration is its own process.
# Usage: bash bench/gpu_check.sh [OUTPUT_DIR]     (hard limit 8 minutes; rows that run out of
# GPU memory are reported as errors instead of stopping the run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-bench_out/gpu_check}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 470 "$PY" bench/kneg.py --device cuda --dtype bfloat16 --attn sdpa --arch llama \
    --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 128256 \
    --batch 4 --prompt-len 384 --completion-len 8 --ks 1 3 7 19 --repeats 5 --output-dir "$OUT"
echo "results: $OUT/results.json (run record: $OUT/run.json)"

#!/usr/bin/env bash
# The diffusion comparison on one Amazon dataset: SASRec, GRU4Rec (full softmax), DreamRec and
# PreferDiff (CPU configs) for each training seed, each under its own minutes cap (MODELS lists
# config:minutes; the diffusion models need more epochs), then every checkpoint
# scored on test by bench/diffusion_spread.py (3 sampler seeds for the diffusion models, one timed
# pass for the others). Summarise with: python bench/diffusion_table.py OUT_ROOT
#
#   bash bench/diffusion_study.sh runs/data/beauty beauty runs/diffusion-study "1 2 3"
set -euo pipefail
DATA=$1; NAME=$2; ROOT=$3; SEEDS=${4:-"1 2 3"}
MODELS=${MODELS:-"sasrec:4 gru4rec:4 dreamrec-cpu:8 preferdiff-cpu:8"}
PY=${PY:-python}
for seed in $SEEDS; do
    for spec in $MODELS; do
        model=${spec%%:*}; minutes=${spec##*:}
        out="$ROOT/$NAME/${model%-cpu}/seed$seed"
        if [ -f "$out/spread.json" ]; then echo "done: $out"; continue; fi
        "$PY" -P recipes/recsys.py --config "recipes/configs/$NAME/$model.yaml" --dataset_dir "$DATA" \
            --output_dir "$out" --seed "$seed" --max_minutes "$minutes" --threads 1
        "$PY" -P bench/diffusion_spread.py --checkpoint "$out/checkpoint" --dataset_dir "$DATA" \
            --seeds 0,1,2 --output "$out/spread.json"
    done
done

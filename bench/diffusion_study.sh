#!/usr/bin/env bash
# The diffusion comparison on one Amazon dataset: SASRec, GRU4Rec (full softmax), DreamRec and
# PreferDiff (CPU configs: d 512, one example per user, valid Recall@5, patience 10) for each
# training seed, every run trained by epochs with early stopping on valid and no wall clock
# (--max_minutes 0 whatever a config says), then every checkpoint scored on test by
# bench/diffusion_spread.py (3 sampler seeds for the diffusion models, one timed pass for the
# others). Summarise with: python bench/diffusion_table.py OUT_ROOT
#
#   bash bench/diffusion_study.sh runs/data/beauty beauty runs/diffusion-study "1 2 3"
#   MODELS="preferdiff-cpu dreamrec-cpu" bash bench/diffusion_study.sh ...   # a subset
set -euo pipefail
DATA=$1; NAME=$2; ROOT=$3; SEEDS=${4:-"1 2 3"}
MODELS=${MODELS:-"sasrec gru4rec dreamrec-cpu preferdiff-cpu"}
PY=${PY:-python}
for seed in $SEEDS; do
    for model in $MODELS; do
        out="$ROOT/$NAME/${model%-cpu}/seed$seed"
        if [ -f "$out/spread.json" ]; then echo "done: $out"; continue; fi
        "$PY" -P recipes/recsys.py --config "recipes/configs/$NAME/$model.yaml" --dataset_dir "$DATA" \
            --output_dir "$out" --seed "$seed" --max_minutes 0 --threads 1 --quiet true
        "$PY" -P bench/diffusion_spread.py --checkpoint "$out/checkpoint" --dataset_dir "$DATA" \
            --seeds 0,1,2 --output "$out/spread.json"
    done
done

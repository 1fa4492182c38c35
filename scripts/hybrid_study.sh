#!/usr/bin/env bash
# Hybrid item tokens against SFT, NAPO and SASRec on one dataset and seed, every step timed.
#
#   STUDY_DIR=runs/hybrid/ml-100k SEED=1 bash scripts/hybrid_study.sh            # MovieLens-100K
#   STUDY_DIR=runs/hybrid/beauty SEED=1 CONFIGS=recipes/configs/beauty EVAL_EXAMPLES= \
#       DATA_ARGS="--dataset seq-txt --input-dir PATH/amazon-seq/Beauty --item-format token \
#       --prompt-style history" SASREC_ARGS="--threads 1" bash scripts/hybrid_study.sh   # Amazon Beauty
#
# data_prep (item tokens, history-only prompts) -> SASRec (the auxiliary model and the comparator)
# -> tiny model -> SFT and hybrid SFT (item_embeddings aux, frozen; item_softmax as configured) ->
# NAPO from each (scoring answer) -> napo-eval of the four LLMs, 20 candidates and the whole
# catalogue (--rank_over both), on the same test rows as SASRec's own evaluation -> the leaderboard
# with paired intervals against SASRec. Every step appends "seed step seconds" to
# $STUDY_DIR/times.tsv. STEPS picks steps; an empty EVAL_EXAMPLES evaluates every test row.
set -euo pipefail
PY=${PY:-.venv/bin/python}
STUDY_DIR=${STUDY_DIR:-runs/hybrid/ml-100k}
SEED=${SEED:-1}
EVAL_EXAMPLES=${EVAL_EXAMPLES-1000}
EVAL_SEED=${EVAL_SEED:-42}           # the rows: the same for every method and seed
DATA_ARGS=${DATA_ARGS---dataset ml-100k --item-format token --prompt-style history --seed 42}
CONFIGS=${CONFIGS:-recipes/configs/ml-100k}
# --threads 1: a slot is one core; two threads on a shared core made SASRec 4x slower per epoch here
SASREC_ARGS=${SASREC_ARGS---lr 0.003 --max_epochs 40 --threads 1}
SFT_CONFIG=${SFT_CONFIG:-$CONFIGS/sft-tiny-history.yaml}
NAPO_CONFIG=${NAPO_CONFIG:-$CONFIGS/napo-tiny-history.yaml}
SFT_ARGS=${SFT_ARGS:-}
NAPO_ARGS=${NAPO_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
STEPS=${STEPS:-data sasrec tiny sft hybrid-sft napo hybrid-napo eval board}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
D=$STUDY_DIR/data
R=$STUDY_DIR/seed-$SEED
mkdir -p "$R"
timed() {  # timed NAME CMD...: run, record wall seconds
    local name=$1; shift
    local start=$(date +%s.%N)
    "$@"
    printf '%s\t%s\t%.1f\n' "$SEED" "$name" "$(echo "$(date +%s.%N) - $start" | bc)" >> "$STUDY_DIR/times.tsv"
}
want() { [[ " $STEPS " == *" $1 "* ]]; }

want data && [ ! -f "$D/meta.json" ] && timed data "$PY" -m data_prep $DATA_ARGS --output-dir "$D" --overwrite --quiet
rows=()  # the evaluated test rows: a seeded sample, or all
[ -n "$EVAL_EXAMPLES" ] && rows=(--max_examples "$EVAL_EXAMPLES" --sample_seed "$EVAL_SEED")
want sasrec && timed sasrec "$PY" recipes/recsys.py --config "$CONFIGS/sasrec.yaml" --dataset_dir "$D" \
    --output_dir "$R/sasrec" --seed "$SEED" --max_minutes 0 $SASREC_ARGS --quiet true \
    ${EVAL_EXAMPLES:+--test_max_examples "$EVAL_EXAMPLES" --test_sample_seed "$EVAL_SEED"}
want tiny && timed tiny "$PY" -m napo.models.tiny --dataset-dir "$D" --output-dir "$R/tiny" --item-tokens \
    --hidden-size 64 --num-layers 2 --seed "$SEED"
want sft && timed sft "$PY" recipes/sft.py --config "$SFT_CONFIG" --dataset_dir "$D" \
    --model_name_or_path "$R/tiny" --output_dir "$R/sft" --seed "$SEED" --disable_tqdm true $SFT_ARGS
want hybrid-sft && timed hybrid-sft "$PY" recipes/sft.py --config "$SFT_CONFIG" --dataset_dir "$D" \
    --model_name_or_path "$R/tiny" --output_dir "$R/hybrid-sft" --seed "$SEED" --disable_tqdm true \
    --item_embeddings aux --item_aux_dir "$R/sasrec/aux" $SFT_ARGS
for run in napo hybrid-napo; do
    want $run || continue
    sft=$R/${run%napo}sft
    timed $run "$PY" recipes/napo.py --config "$NAPO_CONFIG" --dataset_dir "$D" --sft_adapter "$sft" \
        --output_dir "$R/$run" --aux_dir "$R/sasrec/aux" --seed "$SEED" --disable_tqdm true $NAPO_ARGS
done
if want eval; then
    common=(--dataset_dir "$D" --split test "${rows[@]}" --rank_over both --batch_size 32 --no_progress true $EVAL_ARGS)
    timed eval-sft "$PY" recipes/evaluate.py --model_name_or_path "$R/sft" "${common[@]}" --output_dir "$R/eval/sft" --name SFT
    timed eval-hybrid-sft "$PY" recipes/evaluate.py --model_name_or_path "$R/hybrid-sft" "${common[@]}" \
        --output_dir "$R/eval/hybrid-sft" --name "hybrid SFT"
    timed eval-napo "$PY" recipes/evaluate.py --model_name_or_path "$R/sft" --adapter "$R/napo" "${common[@]}" \
        --output_dir "$R/eval/napo" --name NAPO
    timed eval-hybrid-napo "$PY" recipes/evaluate.py --model_name_or_path "$R/hybrid-sft" --adapter "$R/hybrid-napo" \
        "${common[@]}" --output_dir "$R/eval/hybrid-napo" --name "hybrid NAPO"
fi
if want board; then
    "$PY" -m napo.scripts.leaderboard "$STUDY_DIR"/seed-*/sasrec "$STUDY_DIR"/seed-*/eval/* --baseline SASRec \
        --output "$STUDY_DIR/board.md"
fi

#!/usr/bin/env bash
# The end-to-end demo on the embedded default (MovieLens-100K), CPU only. Called by `make demo`.
#
#   data_prep -> auxiliary SASRec -> tiny offline model -> SFT -> DPO, S-DPO, NAPO (same budget)
#   -> evaluation of all of them beside Popularity and SASRec -> comparison table
#
# Every step writes into $DEMO_DIR (default runs/demo); the table goes to $DEMO_DIR/report.md.
# DEMO_EVAL_EXAMPLES test examples, a seeded sample, are evaluated for every method (the same rows).
set -euo pipefail
declare -A names
PY=${PY:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-runs/demo}
DEMO_SEED=${DEMO_SEED:-42}
DEMO_EVAL_EXAMPLES=${DEMO_EVAL_EXAMPLES:-1000}
D=$DEMO_DIR
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
step() { printf '\n=== [%4ds] %s\n' "$(( $(date +%s) - start ))" "$*"; }
mkdir -p "$D"

step "1/7 data_prep: MovieLens-100K, 20-candidate protocol, items as <item_ID> tokens"
"$PY" -m data_prep --dataset ml-100k --item-format token --seed "$DEMO_SEED" \
    --output-dir "$D/data" --overwrite

step "2/7 auxiliary SASRec (NAPO's user vectors and negative scores; also a comparator)"
# Trained to convergence on valid: early stopping (the config's patience 5 on valid ndcg@10) under
# an epoch cap well above it, no clock, so a loaded machine gives the same model. lr 3e-3 was chosen
# on valid: it peaks at epoch 8 (valid ndcg@10 0.7287) and stops at 13, while the config's 1e-3
# was still rising at epoch 10 (0.7206). README "What `make demo` prints".
"$PY" recipes/recsys.py --config recipes/configs/ml-100k/sasrec.yaml --dataset_dir "$D/data" \
    --output_dir "$D/sasrec" --lr 0.003 --max_epochs 40 --max_minutes 0 --seed "$DEMO_SEED"

step "3/7 tiny Llama-architecture model + tokenizer trained on the prepared data"
"$PY" -m napo.models.tiny --dataset-dir "$D/data" --output-dir "$D/tiny-model" --item-tokens \
    --hidden-size 64 --num-layers 2 --seed "$DEMO_SEED"

step "4/7 SFT (full fine-tune of the tiny model)"
"$PY" recipes/sft.py --config recipes/configs/ml-100k/sft-tiny.yaml --dataset_dir "$D/data" \
    --model_name_or_path "$D/tiny-model" --output_dir "$D/sft" --seed "$DEMO_SEED"

step "5/7 DPO, S-DPO, NAPO (rescore: every negative under the user's own prompt) and NAPO (reuse: the paper's shortcut) from SFT, same budget"
for run in dpo sdpo napo napo-reuse; do
    method=${run%-reuse}
    extra=()
    [ "$method" = napo ] && extra=(--aux_dir "$D/sasrec/aux")
    [ "$run" = napo-reuse ] && extra+=(--share_mode reuse)
    "$PY" recipes/napo.py --config "recipes/configs/ml-100k/$method-tiny.yaml" \
        --dataset_dir "$D/data" --model_name_or_path "$D/tiny-model" --sft_adapter "$D/sft" \
        --output_dir "$D/$run" --seed "$DEMO_SEED" "${extra[@]}"
done

step "6/7 evaluation on $DEMO_EVAL_EXAMPLES test examples"
common=(--dataset_dir "$D/data" --split test --max_examples "$DEMO_EVAL_EXAMPLES" --sample_seed "$DEMO_SEED")
"$PY" recipes/evaluate.py --popularity "${common[@]}" --output_dir "$D/eval/popularity" --name Popularity
"$PY" recipes/evaluate.py --scores_from_aux "$D/sasrec/aux" "${common[@]}" \
    --output_dir "$D/eval/sasrec" --name SASRec
# The SFT output is the fine-tuned tiny model; DPO / S-DPO / NAPO are LoRA adapters on top of it.
# Generation twice: free (the papers' protocol, matched to the titles) and constrained to the row's
# candidates (a trie of their tokens: every answer is a candidate, ValidRatio 1 by construction).
llm=(--mode both --constrain none candidates --batch_size 32)
"$PY" recipes/evaluate.py --model_name_or_path "$D/sft" "${common[@]}" "${llm[@]}" \
    --output_dir "$D/eval/sft" --name SFT
names=([dpo]=DPO [sdpo]=S-DPO [napo]="NAPO (rescore)" [napo-reuse]="NAPO (reuse)")
for run in dpo sdpo napo napo-reuse; do
    "$PY" recipes/evaluate.py --model_name_or_path "$D/sft" --adapter "$D/$run" \
        "${common[@]}" "${llm[@]}" --output_dir "$D/eval/$run" --name "${names[$run]}"
done

step "7/7 comparison"
"$PY" recipes/evaluate.py --compare "$D/eval/popularity" "$D/eval/sasrec" "$D/eval/sft" \
    "$D/eval/dpo" "$D/eval/sdpo" "$D/eval/napo" "$D/eval/napo-reuse" --output "$D/report.md"
"$PY" scripts/demo_notes.py "$D" "$(( $(date +%s) - start ))" >> "$D/report.md"
step "done: $D/report.md"

#!/usr/bin/env bash
# The checks that need a GPU, for when one is lent. Each is its own process under its own limit;
# pick them by name (default: all, in this order):
#
#   distributed      Issue 21's strategies: FSDP2, DDP and, when deepspeed is installed, DeepSpeed
#                    ZeRO-2/3 launched from accelerate_configs/ must record that strategy in run.json
#                    and train like one process (bench/distributed_check.py: a tiny S-DPO run, 4 steps,
#                    fp32; limit 150 s). With one GPU the launches use 1 process (FSDP then shards over
#                    one rank: the strategy and the Trainer path are checked, not the sharding itself).
#   kneg             Issue 6's K-negatives measurement (bench/kneg.py): a random-init ~1.2B Llama
#                    (Llama-3.2-1B shape: hidden 2048, 16 layers, 32/8 heads, vocab 128256), bf16,
#                    sdpa, B=4 prompts of 384 tokens, completions of 8 tokens, K in {1, 3, 7, 19},
#                    median of 5 steps, plus the naive-full and TRL DPOTrainer K=1 rows (limit 470 s;
#                    rows that run out of GPU memory are reported as errors).
#   preferdiff-d3072 PreferDiff at the paper's width on Amazon Beauty: recipes/configs/beauty/
#                    preferdiff.yaml (d 3072, lr 1e-4, one example per user, valid Recall@5, patience
#                    10, device auto), seed 1, a resumable checkpoint every PD_SAVE_EVERY epochs (5). Needs the
#                    prepared data: carry runs/data/beauty (python -m data_prep --dataset seq-txt
#                    --input-dir .../amazon-seq/Beauty --max-history 10 --output-dir runs/data/beauty).
#                    Limit PD_LIMIT seconds (default 420); a run the limit stops prints the valid
#                    curve of its epochs and continues with the same command on a warm machine.
#
# Usage: bash bench/gpu_check.sh [OUTPUT_DIR] [CHECK...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${1:-bench_out/gpu_check}
shift || true
CHECKS=${*:-distributed kneg preferdiff-d3072}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

distributed() {
    local gpus procs configs
    gpus=$(nvidia-smi -L | wc -l)
    procs=$(( gpus >= 2 ? 2 : 1 ))
    configs="accelerate_configs/fsdp.yaml accelerate_configs/ddp.yaml"
    if "$PY" -c "import deepspeed" 2>/dev/null; then
        configs="$configs accelerate_configs/deepspeed_zero2.yaml accelerate_configs/deepspeed_zero3.yaml"
    else
        echo "deepspeed is not installed: the DeepSpeed ZeRO configs stay unverified (pip install deepspeed)"
    fi
    # a FAIL line is a result, not a reason to skip the checks after it
    timeout 150 "$PY" bench/distributed_check.py $configs --num_processes "$procs" --output-dir "$OUT/distributed" \
        || echo "distributed check: FAIL or timeout (see the lines above)"
    echo "results: $OUT/distributed/results.json"
}

kneg() {
    timeout 470 "$PY" bench/kneg.py --device cuda --dtype bfloat16 --attn sdpa --arch llama \
        --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 128256 \
        --batch 4 --prompt-len 384 --completion-len 8 --ks 1 3 7 19 --repeats 5 --output-dir "$OUT"
    echo "results: $OUT/results.json (run record: $OUT/run.json)"
}

preferdiff_d3072() {
    local data=${PD_DATA:-runs/data/beauty} run="$OUT/preferdiff-d3072-beauty" rc=0
    if [ ! -f "$data/meta.json" ]; then
        echo "preferdiff-d3072: skipped, no prepared dataset at $data (carry runs/data/beauty)"
        return 0
    fi
    local resume=()
    [ -d "$run/checkpoints" ] && resume=(--resume_from_checkpoint true)
    timeout "${PD_LIMIT:-420}" "$PY" -P recipes/recsys.py --config recipes/configs/beauty/preferdiff.yaml \
        --dataset_dir "$data" --output_dir "$run" --seed 1 --device cuda --save_every "${PD_SAVE_EVERY:-5}" --quiet true \
        "${resume[@]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "preferdiff-d3072: stopped with rc $rc before the end; valid Recall@5 of the epochs done:"
        "$PY" - "$run/checkpoints" <<'EOF'
import json, sys
from napo.recsys.state import last_checkpoint
last = last_checkpoint(sys.argv[1])
for h in json.loads((last / "state.json").read_text())["history"] if last else []:
    print(f"epoch {h['epoch']}: loss {h['loss']:.4f} valid {h.get('valid', float('nan')):.4f}")
EOF
    else
        "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: m[k] for k in ('full/hr@5','full/hr@10','full/ndcg@5','full/ndcg@10','train/epochs','train/best_epoch','train/fit_seconds')})" "$run/metrics.json"
    fi
}

for check in $CHECKS; do
    case "$check" in
        distributed) distributed ;;
        kneg) kneg ;;
        preferdiff-d3072) preferdiff_d3072 ;;
        *) echo "unknown check $check; choose from: distributed kneg preferdiff-d3072" >&2; exit 2 ;;
    esac
done

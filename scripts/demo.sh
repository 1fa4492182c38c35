#!/usr/bin/env bash
# The end-to-end demo on the embedded default (MovieLens-100K). Called by `make demo`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DEMO_DIR=${DEMO_DIR:-runs/demo}
mkdir -p "$DEMO_DIR"
"$PY" -m data_prep --dataset ml-100k --output-dir "$DEMO_DIR/data" --overwrite

"""Evaluation of LLM and classic recommenders: the launcher of `napo.scripts.evaluate` (= `napo-eval`).

    python recipes/evaluate.py --model_name_or_path M --adapter A --dataset_dir D --output_dir O
    accelerate launch --num_processes 2 recipes/evaluate.py ...same arguments...
"""

import sys
from pathlib import Path

# Python puts this folder first on the import path, and recipes/napo.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from napo.scripts.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Merge a LoRA adapter into its base (full precision): the launcher of `napo.scripts.export` (= `napo-export`).

    python recipes/export.py --adapter runs/ml-100k/napo --output_dir runs/ml-100k/napo-merged [--push_to_hub true --hub_model_id me/name]
"""

import sys
from pathlib import Path

# Python puts this folder first on the import path, and recipes/napo.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from napo.scripts.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Supervised fine-tuning: the launcher of `napo.scripts.sft` (same as the `napo-sft` command).

    accelerate launch recipes/sft.py --config recipes/configs/ml-100k/sft.yaml
"""

import sys
from pathlib import Path

# Python puts this folder first on the import path, and recipes/napo.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from napo.scripts.sft import main  # noqa: E402

if __name__ == "__main__":
    main()

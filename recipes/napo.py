"""Preference training (DPO / S-DPO / NAPO): the launcher of `napo.scripts.preference` (= `napo-train`).

    accelerate launch recipes/napo.py --config recipes/configs/ml-100k/napo.yaml
"""

import sys
from pathlib import Path

# Python puts this folder first on the import path, where this very file would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from napo.scripts.preference import main  # noqa: E402

if __name__ == "__main__":
    main()

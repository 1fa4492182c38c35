"""Recommenders without an LLM (Pop, SASRec, GRU4Rec, Caser, DreamRec, PreferDiff; MF, LightGCN,
MostPop): the launcher of `napo.scripts.recsys` (= `napo-recsys`).

    python recipes/recsys.py --config recipes/configs/lastfm/sasrec.yaml --dataset_dir D --output_dir O
    python recipes/recsys.py --config recipes/configs/ml-100k/mf-ssm.yaml --dataset_dir D --output_dir O
"""

import sys
from pathlib import Path

# Python puts this folder first on the import path, and recipes/napo.py would shadow the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from napo.scripts.recsys import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

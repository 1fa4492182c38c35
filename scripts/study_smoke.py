"""scripts/study.py end to end at toy scale: every stage, every method, 2 seeds, a few steps each.

    python scripts/study_smoke.py --output_dir runs/study-smoke      # about 20-40 CPU-minutes

Builds a synthetic prepared dataset (titles, 20 candidates), a tiny Llama with a BPE tokenizer
trained on it, the LLaRA-style auxiliary SASRec (recipes/configs/lastfm/sasrec-llara.yaml, 2
epochs), and a config folder whose {sft,dpo,sdpo,napo}-tiny.yaml are the LastFM study configs with
the budget cut to a few steps; then runs the study (tuning on valid, SFT retrained per seed,
training, evaluation, paired tables). It checks the machinery, not methods: the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOY = {  # what every toy config overrides in the real LastFM study configs
    "max_train_samples": 32, "max_eval_samples": 8, "max_steps": 4, "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8, "logging_steps": 1, "eval_steps": 4, "max_length": 256,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/study-smoke")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="*", help="a subset of scripts/study.py's methods (default: all)")
    args = p.parse_args(argv)
    from data_prep.prepared import load_prepared
    from data_prep.synthetic import synthetic_prepared
    from napo.models.tiny import build_tiny_from_data

    out = Path(args.output_dir).resolve()
    data = out / "data"
    start = time.time()
    if not (data / "meta.json").is_file():
        synthetic_prepared(data, num_items=60, rows=(64, 24, 24), num_candidates=20, item_format="title", seed=0)
    model = out / "tiny-model"
    if not (model / "config.json").is_file():
        dataset, items, _ = load_prepared(data)
        build_tiny_from_data(dataset, items, model, hidden_size=32, num_layers=2, num_heads=2, vocab_size=400, seed=0)
    aux = out / "sasrec-llara"
    if not (aux / "aux" / "meta.json").is_file():
        subprocess.run([sys.executable, str(REPO / "recipes/recsys.py"), "--config",
                        str(REPO / "recipes/configs/lastfm/sasrec-llara.yaml"), "--dataset_dir", str(data),
                        "--output_dir", str(aux), "--max_epochs", "2", "--quiet"], check=True, cwd=REPO)
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for stem in ("sft", "dpo", "sdpo", "napo"):
        config = yaml.safe_load((REPO / f"recipes/configs/lastfm/{stem}-tiny.yaml").read_text())
        config.update({k: v for k, v in TOY.items() if stem != "sft" or k in ("max_train_samples", "max_steps",
                                                                              "per_device_train_batch_size")})
        (configs / f"{stem}-tiny.yaml").write_text(yaml.safe_dump(config))
    study = [sys.executable, str(REPO / "scripts/study.py"), "--dataset_dir", str(data),
             "--model_name_or_path", str(model), "--sft", str(out / "sft-{seed}"), "--sft_seeds",
             "--aux_dir", str(aux / "aux"), "--config_dir", str(configs), "--output_dir", str(out / "study"),
             "--seeds", *map(str, args.seeds), "--lr_grid", "1e-3", "1e-2", "--valid_examples", "16",
             "--eval_examples", "24", "--eval_batch_size", "8"]
    if args.methods:
        study += ["--methods", *args.methods]
    subprocess.run(study, check=True, cwd=REPO)
    print(f"smoke study done in {time.time() - start:.0f} s: {out / 'study' / 'study.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

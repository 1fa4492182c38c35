"""Print the "how these numbers were made" section of the demo report (markdown).

    python scripts/demo_notes.py DEMO_DIR WALL_SECONDS >> DEMO_DIR/report.md

Everything comes from the run records the steps wrote (run.json, napo_tiny.json, metrics.json),
so the section describes what ran, not what was intended.
"""

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(demo_dir: str, wall_seconds: str) -> None:
    d = Path(demo_dir)
    tiny = _load(d / "tiny-model" / "napo_tiny.json")
    sft = _load(d / "sft" / "run.json").get("config", {})
    sasrec_run = _load(d / "sasrec" / "run.json")
    sasrec = _load(d / "sasrec" / "metrics.json")
    evaluation = _load(d / "eval" / "sft" / "run.json").get("config", {})
    lines = [
        "",
        "## How these numbers were made",
        "",
        "- Data: MovieLens-100K (`python -m data_prep --dataset ml-100k --item-format token`), "
        "users split 8:1:1, sliding windows of at most 10 items, 20 candidates per example "
        "(the target + 19 uniformly drawn items, LLaRA protocol). Items appear in prompts as one "
        "token each (`<item_ID>`), so that a tiny model can learn in minutes.",
        f"- Evaluation: {evaluation.get('max_examples')} test examples (a uniform sample, seed "
        f"{evaluation.get('sample_seed')}), the same rows for every method. `rank` orders the 20 "
        "candidates by the model's log-likelihood; `gen` decodes greedily and matches the answer "
        "(the papers' protocol); `gen HR@1 (candidates trie)` decodes greedily under a trie of the "
        "row's candidates, so every answer is a candidate.",
        f"- LLM: a random-init {tiny.get('arch', '?')} of {tiny.get('num_parameters', 0):,} parameters "
        f"(hidden {tiny.get('hidden_size')}, {tiny.get('num_layers')} layers), tokenizer trained on the "
        "prepared prompts; not a pretrained model, so absolute numbers say little about real LLMs.",
    ]
    if sft:
        t = sft.get("training", {})
        lines.append(
            f"- SFT: full fine-tune, {t.get('max_steps')} steps x batch {t.get('per_device_train_batch_size')}, "
            f"lr {t.get('learning_rate')} ({t.get('lr_scheduler_type')}), loss on the answer only."
        )
    for run, label in (("dpo", "DPO"), ("sdpo", "S-DPO"), ("napo", "NAPO (rescore)"), ("napo-reuse", "NAPO (reuse)")):
        cfg = _load(d / run / "run.json").get("config", {})
        if not cfg:
            continue
        t, m = cfg.get("training", {}), cfg.get("model", {})
        parts = [
            f"{t.get('max_steps')} steps x batch {t.get('per_device_train_batch_size')}",
            f"lr {t.get('learning_rate')}", f"LoRA r={m.get('lora_r')} on the SFT model",
            f"K={t.get('num_negatives')}", f"beta={t.get('beta')}", f"reference={t.get('reference')}",
        ]
        if t.get("loss_type") == "napo":
            parts += [f"sharing rho={t.get('share_ratio')} ({t.get('share_mode')})",
                      f"gamma0={t.get('gamma0')}, alpha={t.get('margin_alpha')}, m={t.get('margin_momentum')}"]
        lines.append(f"- {label}: " + ", ".join(str(p) for p in parts) + ".")
    if sasrec:
        cfg = sasrec_run.get("config", {})
        lines.append(
            f"- SASRec (also NAPO's auxiliary model): {cfg.get('num_blocks')} blocks, hidden {cfg.get('hidden')}, "
            f"loss {cfg.get('loss')}, lr {cfg.get('lr')}, early stopping on valid {cfg.get('select_metric')} "
            f"(patience {cfg.get('patience')}), "
            f"{sasrec.get('train/epochs')} epochs (at most {cfg.get('max_epochs')}) in "
            f"{sasrec.get('train/fit_seconds', 0):.0f} s "
            f"(best epoch {sasrec.get('train/best_epoch')}). Popularity = training counts."
        )
    seed = sft.get("training", {}).get("seed") if sft else None
    revision = sasrec_run.get("git_revision")
    lines += [
        f"- Seed {seed}; git revision {revision}; wall time of the whole demo {int(wall_seconds)} s "
        "on this machine's CPU.",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:3])

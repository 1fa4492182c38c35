"""Seconds per SFT step of the demo: TRL's fused LM head over every position vs the completion only.

Runs `napo-sft` (recipes/configs/ml-100k/sft-tiny.yaml, the demo's settings) for --steps steps on
the first steps x 16 training rows, once with TRL's own head (on a CPU: every position projected
through the full vocabulary) and once with ``RecSFTTrainer``'s compact head (only the positions
with a label), in turns, --repeats times; prints the medians of the trainer's own runtime per step
and the final losses of each run (identical up to rounding: the same rows, seed and model).

    python -m data_prep --dataset ml-100k --item-format token --output-dir /tmp/d/data
    python -m napo.models.tiny --dataset-dir /tmp/d/data --output-dir /tmp/d/tiny --item-tokens \\
        --hidden-size 64 --num-layers 2
    python bench/sft_step.py --dataset_dir /tmp/d/data --model /tmp/d/tiny

``--item-softmax`` times the compact head's next-token loss against ``item_softmax: true`` (the
cross-entropy over the item-token rows at the answer position; losses differ, they are other
objectives), e.g. on the history-prompt data of recipes/configs/ml-100k/sft-tiny-history.yaml.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--model", required=True, help="the tiny model directory (python -m napo.models.tiny)")
    p.add_argument("--config", default="recipes/configs/ml-100k/sft-tiny.yaml")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--item-softmax", action="store_true", help="compact next-token loss vs item_softmax")
    args = p.parse_args(argv)

    from napo.hub import RecSFTTrainer
    from napo.scripts import sft

    seconds = {"trl (all positions)": [], "compact (labels only)": []}
    if args.item_softmax:
        seconds = {"compact (labels only)": [], "item_softmax (answer position)": []}
    losses = {name: [] for name in seconds}
    for _ in range(args.repeats):
        for name in seconds:
            RecSFTTrainer.compact_head = not name.startswith("trl")
            with tempfile.TemporaryDirectory() as out:
                trainer = sft.main(["--config", args.config, "--dataset_dir", args.dataset_dir,
                                    "--model_name_or_path", args.model, "--output_dir", out,
                                    "--max_steps", str(args.steps), "--max_train_samples", str(16 * args.steps),
                                    "--logging_steps", str(args.steps), "--disable_tqdm", "true",
                                    "--item_softmax", str(name.startswith("item_softmax")).lower()])
            history = trainer.state.log_history
            seconds[name].append(history[-1]["train_runtime"] / args.steps)
            losses[name].append(next(h["loss"] for h in history if "loss" in h))
    RecSFTTrainer.compact_head = True
    base = statistics.median(next(iter(seconds.values())))
    print(f"\n{args.steps} steps of 16 rows, median of {args.repeats} runs in turns\n")
    print("| head | s/step | speed-up | mean loss of the run |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {base / med:.2f}x | {losses[name][0]:.6f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

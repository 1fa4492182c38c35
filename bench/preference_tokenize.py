"""Rows per second of the preference runs' tokenization (napo.collator.tokenize_preference_dataset),
with item-token completions spliced into the prompt's ids vs every prompt + completion tokenized.

Reads a prepared item-token directory and its tiny model (the demo's: runs/demo/data,
runs/demo/tiny-model), takes the first --rows train rows as the preference runs do, times both
ways in turns (--repeats) and checks that they give identical token ids.

    python bench/preference_tokenize.py --dataset_dir runs/demo/data --model runs/demo/tiny-model
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=4800)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from datasets import disable_caching
    from transformers import AutoTokenizer

    import napo.scoring as scoring
    from data_prep.prepared import load_prepared
    from napo.collator import tokenize_preference_dataset

    disable_caching()
    tok = AutoTokenizer.from_pretrained(args.model)
    split = load_prepared(args.dataset_dir)[0]["train"]
    split = split.select(range(min(args.rows, len(split))))
    real = scoring._joint_token_ids
    ways = {"every prompt + completion tokenized": lambda t, p, c, shortcut=True: real(t, p, c, shortcut=False),
            "item tokens spliced": real}
    seconds, columns = {name: [] for name in ways}, {}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            scoring._joint_token_ids = fn
            start = time.perf_counter()
            out = tokenize_preference_dataset(split, tok, max_prompt_length=376, max_completion_length=8)
            seconds[name].append(time.perf_counter() - start)
            columns[name] = (out["prompt_ids"], out["completion_ids"])
    scoring._joint_token_ids = real
    same = len({repr(c) for c in columns.values()}) == 1
    base = statistics.median(seconds["every prompt + completion tokenized"])
    print(f"\n{len(split)} rows, median of {args.repeats} in turns; identical token ids: {same}\n")
    print("| tokenization | seconds | rows/s | speed-up |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {len(split) / med:.0f} | {base / med:.1f}x |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

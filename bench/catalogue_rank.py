"""Full-catalogue ranking of an item-token LLM vs the 20-candidate ranking, per row (target: <= 1.5x).

Both rank the same history-only prompts (`data_prep --prompt-style history`) with the evaluator's
own per-batch work:
- full catalogue (`napo-eval --rank_over catalogue`): `napo.eval.runner.catalogue_batch` over
  `ItemTokenCatalogue`: one forward of the prompt, the log-softmax at the answer position read at
  every item token, then pessimistic ranks (history excluded) and the top-10 lists;
- 20 candidates (`--rank_over candidates`): `LikelihoodScorer` (packed: the prompt + 20 x (item
  token + EOS) in one row, the default) and, for reference, the `answer` layout (the prompt alone),
  then the target's rank.

Rows are synthetic with the MovieLens-100k shape (1,682 items, 10 history items, 20 candidates);
the model is a random-init Llama like `napo.models.tiny --item-tokens` (the demo's hidden 64 x 2
layers by default). Variants run in turns over the same batches (median of --repeats), so machine
load slows them alike; the ratios come from one run.

    python bench/catalogue_rank.py                  # about a minute on one core
    python bench/catalogue_rank.py --hidden 256 --layers 4
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def synthetic_rows(num_rows: int, num_items: int, history: int, num_candidates: int, seed: int = 0) -> list[dict]:
    from data_prep.prompts import item_token

    rng = random.Random(seed)
    rows = []
    for user in range(num_rows):
        seen = rng.sample(range(num_items), history + num_candidates)
        hist, cands = seen[:history], seen[history:]
        target = cands[0]
        rng.shuffle(cands)
        prompt = ("This user has watched " + ", ".join(item_token(i) for i in hist)
                  + " in the past. Predict the next movie this user will watch. Answer:")
        rows.append({"user_id": user, "history": hist, "target": target, "candidates": cands, "prompt": prompt,
                     "chosen": item_token(target), "rejected": [item_token(c) for c in cands if c != target]})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1682)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8000, help="BPE vocabulary before the item tokens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)

    import numpy as np
    import pandas as pd
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from napo.eval.catalogue import ItemTokenCatalogue
    from napo.eval.metrics import target_ranks
    from napo.eval.rank import LikelihoodScorer
    from napo.eval.rows import target_indices
    from napo.eval.runner import catalogue_batch
    from napo.models.tiny import train_bpe, wrap_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = synthetic_rows(args.rows, args.items, 10, 20)
    words = "the user has watched in past predict next movie this will watch answer viewer saw these".split()
    corpus = [" ".join(random.Random(i).sample(words, 8)) for i in range(2000)]
    tokenizer = wrap_tokenizer(train_bpe(corpus, vocab_size=min(args.vocab, 2000)), range(args.items))
    vocab = args.vocab + args.items  # the model's vocabulary: a real BPE's size plus the item tokens
    config = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=True, attn_implementation="sdpa",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    items = pd.DataFrame({"item_id": np.arange(args.items), "title": [f"Movie {i}" for i in range(args.items)]})
    catalogue = ItemTokenCatalogue(model, tokenizer, items)
    packed = LikelihoodScorer(model, tokenizer, layout="packed")
    answer = LikelihoodScorer(model, tokenizer, layout="answer")
    batches = []
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start: start + args.batch_size]
        batches.append(({k: [r[k] for r in chunk] for k in chunk[0]}, list(range(start, start + len(chunk)))))

    def full(batch, indices):
        return catalogue_batch(catalogue, batch, indices, num_items=args.items, exclude_history=True)

    def candidates(scorer):
        def run(batch, indices):
            return target_ranks(scorer(batch, indices), target_indices(batch))
        return run

    variants = {"full catalogue (1 forward, log-softmax at the item rows)": full,
                "20 candidates, packed (prompt + 20 x 2 tokens)": candidates(packed),
                "20 candidates, answer layout (prompt only)": candidates(answer)}
    prompt_tokens = statistics.mean(len(tokenizer(r["prompt"])["input_ids"]) for r in rows)

    def timed(fn):
        start = time.perf_counter()
        for batch, indices in batches:
            fn(batch, indices)
        return (time.perf_counter() - start) / len(rows)

    times = {name: [] for name in variants}
    with torch.no_grad():
        for fn in variants.values():
            timed(fn)  # warm-up
        for _ in range(args.repeats):
            for name, fn in variants.items():  # in turns
                times[name].append(timed(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["20 candidates, packed (prompt + 20 x 2 tokens)"]
    print(f"Ranking cost per row: Llama {args.hidden} x {args.layers}, vocabulary {vocab:,} ({args.items:,} item "
          f"tokens), {args.rows} rows in batches of {args.batch_size}, prompt {prompt_tokens:.0f} tokens, median of "
          f"{args.repeats}, {torch.get_num_threads()} threads")
    print("| ranking | ms / row | / 20 candidates (packed) |")
    print("|---|---|---|")
    for name in variants:
        print(f"| {name} | {med[name] * 1000:.2f} | {med[name] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Examples per second of the two evaluation modes on a tiny model: `rank` (log-likelihood of all
C candidates; packed = the prompt encoded once, naive = one row per candidate) vs `generate`
(greedy decoding, up to max_new_tokens, then title matching).

    python bench/eval_speed.py --quick                  # ~1 minute on 2 CPU cores
    python bench/eval_speed.py                          # 20 candidates, ml-100k-sized prompts
    python bench/eval_speed.py --dataset_dir runs/shared-data/ml-100k --model_name_or_path M

Without --dataset_dir a synthetic interaction log is prepared with data_prep (20 candidates,
history 10, movie template), and without --model_name_or_path a random-init tiny Llama is built
on it. A random-init model never emits EOS, so `generate` runs all max_new_tokens steps: the
papers' worst case (a trained model stops after the title, ~5-10 tokens; the column
"gen tokens" says how many were generated on average).
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

_WORDS = ("Star", "Night", "River", "Golden", "Ghost", "City", "Blue", "Island", "Dream", "Heat",
          "Love", "Red", "Man", "Day", "Wave", "Stone", "Winter", "Fire", "Silent", "Lost")


def synthetic_dataset(root: Path, *, num_users: int, num_items: int, per_user: int, seed: int = 0) -> Path:
    """A prepared dataset from a random interaction log (data_prep `interactions` source)."""
    from data_prep.__main__ import main as data_prep_main

    rng = random.Random(seed)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / "items.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title"])
        for i in range(num_items):
            writer.writerow([i, f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} ({1950 + i % 70}) #{i}"])
    with open(raw / "interactions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for u in range(num_users):
            for t, item in enumerate(rng.sample(range(num_items), per_user)):
                writer.writerow([u, item, 1_000_000 + 1000 * u + t])
    out = root / "prepared"
    rc = data_prep_main(["--dataset", "interactions", "--interactions", str(raw / "interactions.csv"),
                         "--items", str(raw / "items.csv"), "--output-dir", str(out), "--num-candidates", "20",
                         "--max-history", "10", "--domain", "movie", "--quiet"])
    if rc != 0:
        raise SystemExit(f"data_prep failed with exit code {rc}")
    return out


def timed(fn, batches, repeats: int) -> tuple[float, list]:
    """Median seconds over `repeats` passes of fn over all batches (after one warm-up batch)."""
    fn(*batches[0])
    times, outputs = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [fn(*b) for b in batches]
        times.append(time.perf_counter() - start)
    return statistics.median(times), outputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in about a minute")
    p.add_argument("--dataset_dir", help="prepared dataset (default: a synthetic one)")
    p.add_argument("--model_name_or_path", help="causal LM (default: a random-init tiny Llama)")
    p.add_argument("--split", default="test")
    p.add_argument("--num_examples", type=int, help="examples timed (default 64, --quick 16)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=20)
    p.add_argument("--hidden_size", type=int, help="tiny model width (default 128, --quick 64)")
    p.add_argument("--num_layers", type=int, help="tiny model depth (default 4, --quick 2)")
    p.add_argument("--repeats", type=int, help="timed passes, median reported (default 3, --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--skip_naive", action="store_true", help="do not time the naive rank layout")
    args = p.parse_args(argv)
    num_examples = args.num_examples or (16 if args.quick else 64)
    hidden = args.hidden_size or (64 if args.quick else 128)
    layers = args.num_layers or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.prepared import load_prepared
    from napo.eval.generate import GreedyGenerator
    from napo.eval.matching import match_answer
    from napo.eval.rank import LikelihoodScorer
    from napo.eval.rows import batch_candidate_titles
    from napo.models.tiny import build_tiny_model

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="napo-eval-speed-"))
    dataset_dir = args.dataset_dir or synthetic_dataset(tmp, num_users=400, num_items=400, per_user=14)
    model_dir = args.model_name_or_path
    if model_dir is None:
        model_dir = tmp / "tiny"
        build_tiny_model(dataset_dir, model_dir, hidden_size=hidden, num_layers=layers,
                         num_heads=4, vocab_size=2000, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
    dataset, _, _ = load_prepared(dataset_dir)
    rows = dataset[args.split].select(range(min(num_examples, len(dataset[args.split]))))
    batches = [(rows[i: i + args.batch_size], list(range(i, min(i + args.batch_size, len(rows)))))
               for i in range(0, len(rows), args.batch_size)]
    n = len(rows)

    packed = LikelihoodScorer(model, tokenizer, layout="packed")
    examples = packed.tokenize(rows[:])
    prompt_tokens = statistics.mean(len(e["prompt_ids"]) for e in examples)
    completion_tokens = statistics.mean(len(c) for e in examples for c in e["completion_ids"])
    num_candidates = len(rows[0]["candidates"])
    results = []
    t_packed, scores = timed(packed, batches, repeats)
    results.append(("rank (packed)", t_packed, None))
    if not args.skip_naive:
        naive = LikelihoodScorer(model, tokenizer, layout="naive")
        t_naive, naive_scores = timed(naive, batches, repeats)
        diff = max((a - b).abs().max().item() for a, b in zip(scores, naive_scores, strict=True))
        results.append(("rank (naive)", t_naive, None))
    generator = GreedyGenerator(model, tokenizer, max_new_tokens=args.max_new_tokens)
    t_gen, _ = timed(lambda b, i: generator.generate_ids(b), batches, repeats)
    ids = [x for b in batches for x in generator.generate_ids(b[0])]
    gen_tokens = statistics.mean(len(x) for x in ids)
    answers = [generator.decode(x) for x in ids]
    titles = batch_candidate_titles(rows[:])
    valid = sum(match_answer(a, t).valid for a, t in zip(answers, titles, strict=True))
    results.append(("generate (greedy)", t_gen, gen_tokens))

    print(f"eval speed: {n} examples x {num_candidates} candidates, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, fp32, median of {repeats}; model {model_dir if args.model_name_or_path else f'tiny llama hidden {hidden} x {layers} layers'}")
    print(f"mean prompt {prompt_tokens:.0f} tokens, mean completion {completion_tokens:.1f} tokens "
          f"(title + EOS), generate up to {args.max_new_tokens} new tokens")
    print()
    print("| mode | seconds | examples/s | vs generate | gen tokens |")
    print("|---|---|---|---|---|")
    for name, seconds, tokens in results:
        print(f"| {name} | {seconds:.2f} | {n / seconds:.1f} | {t_gen / seconds:.2f}x | "
              f"{'' if tokens is None else f'{tokens:.1f}'} |")
    if not args.skip_naive:
        print(f"\npacked vs naive scores: max |diff| = {diff:.2e}; packed is {t_naive / t_packed:.2f}x faster")
    print(f"generate valid answers: {valid}/{n} (a random-init model rarely names a title)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

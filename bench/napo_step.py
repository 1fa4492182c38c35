"""What does NAPO's sharing cost per training step? rescore vs reuse vs the same trainer's DPO (K=1).

One step = the collator on 16 dataset rows + ``NAPOTrainer.training_step`` (forward, loss with the
negative pool and margin, backward; no optimizer step), on a random-init Qwen2 with a LoRA, at
the paper's NAPO shape: global batch 16 (one process), K = 3 own negatives, rho 0.7 (10 partners,
up to 33 negatives per row), prompts of about 384 tokens, titles of about 8 tokens, with a
byte-level BPE tokenizer trained on the titles (so borrowed titles go through the real joint
tokenization of ``rescore``). The rows are fixed; modes are timed in turns (median of --repeats
after a warm-up) so that a loaded machine slows them alike, and ratios come from one run.

    python bench/napo_step.py             # a few minutes on 2 CPU cores
    python bench/napo_step.py --quick     # smaller shapes (checks the script)

With ``--item-tokens`` the items are item tokens (`<item_i>`, one added token each, as
`napo.models.tiny --item-tokens` makes) and the trainer scores with ``scoring: answer``: one
forward of the prompt per row, every completion (own and borrowed) read from the answer
position's log-softmax. Rescore should then cost what reuse costs (target: <= 1.1x); the packed
layout's rescore on the same rows is timed beside it for reference.

    python bench/napo_step.py --item-tokens
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

WORDS = ("Star", "Night", "River", "Golden", "Ghost", "City", "Blue", "Island", "Dream", "Heat", "Love",
         "Red", "Man", "Day", "Wave", "Stone", "Winter", "Fire", "Silent", "Lost", "Moon", "Road")


def synthetic_rows(num_rows: int, num_items: int, history: int, seed: int = 0,
                   item_tokens: bool = False) -> tuple[list[dict], list[str]]:
    rng = random.Random(seed)
    titles = [" ".join(rng.choice(WORDS) for _ in range(3)) + f" ({1900 + i})" for i in range(num_items)]
    if item_tokens:
        titles = [f"<item_{i}>" for i in range(num_items)]
    rows = []
    for user in range(num_rows):
        seen = rng.sample(range(num_items), history + 20)
        hist, cands = seen[:history], seen[history:]
        target = cands[0]
        rng.shuffle(cands)
        prompt = ("This user has watched " + ", ".join(titles[i] for i in hist) + ". Choose one of these 20 movies: "
                  + ", ".join(titles[i] for i in cands) + ". Answer:")
        space = "" if item_tokens else " "  # an item token is the whole completion (data_prep's join)
        rows.append({"user_id": user, "history": hist, "target": target, "candidates": cands, "prompt": prompt,
                     "chosen": space + titles[target], "rejected": [space + titles[c] for c in cands if c != target]})
    return rows, titles


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--history", type=int, default=37, help="history titles per prompt (37: about 384 prompt tokens)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--item-tokens", action="store_true", help="items as item tokens, scoring answer (see above)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.hidden, args.layers, args.history = 2, 64, 2, 4

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from napo.collator import add_aux_columns
    from napo.config import NAPOConfig
    from napo.models.tiny import train_bpe, wrap_tokenizer
    from napo.trainer import NAPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    num_items = 400
    rows, titles = synthetic_rows(64, num_items, args.history, item_tokens=args.item_tokens)
    corpus = [r["prompt"] for r in rows] + titles
    if args.item_tokens:  # BPE on the words of the prompts; the items are added tokens
        corpus = [re.sub(r"<item_\d+>", " ", t) for t in corpus]
    tokenizer = wrap_tokenizer(train_bpe(corpus, vocab_size=600), range(num_items) if args.item_tokens else ())
    prompt_len = statistics.mean(len(tokenizer(r["prompt"])["input_ids"]) for r in rows)
    space = "" if args.item_tokens else " "
    title_len = statistics.mean(len(tokenizer(space + t, add_special_tokens=False)["input_ids"]) + 1 for t in titles)
    gen = torch.Generator().manual_seed(0)
    data = add_aux_columns(Dataset.from_list(rows), torch.randn(len(rows), 16, generator=gen),
                           torch.randn(len(rows), 20, generator=gen))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, attn_implementation="sdpa", use_cache=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    base_state = Qwen2ForCausalLM(config).state_dict()
    modes = {
        "DPO (K=1)": dict(loss_type="dpo"),
        "NAPO reuse": dict(loss_type="napo", share_mode="reuse"),
        "NAPO rescore": dict(loss_type="napo", share_mode="rescore"),
        "NAPO no sharing": dict(loss_type="napo", share_negatives=False),
    }
    if args.item_tokens:  # every mode on the answer layout, plus packed rescore for reference
        modes = {name: {**m, "scoring": "answer"} for name, m in modes.items()}
        modes["NAPO rescore (packed)"] = dict(loss_type="napo", share_mode="rescore", scoring="packed")
    trainers, batches = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in modes.items():
            model = Qwen2ForCausalLM(config)
            model.load_state_dict(base_state)
            settings = dict(output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=16, max_steps=1,
                            report_to="none", bf16=False, gradient_checkpointing=False, save_strategy="no",
                            use_cpu=True, seed=0, dataloader_pin_memory=False, logging_steps=1)
            if overrides["loss_type"] == "napo":
                settings["aux_dir"] = "joined"  # the aux columns are already in the rows
            trainer = NAPOTrainer(model, args=NAPOConfig(**settings, **overrides), train_dataset=data,
                                  processing_class=tokenizer,
                                  peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                         task_type="CAUSAL_LM"))
            trainer.current_gradient_accumulation_steps = 1  # set by train(); we call training_step directly
            trainers[name] = trainer
            batches[name] = [trainer.train_dataset[i] for i in range(16)]

        def step(name):
            trainer = trainers[name]
            trainer.model.train()
            start = time.perf_counter()  # the collator is part of the step (rescore collates in it)
            inputs = trainer.data_collator(batches[name])
            trainer.training_step(trainer.model, trainer._prepare_inputs(inputs))
            elapsed = time.perf_counter() - start
            trainer.model.zero_grad(set_to_none=True)
            return elapsed

        times = {name: [] for name in modes}
        for name in modes:
            step(name)  # warm-up
        for _ in range(args.repeats):
            for name in modes:  # in turns: load on the machine affects every mode alike
                times[name].append(step(name))
        pool = {name: trainers[name]._metrics["train"].get("napo/pool_size", [1.0])[-1] for name in modes}

    med = {name: statistics.median(t) for name, t in times.items()}
    items = "item tokens, scoring answer" if args.item_tokens else "titles, scoring packed"
    print(f"NAPO step cost: Qwen2 {args.hidden} x {args.layers}, LoRA r 8, batch 16, K 3, rho 0.7, {items}, "
          f"prompt {prompt_len:.0f} tokens, title {title_len:.1f} tokens (with EOS), median of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    print("| mode | negatives per row | s/step | / NAPO reuse | / DPO (K=1) |")
    print("|---|---|---|---|---|")
    for name in modes:
        print(f"| {name} | {pool[name]:.1f} | {med[name]:.3f} | {med[name] / med['NAPO reuse']:.2f}x | "
              f"{med[name] / med['DPO (K=1)']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

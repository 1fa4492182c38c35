"""How much do K negatives cost? Naive vs packed (prefix-shared) scoring, and TRL's DPOTrainer.

One training step = collated batch -> napo.scoring.completion_logps -> reference-free
listwise_preference_loss (beta 1) -> backward, on a random-init causal LM with all parameters
trainable. Collation happens before the clock starts (a DataLoader does it). Every configuration
runs in its own subprocess so its peak memory is its own:

- time: median of --repeats timed steps after one warm-up step (seconds per step);
- memory on CPU: peak resident set size (VmHWM after resetting it through /proc/self/clear_refs)
  minus the resident size just before the first step, i.e. what the steps themselves add
  (activations, gradients, logits), in MiB; on CUDA: torch.cuda.max_memory_allocated minus the
  allocated memory before the first step.

Rows: naive and packed at each K; `naive-full` (K = 1, the usual concatenated forward that takes
log_softmax over every position); `trl-dpo` (TRL DPOTrainer, K = 1, its defaults: gradient
checkpointing, a reference-model copy, AdamW step included). `limit` is the token ratio
(K+1)(P+L) / (P+(K+1)L), the most packing can save.

    python bench/kneg.py               # issue 6's setting (quiet machine: a few minutes)
    python bench/kneg.py --quick       # tiny sizes, seconds (checks that the script works)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUT_ROWS = ("naive", "packed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, K in {1, 3}, 2 repeats (checks every code path in about a minute)")
    p.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4, help="prompts per step (B)")
    p.add_argument("--prompt-len", type=int, default=384, help="prompt tokens (P)")
    p.add_argument("--completion-len", type=int, default=8, help="tokens per completion (L)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 7, 19], help="numbers of negatives K")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--no-trl", action="store_true", help="skip the TRL DPOTrainer row")
    p.add_argument("--output-dir", help="write results.json and run.json here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.intermediate, args.vocab = 64, 2, 128, 512
        args.batch, args.prompt_len, args.completion_len = 2, 64, 4
        args.ks, args.repeats = [1, 3], 2
    return args


# --------------------------------------------------------------------------- memory probes


class MemoryProbe:
    """Extra memory of the measured steps (MiB) relative to the moment `start` is called."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"

    @staticmethod
    def _status_kib(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{field} missing from /proc/self/status")

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = self._status_kib("VmRSS") * 1024

    def peak_mib(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = self._status_kib("VmHWM") * 1024
        return (peak - self.base) / 2**20

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)


# --------------------------------------------------------------------------- one configuration


def build_model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(args.seed)
    common = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                  num_hidden_layers=args.layers, num_attention_heads=args.heads,
                  num_key_value_heads=args.kv_heads, attention_dropout=0.0,
                  max_position_embeddings=4096, attn_implementation=args.attn, use_cache=False)
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if args.arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    with torch.device(args.device):  # random init directly on the device (fast for ~1B models)
        model = model_cls(config_cls(**common))
    return model.to(getattr(torch, args.dtype)).train()


def make_examples(args, num_negatives: int) -> list[dict]:
    import random

    rng = random.Random(args.seed)
    tok = lambda: rng.randrange(3, args.vocab)  # noqa: E731  (0-2 kept for pad/bos/eos)
    return [{"prompt_ids": [tok() for _ in range(args.prompt_len)],
             "completion_ids": [[tok() for _ in range(args.completion_len)] for _ in range(num_negatives + 1)]}
            for _ in range(args.batch)]


def run_scorer(args, layout: str, num_negatives: int) -> dict:
    """naive / packed through napo.scoring; naive-full = full-logits concatenated forward."""
    import torch

    from napo.losses import listwise_preference_loss
    from napo.scoring import collate_listwise, completion_logps

    device = torch.device(args.device)
    model = build_model(args)
    examples = make_examples(args, num_negatives)
    scorer_layout = "naive" if layout == "naive-full" else layout
    batch = collate_listwise(examples, 0, scorer_layout, dtype=getattr(torch, args.dtype))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def logps_full():
        # What TRL-style code does: logits at every position, log_softmax, keep completion tokens.
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token_logps = torch.log_softmax(logits.float(), -1)[batch["gather_row"], batch["gather_pos"]]
        token_logps = token_logps.gather(-1, batch["gather_target"][:, None]).squeeze(-1)
        flat = torch.zeros(batch["completion_mask"].numel(), device=device)
        return flat.index_add(0, batch["gather_slot"], token_logps).view(batch["completion_mask"].shape)

    def step():
        model.zero_grad(set_to_none=True)
        logps = logps_full() if layout == "naive-full" else completion_logps(model, batch)[0]
        loss = listwise_preference_loss(logps[:, 0], logps[:, 1:], beta=1.0).mean()
        loss.backward()
        return loss.item()

    probe = MemoryProbe(device)
    probe.start()
    step()  # warm-up
    times = []
    for _ in range(args.repeats):
        probe.sync()
        t0 = time.perf_counter()
        step()
        probe.sync()
        times.append(time.perf_counter() - t0)
    tokens = int(batch["input_ids"].numel())
    return {"time_s": statistics.median(times), "peak_mib": probe.peak_mib(), "tokens": tokens}


def run_trl(args) -> dict:
    """TRL DPOTrainer, K = 1, defaults (gradient checkpointing, reference copy, AdamW)."""
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, args.vocab)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    steps = args.repeats + 1
    rows = []
    for s in range(steps):
        for ex in make_examples(argparse.Namespace(**{**vars(args), "seed": args.seed + s}), 1):
            words = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
            rows.append({"prompt": words(ex["prompt_ids"]), "chosen": " " + words(ex["completion_ids"][0]),
                         "rejected": " " + words(ex["completion_ids"][1])})
    model = build_model(args)
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            probe.sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            probe.sync()
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch, max_steps=steps,
                           learning_rate=1e-6, logging_steps=10**6, save_strategy="no", report_to="none",
                           max_length=None, use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16",
                           dataloader_num_workers=0, seed=args.seed)
        # a random-init model has no path for TRL to load its reference copy from: hand it one
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[Timer()])
        probe = MemoryProbe(torch.device(args.device))
        probe.start()
        trainer.train()
    return {"time_s": statistics.median(times[1:]), "peak_mib": probe.peak_mib(),
            "gradient_checkpointing": bool(config.gradient_checkpointing)}


def child(spec: dict, args) -> dict:
    if spec["layout"] == "trl-dpo":
        return run_trl(args)
    return run_scorer(args, spec["layout"], spec["k"])


# --------------------------------------------------------------------------- driver


def token_ratio(k: int, p: int, length: int) -> float:
    return (k + 1) * (p + length) / (p + (k + 1) * length)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        spec = json.loads(args._child)
        try:
            result = child(spec, args)
        except Exception as exc:  # e.g. CUDA out of memory: report it as the row's result
            result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    specs = [{"layout": lay, "k": k} for lay in LAYOUT_ROWS for k in args.ks]
    specs.append({"layout": "naive-full", "k": 1})
    if not args.no_trl:
        specs.append({"layout": "trl-dpo", "k": 1})
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    if args.quick:  # the child re-derives the quick sizes itself
        passthrough.append("--quick")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    results = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    for spec in tqdm(specs, desc="kneg configurations"):
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--_child", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            result = {"error": f"exit {proc.returncode}: {tail[:200]}"}
        else:
            result = json.loads(line[-1][len("RESULT "):])
        results.append({**spec, **result})
        print(json.dumps(results[-1]), flush=True)  # partial results survive a timeout

    base = next((r for r in results if r["layout"] == "naive" and r["k"] == 1 and "error" not in r), None)
    by_key = {(r["layout"], r["k"]): r for r in results}
    p, length = args.prompt_len, args.completion_len
    print(f"\n{args.arch} hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}, {args.dtype}, "
          f"{args.attn}, device {args.device}, B={args.batch}, P={p}, L={length}, median of {args.repeats}; "
          f"memory = {'CUDA max_memory_allocated' if args.device.startswith('cuda') else 'peak RSS'} "
          "increase over the pre-step baseline")
    print("| scorer | K | s/step | peak MiB | time / naive K=1 | mem / naive K=1 | naive / packed (same K) | token limit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['layout']} | {r['k']} | {r['error']} | | | | | |")
            continue
        t_ratio = f"{r['time_s'] / base['time_s']:.2f}x" if base else "-"
        m_ratio = f"{r['peak_mib'] / base['peak_mib']:.2f}x" if base and base["peak_mib"] > 0 else "-"
        speedup = "-"
        naive_same = by_key.get(("naive", r["k"]))
        if r["layout"] == "packed" and naive_same and "error" not in naive_same:
            speedup = f"{naive_same['time_s'] / r['time_s']:.1f}x"
        limit = f"{token_ratio(r['k'], p, length):.1f}x" if r["layout"] == "packed" else ""
        print(f"| {r['layout']} | {r['k']} | {r['time_s']:.3f} | {r['peak_mib']:.0f} | {t_ratio} | "
              f"{m_ratio} | {speedup} | {limit} |")
    if args.no_trl:
        print("| trl-dpo | 1 | not measured (--no-trl) | | | | | |")

    if args.output_dir:
        from napo.utils import write_run_info

        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_run_info(out, {k: v for k, v in vars(args).items() if k != "_child"}, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

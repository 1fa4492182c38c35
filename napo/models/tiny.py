"""Offline tiny causal LM + tokenizer built from a prepared dataset.

Real users pass a Hub id (e.g. ``meta-llama/Llama-2-7b-hf``). Tests, demos and CPU runs need a
model that exists without the network: this module trains a byte-level BPE tokenizer on the
dataset's own text and builds a randomly initialised Llama- or Qwen2-architecture model around it.
Both are written with ``save_pretrained`` so that ``AutoTokenizer.from_pretrained(M)`` and
``AutoModelForCausalLM.from_pretrained(M)`` load them like any Hub checkpoint.

The tokenizer behaves like a Hub causal-LM tokenizer (Llama style): ``<s>`` is prepended to every
encoded text, ``</s>`` is the EOS token but is not appended (TRL appends it to completions
itself), and ``<pad>`` is a distinct padding token.

With ``item_tokens=True`` one added token ``<item_{id}>`` is created per item of the items table,
so that an item-token dataset (``meta["item_format"] == "token"``) has completions of exactly one
token followed by EOS. Prompt and completion are joined verbatim (``prompt + chosen``, as
``napo.scoring`` and TRL's SFTTrainer do), so item tokens keep the whitespace around them
(no ``lstrip``): the tokens of a prompt alone are then always a prefix of the tokens of
prompt + completion, and decoding gives the text back exactly.

CLI::

    python -m napo.models.tiny --dataset-dir D --output-dir M [--arch llama|qwen2]
        [--hidden-size 128] [--num-layers 4] [--num-heads 4] [--vocab-size 8000]
        [--item-tokens] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from data_prep.errors import UserError
from data_prep.prompts import PLACEHOLDERS, item_token

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
# Fixed ids 0, 1, 2 (in this order) for the special tokens.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
ARCHITECTURES = ("llama", "qwen2")
_ITEM_TOKEN_RE = re.compile(r"<item_\d+>|" + "|".join(re.escape(t) for t in PLACEHOLDERS.values()))
# Rows per split used to train the tokenizer and to measure prompt lengths: the template text
# repeats in every prompt and every title is in the corpus anyway, so a sample is enough and
# keeps the build at a few seconds on ml-100k-sized data.
_SAMPLE_ROWS = 2000


class TinyModelError(UserError):
    """A one-line, user-facing problem with the inputs of the tiny-model builder."""


def _sample_rows(split: Any, limit: int) -> Any:
    """The first ``limit`` rows of a datasets split (deterministic: row order is the contract)."""
    return split.select(range(min(limit, len(split))))


def training_corpus(dataset: Any, titles: Sequence[str], *, sample_rows: int = _SAMPLE_ROWS) -> list[str]:
    """Texts the BPE tokenizer is trained on: item titles, then prompts and chosen of a sample.

    Item tokens (``<item_N>``) and LLaRA's placeholders are removed from the texts: they become
    added tokens, so spending BPE merges on them would only waste vocabulary.
    """
    texts = [str(t) for t in titles]
    for name in sorted(dataset.keys()):
        rows = _sample_rows(dataset[name], sample_rows)
        texts.extend(rows["prompt"])
        texts.extend(rows["chosen"])
    return [_ITEM_TOKEN_RE.sub(" ", t) for t in texts]


def train_bpe(texts: Iterable[str], vocab_size: int = 8000) -> Any:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` (GPT-2 style pre-tokenization).

    Deterministic: the same texts and vocab size give the same vocabulary and merges.
    Special tokens get ids 0 (``<pad>``), 1 (``<s>``), 2 (``</s>``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer


def wrap_tokenizer(backend: Any, item_ids: Sequence[int] = (), padding_side: str = "right",
                   placeholders: bool = False) -> Any:
    """Wrap a trained ``tokenizers.Tokenizer`` as a transformers fast tokenizer.

    BOS is prepended by the post-processor (``add_bos_token=True``), EOS is defined but not
    appended, the pad token is ``<pad>`` (distinct from EOS). ``item_ids`` become one added token
    each, in the given order, after the BPE vocabulary; with ``placeholders`` LLaRA's placeholder
    tokens (``data_prep.prompts.PLACEHOLDERS``) are added last, as special tokens.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    # transformers 5 does not save add_bos_token: the tokenizer.json post-processor (which prepends
    # <s>) is what a reloaded tokenizer uses, as for Hub Llama tokenizers.
    if item_ids:
        # special=False: item tokens are content, so decode(skip_special_tokens=True) keeps them.
        added = [
            AddedToken(item_token(i), lstrip=False, rstrip=False, normalized=False, special=False)
            for i in item_ids
        ]
        tokenizer.add_tokens(added)
    if placeholders:
        tokenizer.add_special_tokens({"additional_special_tokens": list(PLACEHOLDERS.values())},
                                     replace_extra_special_tokens=False)
    return tokenizer


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def max_prompt_tokens(tokenizer: Any, dataset: Any, *, sample_rows: int = _SAMPLE_ROWS) -> int:
    """Longest ``prompt + chosen`` (+ EOS) in tokens over a sample of every split."""
    longest = 0
    for name in sorted(dataset.keys()):
        rows = _sample_rows(dataset[name], sample_rows)
        texts = [p + c + EOS_TOKEN for p, c in zip(rows["prompt"], rows["chosen"], strict=True)]
        if texts:
            longest = max(longest, max(len(ids) for ids in tokenizer(texts)["input_ids"]))
    return longest


def build_config(
    arch: str,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    max_position_embeddings: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> Any:
    """A small Llama/Qwen2 config with tied embeddings (intermediate size 4 x hidden)."""
    from transformers import LlamaConfig, Qwen2Config

    if arch not in ARCHITECTURES:
        raise TinyModelError(f"--arch {arch!r} is not supported: choose one of {', '.join(ARCHITECTURES)}")
    if hidden_size % num_heads:
        raise TinyModelError(
            f"--hidden-size {hidden_size} is not divisible by --num-heads {num_heads}: pick sizes that divide"
        )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)


def build_tiny_from_data(
    dataset: Any,
    items: Any,
    output_dir: str | Path,
    *,
    arch: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    vocab_size: int = 8000,
    item_tokens: bool = False,
    seed: int = 0,
    padding_side: str = "right",
    placeholders: bool = False,
    source: dict | None = None,
) -> dict:
    """Build and save the tokenizer and the random-init model from in-memory data.

    Args:
        dataset: ``datasets.DatasetDict`` with at least ``prompt`` and ``chosen`` columns.
        items: ``pandas.DataFrame`` with ``item_id`` and ``title`` (the prepared items table).
        output_dir: where ``save_pretrained`` writes the model, the tokenizer and ``napo_tiny.json``.
    Returns:
        The record written to ``output_dir/napo_tiny.json``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from napo.utils import package_versions

    out = Path(output_dir)
    item_ids = sorted(int(i) for i in items["item_id"])
    texts = training_corpus(dataset, list(items["title"]))
    if not any(t.strip() for t in texts):
        raise TinyModelError("the dataset has no text to train a tokenizer on: check its prompts and titles")
    backend = train_bpe(texts, vocab_size=vocab_size)
    tokenizer = wrap_tokenizer(backend, item_ids if item_tokens else (), padding_side=padding_side,
                               placeholders=placeholders)

    longest = max_prompt_tokens(tokenizer, dataset)
    # RoPE has no learned positions, so a generous bound costs nothing; 2x covers unsampled rows.
    max_positions = max(2048, _next_power_of_two(2 * longest))
    config = build_config(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)

    record = {
        "builder": "napo.models.tiny",
        "arch": arch,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "bpe_vocab_size_requested": vocab_size,
        "bpe_vocab_size": backend.get_vocab_size(),
        "vocab_size": len(tokenizer),
        "item_tokens": bool(item_tokens),
        "num_item_tokens": len(item_ids) if item_tokens else 0,
        "placeholders": bool(placeholders),
        "max_sampled_sequence_tokens": longest,
        "max_position_embeddings": max_positions,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "tokenizer_sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest(),
        "source": source or {},
        "versions": package_versions(),
    }
    (out / "napo_tiny.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def build_tiny_model(dataset_dir: str | Path, output_dir: str | Path, **kw: Any) -> dict:
    """Build the tiny model + tokenizer from a prepared dataset directory (see docs/contracts.md).

    Keyword arguments are those of :func:`build_tiny_from_data`. With ``item_tokens=True`` on a
    title-format dataset the item tokens are still added (they are then simply unused). A dataset
    with LLaRA's placeholders (``data_prep --item-placeholders``) gets them as special tokens.
    """
    from data_prep.prepared import load_prepared
    from data_prep.prompts import has_placeholders

    dataset, items, meta = load_prepared(dataset_dir)
    source = {
        "dataset_dir": str(dataset_dir),
        "dataset": meta.get("dataset"),
        "item_format": meta.get("item_format"),
        "fingerprint": meta.get("fingerprint"),
    }
    kw.setdefault("placeholders", has_placeholders(meta))
    return build_tiny_from_data(dataset, items, output_dir, source=source, **kw)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m napo.models.tiny",
        description="Build an offline tiny Llama/Qwen2 model and a BPE tokenizer from a prepared dataset.",
    )
    parser.add_argument("--dataset-dir", required=True, help="prepared dataset directory (data_prep output)")
    parser.add_argument("--output-dir", required=True, help="where to save the model and tokenizer")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="llama")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary size (before item tokens)")
    parser.add_argument("--item-tokens", action="store_true", help="add one token <item_{id}> per item")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        record = build_tiny_model(
            args.dataset_dir,
            args.output_dir,
            arch=args.arch,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            vocab_size=args.vocab_size,
            item_tokens=args.item_tokens,
            seed=args.seed,
        )
    except TinyModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # PreparedDataError and friends already carry one clear line
        if type(err).__name__ == "PreparedDataError":
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    print(
        f"saved {record['arch']} model ({record['num_parameters']:,} parameters, vocab {record['vocab_size']}, "
        f"{record['num_item_tokens']} item tokens) to {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

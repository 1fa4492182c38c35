"""A small real prepared dataset (through data_prep) and a tiny random-init model built on it."""

import csv
import random

import pytest

# Unique titles; "Heat" is contained in "Heat Wave" on purpose.
TITLES = [
    "Heat", "Heat Wave", "Alien", "Aliens", "Toy Story", "Fargo", "Jaws", "Babe", "Casino", "Ghost",
    "Red River", "Blue Night", "Golden Island", "Dream City", "Star Man", "Love Day", "Night Ghost",
    "River City", "Island Dream", "Man on Fire", "Big", "Clue", "Heat of Night", "Casino Royale",
]


def write_interactions(folder, num_users: int = 36, per_user: int = 7, seed: int = 0):
    """interactions.csv and items.csv for `python -m data_prep --dataset interactions`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "items.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title"])
        for i, title in enumerate(TITLES):
            writer.writerow([i, title])
    with open(folder / "interactions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for u in range(num_users):
            for t, item in enumerate(rng.sample(range(len(TITLES)), per_user)):
                writer.writerow([u, item, 1_000_000 + 100 * u + t])
    return folder / "interactions.csv", folder / "items.csv"


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory):
    from data_prep.__main__ import main as data_prep_main

    root = tmp_path_factory.mktemp("eval-data")
    inter, items = write_interactions(root / "raw")
    out = root / "prepared"
    rc = data_prep_main([
        "--dataset", "interactions", "--interactions", str(inter), "--items", str(items),
        "--output-dir", str(out), "--num-candidates", "5", "--max-history", "3", "--min-history", "2",
        "--domain", "movie", "--quiet",
    ])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_dataset_dir, tmp_path_factory):
    from napo.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("eval-model") / "tiny"
    build_tiny_model(tiny_dataset_dir, out, hidden_size=32, num_layers=2, num_heads=2, vocab_size=400, seed=0)
    return out


def fit_completions(model, tokenizer, rows, *, steps: int, lr: float = 3e-3, seed: int = 0):
    """Teach `model` (in place) to answer each row's prompt with its `chosen` title + EOS.

    Plain full-batch Adam on the completion tokens, through napo.scoring's naive layout, so the
    model sees exactly the token ids the evaluator scores. Returns the final mean loss.
    """
    import torch

    from napo.scoring import collate_listwise, completion_logps, tokenize_listwise

    torch.manual_seed(seed)
    examples = tokenize_listwise(tokenizer, list(rows["prompt"]), [[c] for c in rows["chosen"]])
    batch = collate_listwise(examples, tokenizer.pad_token_id, "naive")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logps, num_tokens = completion_logps(model, batch)
        loss = -(logps.sum() / num_tokens.sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


@pytest.fixture(scope="session")
def trained_model_dir(tiny_dataset_dir, tiny_model_dir, tmp_path_factory):
    """The tiny model fitted on the first 15 test rows: greedy decoding then reproduces their
    targets (title + EOS) but not those of the other 10 rows, so the agreement tests see both."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.prepared import load_prepared

    dataset, _, _ = load_prepared(tiny_dataset_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    fit_completions(model, tokenizer, dataset["test"][:15], steps=60)
    out = tmp_path_factory.mktemp("eval-trained") / "tiny-fit"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def history_data(tmp_path_factory):
    """{"token": (data dir, model dir), "title": (data dir, model dir)}: the interactions above
    prepared with history-only prompts (--prompt-style history), items as tokens or as titles,
    each with a random-init tiny Llama (the token one with item tokens)."""
    from data_prep.__main__ import main as data_prep_main
    from napo.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("history-data")
    inter, items = write_interactions(root / "raw")
    out = {}
    for fmt in ("token", "title"):
        data = root / f"prepared-{fmt}"
        rc = data_prep_main([
            "--dataset", "interactions", "--interactions", str(inter), "--items", str(items),
            "--output-dir", str(data), "--num-candidates", "5", "--max-history", "3", "--min-history", "2",
            "--domain", "movie", "--item-format", fmt, "--prompt-style", "history", "--quiet",
        ])
        assert rc == 0
        build_tiny_model(data, root / f"model-{fmt}", hidden_size=32, num_layers=2, num_heads=2, vocab_size=400,
                         seed=1, item_tokens=fmt == "token")
        out[fmt] = (data, root / f"model-{fmt}")
    return out

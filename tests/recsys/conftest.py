"""A tiny prepared dataset with a deterministic pattern: each user walks the item cycle
i -> (i + 1) mod NUM_ITEMS, so the next item is a function of the last one."""

import numpy as np
import pandas as pd
import pytest

NUM_ITEMS = 40


@pytest.fixture(scope="session")
def cycle_dataset(tmp_path_factory):
    from data_prep.__main__ import main as data_prep_main

    root = tmp_path_factory.mktemp("cycle")
    rng = np.random.default_rng(0)
    rows = []
    for user in range(60):
        start = int(rng.integers(NUM_ITEMS))
        for t in range(16):
            rows.append({"user_id": user, "item_id": (start + t) % NUM_ITEMS, "timestamp": 1_000 + t})
    pd.DataFrame(rows).to_csv(root / "interactions.csv", index=False)
    pd.DataFrame({"item_id": range(NUM_ITEMS), "title": [f"Item {i}" for i in range(NUM_ITEMS)]}).to_csv(
        root / "items.csv", index=False)
    out = root / "prepared"
    rc = data_prep_main(["--dataset", "interactions", "--interactions", str(root / "interactions.csv"),
                         "--items", str(root / "items.csv"), "--output-dir", str(out),
                         "--num-candidates", "10", "--quiet"])
    assert rc in (0, None)
    return out


@pytest.fixture(scope="session")
def cf_dir(tmp_path_factory):
    """60 users in two taste groups (items 0-19 vs 20-39), 12 items each."""
    from data_prep.__main__ import main

    root = tmp_path_factory.mktemp("cf")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        group = np.arange(20) + 20 * (u % 2)
        for j, it in enumerate(rng.choice(group, 12, replace=False)):
            rows.append((u, int(it), 1000 + j))
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(root / "inter.csv", index=False)
    pd.DataFrame({"item_id": range(40), "title": [f"I{i}" for i in range(40)]}).to_csv(root / "items.csv", index=False)
    assert main(["--dataset", "interactions", "--interactions", str(root / "inter.csv"), "--items",
                 str(root / "items.csv"), "--protocol", "cf", "--output-dir", str(root / "cf"), "--quiet"]) == 0
    assert main(["--dataset", "interactions", "--interactions", str(root / "inter.csv"), "--items",
                 str(root / "items.csv"), "--output-dir", str(root / "seq"), "--quiet",
                 "--num-candidates", "10"]) == 0
    return root

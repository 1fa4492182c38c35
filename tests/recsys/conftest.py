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

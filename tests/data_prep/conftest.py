"""Small synthetic logs for data_prep tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def synthetic_log(n_users: int = 40, n_items: int = 60, per_user: tuple[int, int] = (4, 16),
                  seed: int = 0, string_ids: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) with distinct items per user and strictly increasing times."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        k = int(rng.integers(per_user[0], per_user[1] + 1))
        items = rng.choice(n_items, size=k, replace=False)
        t0 = int(rng.integers(1_000_000, 2_000_000))
        for j, it in enumerate(items):
            rows.append((u, int(it), t0 + 60 * j, float(rng.integers(1, 6))))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame({"item_id": np.arange(n_items), "title": [f"Film {i}" for i in range(n_items)]})
    if string_ids:
        inter["user_id"] = "u" + inter["user_id"].astype(str)
        inter["item_id"] = "B0" + inter["item_id"].astype(str).str.zfill(4)
        items["item_id"] = "B0" + items["item_id"].astype(str).str.zfill(4)
    return inter, items


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's cache or the network mirror setting."""
    monkeypatch.setenv("NAPO_CACHE", str(tmp_path_factory.mktemp("napo_cache")))
    monkeypatch.delenv("NAPO_GROUPLENS_MIRROR", raising=False)


@pytest.fixture
def make_log():
    """The `synthetic_log` function."""
    return synthetic_log


@pytest.fixture
def log_files(tmp_path):
    """Write a synthetic log as CSV and return (interactions path, items path)."""
    inter, items = synthetic_log()
    ip, tp = tmp_path / "inter.csv", tmp_path / "items.csv"
    inter.to_csv(ip, index=False)
    items.to_csv(tp, index=False)
    return ip, tp

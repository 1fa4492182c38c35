"""Small shared helpers: run records and seeding."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

_TRACKED_PACKAGES = (
    "napo", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
    "numpy", "pandas", "pyarrow",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on ("missing" when absent)."""
    versions = {}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """The git commit of the source tree (with a `-dirty` suffix), or None outside a checkout."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def write_run_info(output_dir: str | os.PathLike, config: dict, seed: int | None) -> Path:
    """Write OUT/run.json: what the run did (config, seed, versions, git revision, command)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "config": _jsonable(config),
        "seed": seed,
        "versions": package_versions(),
        "python": platform.python_version(),
        "git_revision": git_revision(),
    }
    path = out / "run.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

"""Reading a prepared dataset directory (the contract in docs/contracts.md, section 1)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from data_prep.errors import UserError
from data_prep.prompts import has_placeholders
from data_prep.render import (
    ID_COLUMNS,
    ID_SCHEMA,
    TEMPLATES_FILE,
    item_strings,
    prompt_names,
    render_table,
    template_choice,
)

# The contract, defined once (docs/contracts.md section 1); every reader and writer imports it.
SPLITS = ("train", "valid", "test")
COLUMNS = ("user_id", "history", "target", "candidates", "prompt", "chosen", "rejected")
FORMAT_VERSION = 1
META_KEYS = ("format_version", "dataset", "domain", "num_candidates", "item_format", "args",
             "counts", "sources", "package_version", "fingerprint")
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION,)
RENDER_BATCH = 50_000  # rows rendered at a time when a split is stored as ids


def fingerprint(meta: dict) -> str:
    """sha256 of meta.json without its `fingerprint` field (stable across identical runs)."""
    body = {k: v for k, v in meta.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class PreparedDataError(UserError):
    """A missing or mismatched prepared dataset directory (one-line message)."""


def prompt_style(meta: dict) -> str:
    """`candidates` (the prompt lists the candidates) or `history` (history only); see
    data_prep/prompts.py. Directories without the key were prepared with candidate lists."""
    return meta.get("prompt_style", "candidates")


def train_counts(items: pd.DataFrame) -> np.ndarray:
    """int64 [max item id + 1] training interaction counts, indexed by item id (0 where absent)."""
    ids = np.asarray(items["item_id"], dtype=np.int64)
    counts = np.zeros(int(ids.max()) + 1 if len(ids) else 0, dtype=np.int64)
    counts[ids] = np.asarray(items["train_count"], dtype=np.int64)
    return counts


def read_meta(root: Path, hint: str) -> dict:
    """DIR/meta.json as a dict; one-line PreparedDataError when it is missing or not JSON."""
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise PreparedDataError(f"{meta_path}: missing; {root} is not a prepared dataset ({hint})")
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PreparedDataError(f"{meta_path}: not valid JSON ({err}); prepare the data again") from None


def load_prepared(path: str | Path, text: bool = True) -> tuple[datasets.DatasetDict, pd.DataFrame, dict]:
    """Load DIR written by `python -m data_prep`.

    Returns (DatasetDict with splits train/valid/test, items DataFrame with columns
    item_id/title/train_count sorted by item_id, meta dict). Raises `PreparedDataError` when
    files are missing, columns differ from the contract, or counts disagree with meta.json.

    A directory stored as ids (meta.json `storage: ids`) gets its prompt / chosen / rejected
    columns rendered here (data_prep/render.py; in memory, byte-identical to `--storage text`),
    so every split has all of COLUMNS either way. ``text=False`` skips the rendering for readers
    of ids only (the splits then have the id columns, plus the text ones if stored).
    """
    root = Path(path)
    hint = "run `python -m data_prep --dataset NAME --output-dir DIR` first"
    if not root.is_dir():
        raise PreparedDataError(f"{root}: not a directory; {hint}")
    meta = read_meta(root, hint)
    meta_path = root / "meta.json"
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise PreparedDataError(f"{meta_path}: missing key '{missing[0]}'; prepare the data again")
    if meta["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
        raise PreparedDataError(
            f"{meta_path}: format_version {meta['format_version']} is not supported "
            f"(this code reads {SUPPORTED_FORMAT_VERSIONS}); prepare the data again"
        )
    if fingerprint(meta) != meta["fingerprint"]:
        raise PreparedDataError(f"{meta_path}: fingerprint does not match its content (the file was edited); prepare the data again")
    try:
        dd = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise PreparedDataError(f"{root}: cannot load the datasets ({str(err).splitlines()[0]}); prepare the data again") from None
    if not isinstance(dd, datasets.DatasetDict):
        raise PreparedDataError(f"{root}: holds one Dataset, expected splits {', '.join(SPLITS)}")
    for split in SPLITS:
        if split not in dd:
            raise PreparedDataError(f"{root}: split '{split}' missing; prepare the data again")
        cols = dd[split].column_names
        absent = [c for c in (ID_COLUMNS if meta.get("storage") == "ids" else COLUMNS) if c not in cols]
        if absent:
            raise PreparedDataError(f"{root}/{split}: column '{absent[0]}' missing; prepare the data again")
        if dd[split].num_rows:
            widths = pc.list_value_length(dd[split].data.column("candidates"))
            low, high = pc.min(widths).as_py(), pc.max(widths).as_py()
            if low != meta["num_candidates"] or high != meta["num_candidates"]:
                raise PreparedDataError(
                    f"{root}/{split}: candidate lists of {low}..{high} items but meta.json says "
                    f"{meta['num_candidates']}; the directory was modified, prepare the data again"
                )
        want = meta["counts"]["splits"][split]["examples"]
        if dd[split].num_rows != want:
            raise PreparedDataError(
                f"{root}/{split}: {dd[split].num_rows} rows but meta.json says {want}; the directory "
                "was modified, prepare the data again"
            )
    items_path = root / "items.jsonl"
    if not items_path.is_file():
        raise PreparedDataError(f"{items_path}: missing; prepare the data again")
    want_sha = meta.get("files", {}).get("items.jsonl", {}).get("sha256")
    if want_sha and hashlib.sha256(items_path.read_bytes()).hexdigest() != want_sha:
        raise PreparedDataError(f"{items_path}: edited after writing (sha256 differs from meta.json's "
                                "files.items.jsonl); prepare the data again")
    items = pd.read_json(items_path, lines=True, dtype={"item_id": "int64", "title": "str", "train_count": "int64"})
    for col in ("item_id", "title", "train_count"):
        if col not in items:
            raise PreparedDataError(f"{items_path}: column '{col}' missing; prepare the data again")
    if len(items) != meta["counts"]["items"]:
        raise PreparedDataError(
            f"{items_path}: {len(items)} items but meta.json says {meta['counts']['items']}; prepare the data again"
        )
    items = items[["item_id", "title", "train_count"]]
    if meta.get("storage") == "ids":
        dd = _render_text(root, dd, items, meta) if text else _widen(dd)
    return dd, items, meta


def _widen(dd: datasets.DatasetDict) -> datasets.DatasetDict:
    """int32 ids on disk -> the contract's int64 (in memory; the reader asked for ids only)."""
    features = datasets.Features.from_arrow_schema(ID_SCHEMA)
    with _no_progress_bars():
        return datasets.DatasetDict({split: ds.cast(features, keep_in_memory=True) for split, ds in dd.items()})


def _render_text(root: Path, dd: datasets.DatasetDict, items: pd.DataFrame, meta: dict) -> datasets.DatasetDict:
    """The text columns of an id-stored directory, rendered split by split (see load_prepared)."""
    path = root / TEMPLATES_FILE
    want = meta.get("files", {}).get(TEMPLATES_FILE, {}).get("sha256")
    try:
        raw = path.read_bytes()
    except OSError:
        raise PreparedDataError(f"{path}: missing; prepare the data again") from None
    if want and hashlib.sha256(raw).hexdigest() != want:
        raise PreparedDataError(f"{path}: edited after writing (sha256 differs from meta.json); prepare the data again")
    templates = json.loads(raw)["texts"]
    shown, names = item_strings(items["item_id"].to_numpy(), items["title"].to_numpy(dtype=object), meta["item_format"])
    names, candidate_names = prompt_names(names, has_placeholders(meta))
    seed = meta["args"]["seed"]
    out = {}
    for index, split in enumerate(SPLITS):
        ds = dd[split]
        choice = template_choice(seed, index, len(templates), ds.num_rows)

        def add_text(table, indices, choice=choice):
            return render_table(table, shown, names, templates, choice[indices], candidate_names)

        with _no_progress_bars():
            out[split] = ds.with_format("arrow").map(
                add_text, batched=True, batch_size=RENDER_BATCH, with_indices=True, keep_in_memory=True,
                new_fingerprint=f"{meta['fingerprint'][:16]}-{split}-text",
            ).with_format(None)
    return datasets.DatasetDict(out)


@contextlib.contextmanager
def _no_progress_bars():
    """A fast step needs no bar (and one-line errors of the scripts stay one line)."""
    enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()

"""The text columns of a prepared split (prompt, chosen, rejected), rendered from its ids.

One function, :func:`text_columns`, makes the text both when data_prep writes a split with
``--storage text`` and when ``load_prepared`` reads a split stored as ids only (``--storage
ids``, the default): the two are byte-identical by construction (and tested). What rendering
needs besides a row's ids is in the directory: the titles (items.jsonl), the templates
(templates.json, their texts) and the per-row template choice, which depends only on
(seed, split index, row index): :func:`template_choice`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from data_prep import prompts

ID_COLUMNS = ("user_id", "history", "target", "candidates")
TEXT_COLUMNS = ("prompt", "chosen", "rejected")
TEMPLATES_FILE = "templates.json"
# --storage ids keeps ids as int32 on disk (half the bytes); readers always see the contract's int64.
ID_SCHEMA_DISK = pa.schema([("user_id", pa.int32()), ("history", pa.list_(pa.int32())),
                            ("target", pa.int32()), ("candidates", pa.list_(pa.int32()))])
ID_SCHEMA = pa.schema([("user_id", pa.int64()), ("history", pa.list_(pa.int64())),
                       ("target", pa.int64()), ("candidates", pa.list_(pa.int64()))])


def template_choice(seed: int, split_index: int, num_templates: int, rows: int) -> np.ndarray:
    """int64 [rows]: which template renders each row of split number `split_index`."""
    return np.random.default_rng([seed, 2, split_index]).integers(num_templates, size=rows)


def item_strings(item_ids, titles, item_format: str) -> tuple[pa.Array, pa.Array]:
    """(shown, names), both indexed by item id: what `chosen` / `rejected` hold (the title, or the
    item token) and how the prompt shows an item (the quoted title, or the item token)."""
    catalogue = np.asarray(item_ids, dtype=np.int64)
    size = int(catalogue.max()) + 1 if len(catalogue) else 0
    shown = np.full(size, None, dtype=object)
    if item_format == "token":
        shown[catalogue] = [prompts.item_token(i) for i in catalogue.tolist()]
    else:
        shown[catalogue] = np.asarray(titles, dtype=object)
    shown = pa.array(shown, pa.string())
    return shown, prompts.display_names(shown, item_format)


def prompt_names(names: pa.Array, placeholders: bool) -> tuple[pa.Array, pa.Array | None]:
    """(history names, candidate names or None) for `text_columns`: with LLaRA's placeholders
    (`--item-placeholders`) each title is followed by its kind's placeholder token."""
    return prompts.placeholder_names(names) if placeholders else (names, None)


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), values)


def text_columns(history: pa.ListArray, target: np.ndarray, candidates: np.ndarray, shown: pa.Array,
                 names: pa.Array, templates: list[str], choice: np.ndarray,
                 candidate_names: pa.Array | None = None) -> dict[str, pa.Array]:
    """prompt, chosen, rejected of m rows.

    history: list<int64> [m]; target: int64 [m]; candidates: int64 [m, C]; choice: int64 [m];
    candidate_names: how the candidate list shows items (None: as `names`, the history's).
    """
    m, num_candidates = candidates.shape
    cand_list = _list_array(np.arange(m + 1) * num_candidates, pa.array(candidates.reshape(-1)))
    rejected = candidates[candidates != target[:, None]].reshape(m, num_candidates - 1)
    return {
        "prompt": prompts.render(templates, choice, prompts.join_lists(history, names),
                                 prompts.join_lists(cand_list, names if candidate_names is None else candidate_names),
                                 num_candidates),
        "chosen": shown.take(pa.array(target)),
        "rejected": _list_array(np.arange(m + 1) * (num_candidates - 1), shown.take(pa.array(rejected.reshape(-1)))),
    }


def render_table(table: pa.Table, shown: pa.Array, names: pa.Array, templates: list[str],
                 choice: np.ndarray, candidate_names: pa.Array | None = None) -> pa.Table:
    """An id-only table (ID_COLUMNS, int32 or int64) -> int64 ids with the text columns appended."""
    table = widen(table)
    num_rows = table.num_rows
    cands = table.column("candidates").combine_chunks()
    width = len(cands[0]) if num_rows else 0
    candidates = cands.flatten().to_numpy(zero_copy_only=False).astype(np.int64).reshape(num_rows, width)
    history = table.column("history").combine_chunks()
    if history.offset or (len(history) and history.offsets[0].as_py()):  # a slice: rebase the offsets
        offsets = history.offsets.to_numpy()
        history = _list_array(offsets - offsets[0], history.flatten())
    target = table.column("target").to_numpy().astype(np.int64)
    text = text_columns(history, target, candidates, shown, names, templates, choice, candidate_names)
    for name in TEXT_COLUMNS:
        table = table.append_column(name, text[name])
    return table


def widen(table: pa.Table) -> pa.Table:
    """The id columns as the contract's int64 (a no-op when they already are)."""
    return table.select(list(ID_COLUMNS)).cast(ID_SCHEMA) if table.schema != ID_SCHEMA else table

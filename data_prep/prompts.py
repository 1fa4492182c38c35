"""Prompt rendering: history and candidate titles into a domain template, vectorized in Arrow.

A template file (`data_prep/templates/<domain>.txt`, or the user's `--template FILE`) holds
one or more paraphrases separated by a line holding only `---`; lines starting with `#` are
comments. Placeholders: `{history}`, `{candidates}` (both required) and `{num_candidates}`.
Each row's paraphrase is drawn with `numpy.random.default_rng([seed, split_index])`.

Prompt styles (`--prompt-style`): `candidates` (the papers' prompt, listing the candidates) or
`history` (`data_prep/templates/history/<domain>.txt`: `{history}` only, no candidate list and no
count). A history-only prompt is the same whatever items are ranked after it, so one prompt serves
training, the 20-candidate protocol and full-catalogue ranking. The candidate lists themselves are
drawn identically in both styles.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.errors import DataPrepError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
ITEM_FORMATS = ("title", "token")
PROMPT_STYLES = ("candidates", "history")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# placeholders allowed, and required, per prompt style
_ALLOWED = {"candidates": {"history", "candidates", "num_candidates"}, "history": {"history"}}
_REQUIRED = {"candidates": ("history", "candidates"), "history": ("history",)}


def item_token(item_id: int) -> str:
    """The item's token in `--item-format token` datasets, e.g. `<item_42>`."""
    return f"<item_{int(item_id)}>"


# LLaRA's placeholders (`--item-placeholders`): after each history title and each candidate title;
# a hybrid model replaces their input embedding by the item's projected auxiliary vector
# (napo/hybrid/placeholders.py).
PLACEHOLDERS = {"history": "[HistoryEmb]", "candidates": "[CansEmb]"}


def has_placeholders(meta: dict) -> bool:
    """Whether a prepared directory's prompts carry LLaRA's placeholders (`--item-placeholders`)."""
    return bool(meta.get("item_placeholders", False))


def placeholder_names(names: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(history names, candidate names): each prompt name followed by its placeholder token."""
    return tuple(pc.binary_join_element_wise(names, pa.scalar(" " + PLACEHOLDERS[kind]), "")
                 for kind in ("history", "candidates"))


@dataclass
class Templates:
    path: str
    sha256: str
    texts: list[str]


def template_path(domain: str, style: str = "candidates") -> Path:
    """The shipped template file of a domain and prompt style."""
    return TEMPLATE_DIR / ("history" if style == "history" else "") / f"{domain}.txt"


def load_templates(domain: str, template_file: str | None = None, style: str = "candidates") -> Templates:
    """The paraphrases of `domain` (or of `template_file`) for prompt style `style`."""
    if style not in PROMPT_STYLES:
        raise DataPrepError(f"unknown --prompt-style '{style}'; choose candidates or history")
    path = Path(template_file) if template_file else template_path(domain, style)
    if not path.is_file():
        if template_file:
            raise DataPrepError(f"{path}: file not found; check --template")
        raise DataPrepError(f"no template for domain '{domain}'; use --domain movie|music|book|game|generic or --template FILE")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataPrepError(f"{path}, line {line}: not UTF-8; re-encode the template as UTF-8") from None
    texts, current, start_line = [], [], 1
    lines = text.splitlines()
    for no, line in enumerate([*lines, "---"], start=1):
        if line.strip() == "---":
            body = "\n".join(current).strip()
            if body:
                _check(body, path, start_line, style)
                texts.append(body)
            current, start_line = [], no + 1
        elif not line.lstrip().startswith("#"):
            current.append(line)
    if not texts:
        need = " and ".join("{" + n + "}" for n in _REQUIRED[style])
        raise DataPrepError(f"{path}: no template found; write at least one with {need}")
    shown = str(path.relative_to(TEMPLATE_DIR.parent.parent)) if path.is_relative_to(TEMPLATE_DIR.parent.parent) else str(path)
    return Templates(shown, hashlib.sha256(data).hexdigest(), texts)


def _check(body: str, path: Path, line: int, style: str = "candidates") -> None:
    names = set(_PLACEHOLDER.findall(body))
    unknown = names - _ALLOWED[style]
    if unknown:
        if style == "history" and unknown <= _ALLOWED["candidates"]:
            raise DataPrepError(
                f"{path}, template starting at line {line}: {{{sorted(unknown)[0]}}} in a history-only "
                "template (--prompt-style history lists no candidates); remove it or use --prompt-style candidates"
            )
        allowed = ", ".join("{" + n + "}" for n in sorted(_ALLOWED[style], key=["history", "candidates", "num_candidates"].index))
        raise DataPrepError(
            f"{path}, template starting at line {line}: unknown placeholder {{{sorted(unknown)[0]}}}; "
            f"use {allowed}"
        )
    for need in _REQUIRED[style]:
        if need not in names:
            raise DataPrepError(f"{path}, template starting at line {line}: missing {{{need}}}")
        if body.count("{" + need + "}") > 1:
            raise DataPrepError(f"{path}, template starting at line {line}: {{{need}}} appears twice; use it once")


def is_history_only(template: str) -> bool:
    """Whether a template text is of `--prompt-style history` (no candidate slot)."""
    return "{candidates}" not in template


def _parts(text: str, num_candidates: int) -> tuple[str, str, str, str, str]:
    """(before, first slot, between, second slot, after) of a template; slots are
    "history" / "candidates", each present once."""
    text = text.replace("{num_candidates}", str(num_candidates))
    h, c = text.index("{history}"), text.index("{candidates}")
    (a, na), (b, nb) = sorted([(h, "history"), (c, "candidates")])
    return text[:a], na, text[a + len(na) + 2:b], nb, text[b + len(nb) + 2:]


def display_names(titles: pa.Array, item_format: str) -> pa.Array:
    """How an item appears inside a prompt: a quoted title, or its item token."""
    if item_format == "token":
        return titles
    return pc.binary_join_element_wise(pa.scalar('"'), titles, pa.scalar('"'), "")


def join_lists(lists: pa.ListArray, names: pa.Array) -> pa.Array:
    """Each list of item ids -> the ", "-joined display names (one string per row)."""
    flat = pc.take(names, lists.values)
    return pc.binary_join(pa.ListArray.from_arrays(lists.offsets, flat), ", ")


def render(templates: list[str], choice: np.ndarray, history: pa.Array, candidates: pa.Array,
           num_candidates: int) -> pa.Array:
    """Prompt per row: template `choice[i]` with row i's history and candidate strings.

    Each template is literal + slot + literal + slot + literal, so all rows render in one
    vectorized join with per-row literals (taken from the templates by `choice`). History-only
    templates (all of them, or none: one prompt style per file) are literal + history + literal,
    and `candidates` is not read.
    """
    if all(is_history_only(t) for t in templates):
        idx = pa.array(np.asarray(choice, dtype=np.int64))
        before, after = zip(*(t.split("{history}") for t in templates), strict=True)
        lit = [pa.array(list(side), pa.string()).take(idx) for side in (before, after)]
        return pc.binary_join_element_wise(lit[0], history, lit[1], "")
    if any(is_history_only(t) for t in templates):
        raise DataPrepError("templates mix history-only and candidate-list prompts; use one prompt style per file")
    parts = [_parts(t, num_candidates) for t in templates]
    idx = pa.array(np.asarray(choice, dtype=np.int64))
    lit = [pa.array([p[j] for p in parts], pa.string()).take(idx) for j in (0, 2, 4)]
    slot = {"history": history, "candidates": candidates}
    firsts = {p[1] for p in parts}
    if len(firsts) == 1:
        first = firsts.pop()
        second = "candidates" if first == "history" else "history"
        return pc.binary_join_element_wise(lit[0], slot[first], lit[1], slot[second], lit[2], "")
    # Templates disagree on the slot order: render both orders and pick per row.
    hc = pc.binary_join_element_wise(lit[0], history, lit[1], candidates, lit[2], "")
    ch = pc.binary_join_element_wise(lit[0], candidates, lit[1], history, lit[2], "")
    history_first = np.array([p[1] == "history" for p in parts])[np.asarray(choice)]
    return pc.if_else(pa.array(history_first), hc, ch)

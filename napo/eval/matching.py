"""Match a generated answer to one of the candidate titles (the papers' generate-and-match rule).

Both sides are normalised first (Unicode NFKC, case-folded, every run of characters that is not a
letter or digit turned into one space). Then:

1. exact: the answer equals exactly one candidate title;
2. contained (the papers' rule): exactly one candidate title occurs in the answer.

Containment is checked on whole words (the normalised title, padded with spaces, inside the padded
answer), so "Heat" is found in "heat wave" but not in "heathers", and the item token `<item_1>`
("item 1") is not found in `<item_12>` ("item 12"). The papers use a raw substring test; on their
title lists the two agree except for such prefix accidents.

An answer that matches no title, or two titles by containment ("Heat" and "Heat Wave" both occur in
"heat wave"), is invalid: it recommends nothing and counts as a miss.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_NOT_WORD = re.compile(r"[\W_]+", flags=re.UNICODE)

EXACT = "exact"
CONTAINED = "contained"


def normalize_title(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form of a title or answer."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub(" ", text).strip()


@dataclass(frozen=True)
class Match:
    """Outcome of matching one answer.

    `index` is the position of the matched title in the candidate list (None when invalid);
    `rule` is "exact", "contained" or None; `num_contained` counts the candidate titles found in
    the answer (more than one makes the answer ambiguous unless it is an exact match).
    """

    index: int | None
    rule: str | None
    num_contained: int

    @property
    def valid(self) -> bool:
        return self.index is not None


def match_answer(answer: str, titles: Sequence[str]) -> Match:
    """Match `answer` to one of `titles` (candidate order); see the module docstring for the rule."""
    norm_answer = normalize_title(answer)
    norm_titles = [normalize_title(t) for t in titles]
    if norm_answer:
        exact = [i for i, t in enumerate(norm_titles) if t == norm_answer]
        if len(exact) == 1:
            return Match(exact[0], EXACT, _count_contained(norm_answer, norm_titles))
    contained = [i for i, t in enumerate(norm_titles) if t and f" {t} " in f" {norm_answer} "]
    if len(contained) == 1:
        return Match(contained[0], CONTAINED, 1)
    return Match(None, None, len(contained))


def _count_contained(norm_answer: str, norm_titles: Sequence[str]) -> int:
    padded = f" {norm_answer} "
    return sum(1 for t in norm_titles if t and f" {t} " in padded)

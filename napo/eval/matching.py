"""Match a generated answer to one of the candidate titles (the papers' generate-and-match rule).

Both sides are normalised first (Unicode NFKC, case-folded, every run of characters that is not a
letter or digit turned into one space). Then:

1. exact: the answer equals exactly one candidate title;
2. contained (the papers' rule): exactly one candidate title occurs in the answer.

Containment is checked on whole words by default (`containment="word"`: the normalised title,
padded with spaces, inside the padded answer), so "Heat" is found in "heat wave" but not in
"heathers", and the item token `<item_1>` ("item 1") is not found in `<item_12>` ("item 12").
The papers use a plain substring test; `containment="substring"` reproduces it (on the
normalised strings). The two agree except for such prefix accidents.

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
CONTAINMENT = ("word", "substring")


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


def match_answer(answer: str, titles: Sequence[str], containment: str = "word") -> Match:
    """Match `answer` to one of `titles` (candidate order); see the module docstring for the rule."""
    if containment not in CONTAINMENT:
        raise ValueError(f"containment {containment!r} is not one of {', '.join(CONTAINMENT)}")
    norm_answer = normalize_title(answer)
    norm_titles = [normalize_title(t) for t in titles]
    contained = _contained(norm_answer, norm_titles, containment == "word")
    if norm_answer:
        exact = [i for i, t in enumerate(norm_titles) if t == norm_answer]
        if len(exact) == 1:
            return Match(exact[0], EXACT, len(contained))
    if len(contained) == 1:
        return Match(contained[0], CONTAINED, 1)
    return Match(None, None, len(contained))


def _contained(norm_answer: str, norm_titles: Sequence[str], whole_words: bool) -> list[int]:
    if whole_words:
        padded = f" {norm_answer} "
        return [i for i, t in enumerate(norm_titles) if t and f" {t} " in padded]
    return [i for i, t in enumerate(norm_titles) if t and t in norm_answer]

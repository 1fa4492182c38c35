"""Reading evaluation examples from prepared-dataset rows (columns as in docs/contracts.md §1).

The texts the model sees come from the rows themselves (`chosen`, `rejected`), not from the items
table: with `item_format: token` they are item tokens, with `title` they are titles, exactly as in
training. The items table only maps ids to titles for reports.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_prep.errors import UserError


class RowError(UserError):
    """A dataset row that does not follow the prepared-dataset contract."""


def candidate_titles(candidates: Sequence[int], target: int, chosen: str, rejected: Sequence[str],
                     row: int | None = None) -> list[str]:
    """Texts of the candidates in candidate order: the target's is `chosen`, the others' are
    `rejected` in the order they appear among the candidates."""
    where = f"row {row}: " if row is not None else ""
    positions = [i for i, c in enumerate(candidates) if c == target]
    if len(positions) != 1:
        raise RowError(f"{where}the target {target} occurs {len(positions)} times among the candidates "
                       "(expected once); re-run data_prep")
    if len(rejected) != len(candidates) - 1:
        raise RowError(f"{where}{len(rejected)} rejected titles for {len(candidates)} candidates "
                       "(expected one per non-target candidate); re-run data_prep")
    titles, others = [], iter(rejected)
    for c in candidates:
        titles.append(chosen if c == target else next(others))
    return titles


def batch_candidate_titles(batch: dict[str, list]) -> list[list[str]]:
    """candidate_titles for every example of a batch (a dict of columns)."""
    return [
        candidate_titles(cands, tgt, ch, rej)
        for cands, tgt, ch, rej in zip(batch["candidates"], batch["target"], batch["chosen"],
                                       batch["rejected"], strict=True)
    ]


def candidate_completions(batch: dict[str, list], prefix: str = "") -> list[list[str]]:
    """Completion texts (prefix + title) of every candidate of every example, candidate order."""
    return [[prefix + t for t in titles] for titles in batch_candidate_titles(batch)]


def target_indices(batch: dict[str, list]) -> list[int]:
    """Position of the target in each example's candidate list."""
    return [list(c).index(t) for c, t in zip(batch["candidates"], batch["target"], strict=True)]

"""Groups of a dataset (a string field of its rows, such as `category`): how many a subset covers."""

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fishersft.contract.curation import Quotas
from fishersft.contract.datasets import MAX_LABEL_VALUES
from fishersft.contract.selection import GroupCoverage

GROUP_FIELDS = ("category", "source")
"""Fields a result reports coverage of when the request names none, the first one the rows carry."""


def group_field(labels: Iterable[Mapping[str, str]], requested: str | None = None) -> str | None:
    """`requested`, else the first of GROUP_FIELDS that some row carries, else None."""
    if requested is not None:
        return requested
    present = set().union(*labels)
    return next((f for f in GROUP_FIELDS if f in present), None)


def group_codes(labels: Sequence[Mapping[str, str]], field: str) -> tuple[np.ndarray, list[str | None]]:
    """Each row's group as an index [N] into the returned names (sorted; None, last, for rows without `field`)."""
    values = [row.get(field) for row in labels]
    names: list[str | None] = [*sorted({v for v in values if v is not None})]
    if None in values:
        names.append(None)
    code = {name: k for k, name in enumerate(names)}
    return np.asarray([code[v] for v in values], dtype=np.int64), names


def group_coverage(
    groups: Sequence[str | None], chosen: Iterable[int], field: str, pool: Iterable[int] | None = None
) -> GroupCoverage:
    """`{field, covered, total}`: distinct groups among the chosen examples, and among the `pool` they were
    chosen from (default: all). `groups[i]` is example i's value of `field`; rows without it count as no group."""
    pool = range(len(groups)) if pool is None else pool
    counts = Counter(g for g in (groups[i] for i in chosen) if g is not None)
    return GroupCoverage(
        field=field,
        covered=len(counts),
        total=len({groups[i] for i in pool} - {None}),
        counts=dict(sorted(counts.items())),
    )


def quota_problems(quotas: Quotas, sizes: Mapping[str, int], budget_examples: int | None) -> list[tuple[str, str]]:
    """What keeps `quotas` from being met, as (field, message) pairs: a group no row has, a min above the examples
    its group has to choose from (`sizes`: per group), mins summing past an example budget."""
    problems = [
        (f"quotas.{bound}.{group}", f"no row has {quotas.by} {group!r}")
        for bound, named in (("min", quotas.min), ("max", quotas.max))
        for group in named
        if group not in sizes
    ]
    problems += [
        (f"quotas.min.{group}", f"group {group!r} has {sizes[group]} examples to choose from, fewer than its min {n}")
        for group, n in quotas.min.items()
        if group in sizes and sizes[group] < n
    ]
    needed = sum(quotas.min.values())
    if budget_examples is not None and needed > budget_examples:
        problems.append(("quotas.min", f"the mins sum to {needed} examples, above the budget of {budget_examples}"))
    return problems


class LabelCounter:
    """Distinct values of each label field over a stream of rows, each field counted up to MAX_LABEL_VALUES."""

    def __init__(self) -> None:
        self.values: dict[str, set[str]] = {}

    def add(self, labels: Mapping[str, str]) -> None:
        for key, value in labels.items():
            seen = self.values.setdefault(key, set())
            if len(seen) < MAX_LABEL_VALUES:
                seen.add(value)

    def counts(self) -> dict[str, int]:
        return {key: len(seen) for key, seen in sorted(self.values.items())}

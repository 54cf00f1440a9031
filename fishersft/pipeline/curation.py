"""A selection's curation options on the features and rows it selects from: near-duplicates removed from the pool
(fishersft.selection.dedup), group quotas as the selection math's limits (fishersft.selection.quotas), checked
against the pool first."""

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fishersft.contract.curation import Dedup, DedupSummary, Quotas, RemovedDuplicate
from fishersft.contract.selection import Budget
from fishersft.data.groups import group_codes, quota_problems
from fishersft.errors import InputError
from fishersft.features.set import FeatureSet
from fishersft.pipeline.progress import Progress
from fishersft.selection.dedup import near_duplicates
from fishersft.selection.quotas import UNBOUNDED, GroupLimits, QuotaState
from fishersft.selection.selector import budget_costs


def quota_limits(
    quotas: Quotas,
    labels: Sequence[Mapping[str, str]] | None,
    read: np.ndarray,
    pool: np.ndarray,
    budget: Budget,
    lengths: np.ndarray,
) -> GroupLimits:
    """The quotas' limits on the examples `read` (indices of `labels`' rows), whose positions `pool` selection may
    choose from and whose loss tokens are `lengths`; an InputError naming the field when the pool cannot meet
    them (a group no row has, a group with fewer examples than its min, mins past the budget)."""
    if labels is None:
        raise InputError("quotas: for JSONL datasets; features files carry no row fields")
    if not any(quotas.by in row for row in labels):
        raise InputError(f"quotas.by: no row of the dataset has a string field {quotas.by!r}")
    codes, names = group_codes(labels, quotas.by)
    local = codes[read]
    present = Counter(local[pool].tolist())
    sizes = {name: present[k] for k, name in enumerate(names) if name is not None}
    problems = quota_problems(quotas, sizes, budget.examples)
    if problems:
        field, message = problems[0]
        raise InputError(f"{field}: {message}", [f"{f}: {m}" for f, m in problems[1:20]])
    limits = GroupLimits(
        torch.from_numpy(local),
        [quotas.min.get(name, 0) if name is not None else 0 for name in names],
        [quotas.max.get(name, UNBOUNDED) if name is not None else UNBOUNDED for name in names],
    )
    costs, limit = budget_costs(budget, torch.from_numpy(np.asarray(lengths)))
    reserve = QuotaState(limits, costs, pool.tolist()).reserve
    if reserve > limit:
        raise InputError(
            f"quotas.min: the cheapest examples that meet the mins hold {reserve:.0f} loss tokens, above the budget "
            f"of {limit:.0f}"
        )
    return limits


def deduplicated(
    features: FeatureSet, pool: np.ndarray, dedup: Dedup, device: torch.device | str, progress: Progress | None
) -> tuple[np.ndarray, DedupSummary]:
    """The examples of `pool` (ascending indices) that near-duplicate removal keeps, and the removed ones, each
    with its survivor, on the examples' mean features."""

    def on_block(done: int) -> None:
        if progress:
            progress("deduplicating", done, len(pool))

    rows = torch.from_numpy(pool)
    survivor = near_duplicates(features.mean_rows(), dedup.threshold, rows, device, on_block=on_block).numpy()
    removed = survivor >= 0
    pairs = [
        RemovedDuplicate(id=features.ids[pool[k]], survivor=features.ids[pool[s]])
        for k, s in zip(np.flatnonzero(removed).tolist(), survivor[removed].tolist(), strict=True)
    ]
    return pool[~removed], DedupSummary(threshold=dedup.threshold, removed=pairs)

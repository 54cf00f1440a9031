"""Random subsets balanced by group: each group's share of the budget follows its share of the pool.

The yardstick of RDS+ (Ivison et al. 2025, arXiv 2503.01807) samples uniformly across its sources; a uniform
random subset of a pool dominated by one source mostly samples that source. Here each group gets the part of the
budget its candidates hold of the pool's cost (examples under an example budget, loss tokens under a token
budget), rounded to integers by the largest remainder method, ties broken by a seeded draw."""

import torch
from torch import Tensor

from fishersft.methods.fitting import fitting
from fishersft.selection.quotas import GroupLimits


def largest_remainder(weights: list[int], total: int, generator: torch.Generator) -> list[int]:
    """`total` split into integers in proportion to `weights` (non-negative, summing above 0): each share is the
    floor of total * w / sum(w), and the units left over go one each to the largest remainders (exact integer
    arithmetic), ties in a seeded random order."""
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    remainders = [total * w % whole for w in weights]
    tie_break = torch.randperm(len(weights), generator=generator).tolist()
    order = sorted(range(len(weights)), key=lambda g: (-remainders[g], tie_break[g]))
    for g in order[: total - sum(shares)]:
        shares[g] += 1
    return shares


def balanced_random_order(
    groups: Tensor, costs: Tensor, limit: float, candidates: Tensor, seed: int, quotas: GroupLimits | None = None
) -> list[int]:
    """A seeded random subset of `candidates` whose cost (`costs`: 1 an example, or its loss tokens) fits `limit`,
    each group (`groups[i]`: example i's group index) holding its largest-remainder share of min(limit, the
    candidates' cost) in proportion to its candidates' cost. Within a group the examples come in a seeded random
    order while they fit its share; budget a group's share leaves unspent (a token budget rarely ends exactly) is
    filled from the rest in the same random order. The picks come in that order; `quotas`, when given, have the
    last word (fishersft.selection.quotas)."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = candidates[torch.randperm(len(candidates), generator=generator)]
    if len(shuffled) == 0:
        return []
    labels, owner = torch.unique(groups[shuffled], return_inverse=True)
    cost = costs[shuffled].round().to(torch.int64)
    weights = torch.zeros(len(labels), dtype=torch.int64).index_add_(0, owner, cost).tolist()
    shares = largest_remainder(weights, min(int(limit), sum(weights)), generator)
    chosen = torch.zeros(len(shuffled), dtype=torch.bool)
    for g, share in enumerate(shares):
        members = (owner == g).nonzero().flatten()
        taken = fitting(members.tolist(), cost, share)
        chosen[taken] = True
    order = torch.cat([shuffled[chosen], shuffled[~chosen]])
    return fitting(order.tolist(), costs, limit, quotas)

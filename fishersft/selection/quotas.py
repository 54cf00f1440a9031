"""Group quotas: at least min[g] and at most max[g] picks from each group g, a partition matroid on top of the
budget.

A candidate is admissible while its group is below its max, it fits what is left of the budget, and taking it
still leaves room for every unmet min. The room an unmet min needs is the cost of the cheapest examples of its
group that could meet it (under an example budget: one per missing pick), so a candidate of a group below its min
is always admissible when the mins can be met at all, and a candidate of any other group only while the budget
left after it covers the unmet mins. The slack (budget left less that room) never grows as picks are made, so a
candidate refused for lack of room is never admissible again: a ranking's order can be walked once (`fitting`).

`quota_greedy` is greedy (lazy or exact) over the admissible candidates: each step takes the best gain per unit
cost among them (ties: lowest index), until none is admissible. The warm start counts toward no quota."""

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fishersft.selection.greedy import ROUNDING_TOLERANCE, GreedyResult, Objective, StepCallback

UNBOUNDED = 2**62
"""The max of a group that names none."""


@dataclass(frozen=True)
class GroupLimits:
    """Each example's group (`groups` [N], an index into the per-group lists) and each group's min and max picks."""

    groups: Tensor
    minimum: list[int]
    maximum: list[int]


class QuotaState:
    """What quotas allow as picks are made from `candidates` (costs `costs`): each group's picks so far, its
    remaining candidates by cost, and the room its unmet min needs."""

    def __init__(self, limits: GroupLimits, costs: Tensor, candidates: Sequence[int]) -> None:
        self.limits = limits
        self.costs = costs.to(torch.float64)
        self.cost: list[float] = self.costs.tolist()
        self.maximum = torch.tensor(limits.maximum)
        self.group: list[int] = limits.groups.tolist()
        n_groups = len(limits.minimum)
        self.count = [0] * n_groups
        self.remaining: list[list[tuple[float, int]]] = [[] for _ in range(n_groups)]
        for i in candidates:
            self.remaining[self.group[i]].append((self.cost[i], i))
        for members in self.remaining:
            members.sort()
        self.room = [0.0] * n_groups
        """Per group: the cost of its cheapest remaining candidates that its unmet min still needs."""
        self.largest = [0.0] * n_groups
        """Per group: the largest of those costs (0 when its min is met)."""
        self.reserve = 0.0
        """The budget the unmet mins need: the sum of `room`."""
        for g in range(n_groups):
            self._update(g)

    def missing(self, g: int) -> int:
        return max(0, self.limits.minimum[g] - self.count[g])

    def allows(self, i: int, left: float) -> bool:
        """Whether candidate i may be picked with `left` of the budget."""
        g, cost = self.group[i], self.cost[i]
        if self.count[g] >= self.limits.maximum[g] or cost > left:
            return False
        relief = min(cost, self.largest[g]) if self.missing(g) else 0.0  # it meets part of its own group's min
        return left - cost >= self.reserve - relief - ROUNDING_TOLERANCE

    def admissible(self, idx: Tensor, left: float) -> Tensor:
        """`allows` for every index of `idx`, at once."""
        g = self.limits.groups[idx]
        cost = self.costs[idx]
        count = torch.tensor(self.count)[g]
        maximum = self.maximum[g]
        missing = torch.tensor([self.missing(k) for k in range(len(self.count))])[g] > 0
        relief = torch.where(missing, torch.minimum(cost, torch.tensor(self.largest, dtype=torch.float64)[g]), 0.0)
        return (count < maximum) & (cost <= left) & (left - cost >= self.reserve - relief - ROUNDING_TOLERANCE)

    def take(self, i: int) -> None:
        g = self.group[i]
        self.count[g] += 1
        members = self.remaining[g]
        members.pop(bisect.bisect_left(members, (self.cost[i], i)))
        self._update(g)

    def _update(self, g: int) -> None:
        needed = self.remaining[g][: self.missing(g)]
        room = sum(c for c, _ in needed)
        self.reserve += room - self.room[g]
        self.room[g] = room
        self.largest[g] = needed[-1][0] if needed else 0.0


def quota_fitting(order: Sequence[int], costs: Tensor, limit: float, limits: GroupLimits) -> list[int]:
    """The examples of `order`, in order, that the quotas allow when their turn comes (see the module's doc: one
    pass is enough)."""
    state, left, taken = QuotaState(limits, costs, order), limit, []
    for i in order:
        if state.allows(i, left):
            taken.append(i)
            state.take(i)
            left -= state.cost[i]
    return taken


def quota_greedy(
    objective: Objective,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    limits: GroupLimits,
    lazy: bool = True,
    on_step: StepCallback | None = None,
) -> GreedyResult:
    """Greedy under the budget and the quotas: each step the admissible candidate with the best gain per unit
    cost (ties: lowest index). `lazy`: gains computed earlier are upper bounds (the objective is submodular),
    refreshed only where they reach the best fresh one (less ROUNDING_TOLERANCE), as in `lazy_greedy`; else every
    admissible gain is computed at every step (the reference, and the targeted objective's, which is not
    submodular)."""
    state = QuotaState(limits, costs, candidates.tolist())
    costs = costs.to(torch.float64)
    alive = torch.zeros(len(costs), dtype=torch.bool)
    alive[candidates] = True
    gain = torch.zeros(len(costs), dtype=torch.float64)
    bound = torch.full((len(costs),), torch.inf, dtype=torch.float64)
    fresh = torch.zeros(len(costs), dtype=torch.bool)
    order: list[int] = []
    gains: list[float] = []
    left = limit
    while True:
        pool = alive.nonzero().flatten()
        pool = pool[state.admissible(pool, left)]
        if len(pool) == 0:
            break
        stale = pool[~fresh[pool]] if not lazy else pool[torch.isinf(bound[pool])]
        _refresh(objective, stale, costs, gain, bound, fresh)
        batch = 1
        while lazy:
            best = torch.where(fresh[pool], bound[pool], -torch.inf).max()
            floor = best - ROUNDING_TOLERANCE * best.abs()
            reaching = pool[~fresh[pool] & (bound[pool] >= floor)]
            if len(reaching) == 0:
                break
            _refresh(
                objective,
                reaching[torch.topk(bound[reaching], min(batch, len(reaching))).indices],
                costs,
                gain,
                bound,
                fresh,
            )
            batch *= 2
        top = int(pool[torch.argmax(torch.where(fresh[pool], bound[pool], -torch.inf))])  # first maximum
        objective.add(top)
        state.take(top)
        order.append(top)
        gains.append(float(gain[top]))
        alive[top] = False
        fresh[:] = False
        left -= float(costs[top])
        if on_step:
            on_step(limit - left)
    return GreedyResult(order, gains)


def _refresh(objective: Objective, idx: Tensor, costs: Tensor, gain: Tensor, bound: Tensor, fresh: Tensor) -> None:
    if len(idx):
        gain[idx] = objective.gains(idx).to(torch.float64)
        bound[idx] = gain[idx] / costs[idx]
        fresh[idx] = True

"""Greedy maximisation of a monotone submodular objective under a knapsack budget.

Each candidate i has a cost c_i; a selection may cost at most `limit`. Greedy adds, at every step, the
candidate with the largest gain per unit cost among those that still fit (ties: lowest index). With unit costs
this is the classic cardinality greedy (1 - 1/e of the optimum). With other costs the greedy set is compared with
the best single affordable candidate and the better of the two is returned (Khuller, Moss & Naor 1999).

`exact_greedy` evaluates every remaining candidate at every step. `lazy_greedy` (Minoux 1978) keeps the last
computed gain of each candidate as an upper bound, valid because gains only decrease as the set grows, and
re-evaluates only the candidates whose bound reaches the best current gain. Both see the same gain values, so
they return the same selection in the same order. `stochastic_greedy` (Mirzasoleiman et al. 2015) looks at a
random sample of the candidates at each step: approximate, and far cheaper for very large candidate sets.
"""

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

ROUNDING_TOLERANCE = 1e-6
"""Relative rounding noise allowed in computed gains. Exact math never lets a gain grow, but a float32 gain can
come out a hair above an earlier value; stale bounds this close below the best gain are refreshed before a pick."""


class Objective(Protocol):
    evaluations: int

    def gains(self, idx: Tensor) -> Tensor: ...

    def add(self, i: int) -> None: ...


StepCallback = Callable[[float], None]
"""Called after every pick with the budget spent so far (progress, cancellation)."""


@dataclass
class GreedyResult:
    order: list[int]
    gains: list[float]


def exact_greedy(
    objective: Objective, costs: Tensor, limit: float, candidates: Tensor, on_step: StepCallback | None = None
) -> GreedyResult:
    """Greedy over candidate indices `candidates` (sorted ascending), re-evaluating everything every step."""
    remaining = torch.zeros(len(costs), dtype=torch.bool)
    remaining[candidates] = True
    order: list[int] = []
    gains: list[float] = []
    singles: tuple[Tensor, Tensor] | None = None
    left = limit
    while True:
        remaining &= costs <= left
        idx = remaining.nonzero().flatten()
        if len(idx) == 0:
            break
        gain = objective.gains(idx)
        if singles is None:
            singles = (idx, gain)
        best = int(torch.argmax(gain / costs[idx]))  # argmax returns the first maximum: lowest index
        _pick(objective, int(idx[best]), float(gain[best]), order, gains)
        remaining[order[-1]] = False
        left -= float(costs[order[-1]])
        if on_step:
            on_step(limit - left)
    return better_than_best_single(GreedyResult(order, gains), singles)


def lazy_greedy(
    objective: Objective, costs: Tensor, limit: float, candidates: Tensor, on_step: StepCallback | None = None
) -> GreedyResult:
    """Greedy with cached upper bounds on the gains; same result as `exact_greedy`, far fewer evaluations.

    Each candidate keeps its last computed gain per unit cost, an upper bound on its current one, in a max-heap.
    Before a pick, the stale bounds that reach the best current value (less ROUNDING_TOLERANCE) are popped and
    refreshed, highest first, in batches of 1, 2, 4, ...; when none is left, the best current value is the
    exact-greedy pick (ties: lowest index). A pick costs O(refreshed x log N), whatever N: a million candidates
    cost no more per pick than a thousand.
    """
    costs_list = costs.tolist()
    idx = candidates[costs[candidates] <= limit]
    if len(idx) == 0:
        return GreedyResult([], [])
    first = objective.gains(idx)
    singles = (idx, first)
    bound = (first / costs[idx]).tolist()
    fresh = [(-b, i) for b, i in zip(bound, idx.tolist(), strict=True)]  # every candidate, for the first pick
    heap: list[tuple[float, int]] = []  # stale bounds: (-gain per unit cost, index), a min-heap
    gain = dict(zip(idx.tolist(), first.tolist(), strict=True))
    order: list[int] = []
    gains: list[float] = []
    left = limit
    while True:
        fresh = [entry for entry in fresh if costs_list[entry[1]] <= left]
        batch = 1
        while heap:
            best = -min(fresh)[0] if fresh else -math.inf
            floor = best - ROUNDING_TOLERANCE * abs(best) if math.isfinite(best) else best
            stale: list[int] = []
            while heap and len(stale) < batch and -heap[0][0] >= floor:
                entry = heapq.heappop(heap)
                if costs_list[entry[1]] <= left:  # what no longer fits never will: dropped
                    stale.append(entry[1])
            if not stale:
                break
            refreshed = objective.gains(torch.tensor(stale))
            for i, g in zip(stale, refreshed.tolist(), strict=True):
                gain[i] = g
                fresh.append((-g / costs_list[i], i))
            batch *= 2
        if not fresh:
            break
        top = min(fresh)  # the largest bound, then the lowest index
        _pick(objective, top[1], gain[top[1]], order, gains)
        left -= costs_list[top[1]]
        others = [entry for entry in fresh if entry is not top]
        if len(others) > len(heap):  # the first pick: every candidate goes to the heap at once
            heap.extend(others)
            heapq.heapify(heap)
        else:
            for entry in others:
                heapq.heappush(heap, entry)
        fresh = []
        if on_step:
            on_step(limit - left)
    return better_than_best_single(GreedyResult(order, gains), singles)


def stochastic_greedy(
    objective: Objective,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    sample_size: int,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> GreedyResult:
    """Stochastic greedy ("lazier than lazy greedy", Mirzasoleiman et al. 2015): each pick considers only a
    seeded random sample of `sample_size` remaining candidates, drawn with replacement, and takes the sample's
    best gain per unit cost. With (N/K) ln(1/eps) samples per pick, K picks reach 1 - 1/e - eps of the optimum
    in expectation (cardinality budget). Bounds cached from earlier picks still spare re-evaluation inside a
    sample, as in `lazy_greedy`; a pick costs O(sample), not O(N).
    """
    cache = _Bounds(objective, costs)
    generator = torch.Generator().manual_seed(seed)
    alive = torch.zeros(len(costs), dtype=torch.bool)
    alive[candidates] = True
    pool = (alive & (costs <= limit)).nonzero().flatten()  # compacted only when a sample comes back empty
    order: list[int] = []
    gains: list[float] = []
    left = limit
    while len(pool):
        sample: Tensor = torch.unique(pool[torch.randint(len(pool), (sample_size,), generator=generator)])
        sample = sample[alive[sample] & (costs[sample] <= left)]
        if len(sample) == 0:  # only picked or unaffordable candidates drawn: drop those and draw again
            pool = pool[alive[pool] & (costs[pool] <= left)]
            continue
        cache.refresh(sample[torch.isinf(cache.bound[sample])])  # never evaluated
        top = cache.best_in(sample)
        _pick(objective, top, float(cache.gain[top]), order, gains)
        cache.fresh[sample] = False
        alive[top] = False
        left -= float(costs[top])
        if on_step:
            on_step(limit - left)
    return GreedyResult(order, gains)


class _Bounds:
    """Each candidate's last computed gain, its gain per unit cost (an upper bound on the current one: gains
    only decrease) and whether it was computed since the last pick."""

    def __init__(self, objective: Objective, costs: Tensor) -> None:
        self.objective, self.costs = objective, costs
        self.gain = torch.zeros(len(costs), dtype=torch.float64)
        self.bound = torch.full((len(costs),), torch.inf, dtype=torch.float64)
        self.fresh = torch.zeros(len(costs), dtype=torch.bool)

    def refresh(self, idx: Tensor) -> None:
        if len(idx):
            self.gain[idx] = self.objective.gains(idx)
            self.bound[idx] = self.gain[idx] / self.costs[idx]
            self.fresh[idx] = True

    def best_in(self, pool: Tensor) -> int:
        """The candidate of `pool` (ascending indices) with the best current gain per unit cost, ties to the
        lowest index. Stale bounds that reach the best fresh value (less ROUNDING_TOLERANCE) are refreshed,
        highest first, in batches of 1, 2, 4, ...; when none is left, the best fresh value is exact greedy's."""
        batch = 1
        while True:
            bound, fresh = self.bound[pool], self.fresh[pool]
            best = torch.where(fresh, bound, -torch.inf).max()
            floor = best - ROUNDING_TOLERANCE * best.abs() if torch.isfinite(best) else best
            stale = ~fresh & (bound >= floor)
            n_stale = int(stale.sum())
            if n_stale == 0:
                return int(pool[torch.argmax(torch.where(fresh, bound, -torch.inf))])  # first maximum
            self.refresh(pool[torch.topk(torch.where(stale, bound, -torch.inf), min(batch, n_stale)).indices])
            batch *= 2


def _pick(objective: Objective, i: int, gain: float, order: list[int], gains: list[float]) -> None:
    objective.add(i)
    order.append(i)
    gains.append(gain)


def better_than_best_single(result: GreedyResult, singles: tuple[Tensor, Tensor] | None) -> GreedyResult:
    """The greedy set, or the best single affordable candidate when that alone is worth more (never the case
    with unit costs, where greedy's first pick is that candidate)."""
    if singles is None:
        return result
    idx, gain = singles
    best = int(torch.argmax(gain))
    if float(gain[best]) > sum(result.gains):
        return GreedyResult([int(idx[best])], [float(gain[best])])
    return result

"""Greedy maximisation of a monotone submodular objective under a knapsack budget.

Each candidate i has a cost c_i; a selection may cost at most `limit`. Greedy adds, at every step, the
candidate with the largest gain per unit cost among those that still fit (ties: lowest index). With unit costs
this is the classic cardinality greedy (1 - 1/e of the optimum). With other costs the greedy set is compared with
the best single affordable candidate and the better of the two is returned (Khuller, Moss & Naor 1999).

`exact_greedy` evaluates every remaining candidate at every step. `lazy_greedy` (Minoux 1978) keeps the last
computed gain of each candidate as an upper bound, valid because gains only decrease as the set grows, and
re-evaluates only the candidates whose bound reaches the top of a heap. Both see the same gain values, so they
return the same selection in the same order.
"""

import heapq
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
    return _better_than_best_single(GreedyResult(order, gains), singles)


def lazy_greedy(
    objective: Objective, costs: Tensor, limit: float, candidates: Tensor, on_step: StepCallback | None = None
) -> GreedyResult:
    """Greedy with cached upper bounds on the gains; same result as `exact_greedy`, far fewer evaluations."""
    idx = candidates[costs[candidates] <= limit]
    order: list[int] = []
    gains: list[float] = []
    if len(idx) == 0:
        return GreedyResult(order, gains)
    gain = objective.gains(idx)
    singles = (idx, gain)
    heap = list(zip((-(gain / costs[idx])).tolist(), idx.tolist(), strict=True))
    heapq.heapify(heap)
    last_gain = torch.zeros(len(costs), dtype=torch.float64).index_copy_(0, idx, gain).tolist()
    fresh_at = [0] * len(costs)  # the step at which each cached gain was computed
    cost = costs.tolist()
    left = limit
    while heap:
        batch = 1
        while heap:
            _, top = heap[0]
            if cost[top] > left:
                heapq.heappop(heap)  # it will never fit again
                continue
            if fresh_at[top] == len(order):
                stale = _pop_stale_near_top(heap, cost, left, fresh_at, len(order))
                if not stale:
                    break
            else:
                stale = _pop_stale(heap, batch, cost, left, fresh_at, len(order))
                batch *= 2
            stale_idx = torch.tensor(stale, dtype=torch.int64)
            fresh = objective.gains(stale_idx)
            keys = (-(fresh / costs[stale_idx])).tolist()
            for i, value, key in zip(stale, fresh.tolist(), keys, strict=True):
                last_gain[i], fresh_at[i] = value, len(order)
                heapq.heappush(heap, (key, i))
        if not heap:
            break
        _, top = heapq.heappop(heap)
        _pick(objective, top, last_gain[top], order, gains)
        left -= cost[top]
        if on_step:
            on_step(limit - left)
    return _better_than_best_single(GreedyResult(order, gains), singles)


def _pop_stale(
    heap: list[tuple[float, int]], batch: int, cost: list[float], left: float, fresh_at: list[int], step: int
) -> list[int]:
    """Pop up to `batch` stale, affordable entries from the top of the heap, stopping at the first fresh one."""
    stale: list[int] = []
    while heap and len(stale) < batch and fresh_at[heap[0][1]] != step:
        _, i = heapq.heappop(heap)
        if cost[i] <= left:
            stale.append(i)
    return stale


def _pop_stale_near_top(
    heap: list[tuple[float, int]], cost: list[float], left: float, fresh_at: list[int], step: int
) -> list[int]:
    """Pop the stale, affordable entries whose bound is within ROUNDING_TOLERANCE of the fresh top's value;
    fresh entries popped on the way go back."""
    best = -heap[0][0]
    floor_key = -(best - ROUNDING_TOLERANCE * abs(best))
    stale: list[int] = []
    fresh: list[tuple[float, int]] = []
    while heap and heap[0][0] <= floor_key:
        entry = heapq.heappop(heap)
        if fresh_at[entry[1]] == step:
            fresh.append(entry)
        elif cost[entry[1]] <= left:
            stale.append(entry[1])
    for entry in fresh:
        heapq.heappush(heap, entry)
    return stale


def _pick(objective: Objective, i: int, gain: float, order: list[int], gains: list[float]) -> None:
    objective.add(i)
    order.append(i)
    gains.append(gain)


def _better_than_best_single(result: GreedyResult, singles: tuple[Tensor, Tensor] | None) -> GreedyResult:
    """The greedy set, or the best single affordable candidate when that alone is worth more (never the case
    with unit costs, where greedy's first pick is that candidate)."""
    if singles is None:
        return result
    idx, gain = singles
    best = int(torch.argmax(gain))
    if float(gain[best]) > sum(result.gains):
        return GreedyResult([int(idx[best])], [float(gain[best])])
    return result

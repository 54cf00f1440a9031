"""Greedy maximisation of a monotone submodular objective under a knapsack budget.

Each candidate i has a cost c_i; a selection may cost at most `limit`. Greedy adds, at every step, the
candidate with the largest gain per unit cost among those that still fit (ties: lowest index). With unit costs
this is the classic cardinality greedy (1 - 1/e of the optimum). With other costs the greedy set is compared with
the best single affordable candidate and the better of the two is returned (Khuller, Moss & Naor 1999).

`exact_greedy` evaluates every remaining candidate at every step. `lazy_greedy` (Minoux 1978) keeps the last
computed gain of each candidate as an upper bound, valid because gains only decrease as the set grows, and
re-evaluates only the candidates whose bound reaches the best current gain. Both see the same gain values, so
they return the same selection in the same order.
"""

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
    """Greedy with cached upper bounds on the gains; same result as `exact_greedy`, far fewer evaluations.

    Each candidate keeps its last computed gain per unit cost, an upper bound on its current one. Before a pick,
    the stale bounds that reach the best current value (less ROUNDING_TOLERANCE) are refreshed, highest first, in
    batches of 1, 2, 4, ...; when none is left, the best current value is the exact-greedy pick. The bounds live
    in tensors: a round is a few vector operations over all candidates, not a heap operation per candidate.
    """
    alive = torch.zeros(len(costs), dtype=torch.bool)
    alive[candidates] = True
    alive &= costs <= limit
    idx = alive.nonzero().flatten()
    order: list[int] = []
    gains: list[float] = []
    if len(idx) == 0:
        return GreedyResult(order, gains)
    gain = torch.zeros(len(costs), dtype=torch.float64)
    gain[idx] = objective.gains(idx)
    singles = (idx, gain[idx].clone())
    bound = torch.full((len(costs),), -torch.inf, dtype=torch.float64)
    bound[idx] = gain[idx] / costs[idx]
    fresh = alive.clone()  # gain computed at the current step
    left = limit
    while True:
        alive &= costs <= left
        if not alive.any():
            break
        batch = 1
        while True:
            best = torch.where(alive & fresh, bound, -torch.inf).max()
            floor = best - ROUNDING_TOLERANCE * best.abs() if torch.isfinite(best) else best
            stale = alive & ~fresh & (bound >= floor)
            n_stale = int(stale.sum())
            if n_stale == 0:
                break
            chosen = torch.topk(torch.where(stale, bound, -torch.inf), min(batch, n_stale)).indices
            gain[chosen] = objective.gains(chosen)
            bound[chosen] = gain[chosen] / costs[chosen]
            fresh[chosen] = True
            batch *= 2
        top = int(torch.argmax(torch.where(alive & fresh, bound, -torch.inf)))  # first maximum: lowest index
        _pick(objective, top, float(gain[top]), order, gains)
        alive[top] = False
        fresh[:] = False
        left -= float(costs[top])
        if on_step:
            on_step(limit - left)
    return _better_than_best_single(GreedyResult(order, gains), singles)


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

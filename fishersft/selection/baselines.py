"""The orders the baseline methods take examples in: seeded random, k-center coverage, similarity to a target
set, and highest base-model loss or instruction-following difficulty. Each keeps the examples that still fit the
budget, in its own order; the selector measures what they add to log det Sigma, so every method is scored by the
same objective."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fishersft.contract.selection import Method
from fishersft.selection.kcenter import kcenter_greedy
from fishersft.selection.similarity import similarity_order


@dataclass(frozen=True)
class BaselineInputs:
    """What the baselines rank by, beside the feature blocks: each example's mean feature [N x d] (kcenter,
    similarity), the target set's mean features [M x d] (similarity), a score per example [N] (loss, ifd)."""

    points: Tensor | None = None
    target: Tensor | None = None
    scores: Tensor | None = None


def baseline_order(
    method: Method,
    inputs: BaselineInputs,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    warm_start: Sequence[int] = (),
    seed: int = 0,
) -> list[int]:
    """The examples `method` picks from `candidates` under the budget (costs summing to at most `limit`)."""
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return fitting(candidates[torch.randperm(len(candidates), generator=generator)].tolist(), costs, limit)
    if method in ("loss", "ifd"):
        scores = _needs(inputs.scores, method, "a score per example")
        ranked = candidates[torch.argsort(scores[candidates].to(torch.float64), descending=True, stable=True)]
        return fitting(ranked.tolist(), costs, limit)
    points = _needs(inputs.points, method, "each example's mean feature")
    if method == "kcenter":
        return kcenter_greedy(points, costs, limit, candidates, warm_start).order
    if method == "similarity":
        target = _needs(inputs.target, method, "the target set's mean features")
        return similarity_order(points, target, costs, limit, candidates).order
    raise ValueError(f"{method!r} is not a baseline method")


def fitting(order: Sequence[int], costs: Tensor, limit: float) -> list[int]:
    """The examples of `order`, in order, that still fit what is left of the budget when their turn comes."""
    cost, left, taken = costs.tolist(), limit, []
    for i in order:
        if cost[i] <= left:
            taken.append(i)
            left -= cost[i]
    return taken


def _needs(value: Tensor | None, method: Method, what: str) -> Tensor:
    if value is None:
        raise ValueError(f"method {method!r} needs {what}")
    return value

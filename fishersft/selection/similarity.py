"""Similarity to a target set: the RDS+ baseline (Ivison et al. 2025, "Large-Scale Data Selection for
Instruction Tuning", arXiv 2503.01807).

RDS+ embeds every pool example and every query (target) example by a pooled final hidden state of the model
(position-weighted mean pooling, after SGPT), L2-normalises the embeddings, and scores each pool example by its
cosine similarity to each query example. For one target task it takes the pool examples in decreasing order of
their highest similarity to any query example (the "max" selection of the authors' code,
hamishivi/automated-instruction-selection: minimal_multitask/get_top_optimized.py pops (score, train index)
pairs of every query example from one max-heap and skips repeats, which is that order, ties to the lower index).
For several tasks the paper goes round-robin over the tasks, each taking its next best example; one target set
here is one task, so that round-robin does not arise.

Here the embeddings are the caller's per-example vectors (the service's: each example's mean pre-logit
feature); a zero vector has similarity 0 to everything. The per-candidate score is the maximum over the target
examples, computed a chunk of candidates at a time: memory O(chunk x M), never O(N x M).
"""

import torch
from torch import Tensor

from fishersft.selection.greedy import GreedyResult, StepCallback
from fishersft.selection.quotas import GroupLimits, QuotaState

CHUNK_ELEMENTS = 1 << 24
"""Float32 elements (64 MiB) per chunk of normalised rows or of candidate-by-target similarities."""


def similarity_order(
    points: Tensor,
    target: Tensor,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    on_step: StepCallback | None = None,
    quotas: GroupLimits | None = None,
) -> GreedyResult:
    """RDS+ over `candidates` (indices of the rows of `points` [N x d], each example's vector) towards `target`
    [M x d] (the target examples' vectors), under a budget: example i costs costs[i], the picks at most `limit`.

    Candidates are taken in decreasing order of their highest cosine similarity to a target example (ties:
    lowest index), each one if it still fits what is left of the budget (and, with `quotas`, its group's quota
    allows it: fishersft.selection.quotas), until none fits. Gains are those similarity scores.
    """
    if len(target) == 0:
        raise ValueError("the target set is empty")
    rows = torch.sort(candidates.to(points.device)).values
    score = max_similarity(points, target, rows)
    ranked = torch.sort(score, descending=True, stable=True).indices  # stable: equal scores keep index order
    cost = costs.to(torch.float64).cpu()[rows.cpu()]
    affordable, index, similarity = cost.tolist(), rows.tolist(), score.tolist()
    cheapest = float(cost.min()) if len(cost) else 0.0
    order: list[int] = []
    gains: list[float] = []
    left = limit
    state = None if quotas is None else QuotaState(quotas, costs, index)
    for position in ranked.tolist():
        if left < cheapest:  # nothing fits any more
            break
        if affordable[position] <= left and (state is None or state.allows(index[position], left)):
            if state is not None:
                state.take(index[position])
            order.append(index[position])
            gains.append(similarity[position])
            left -= affordable[position]
            if on_step:
                on_step(limit - left)
    return GreedyResult(order, gains)


def max_similarity(points: Tensor, target: Tensor, rows: Tensor) -> Tensor:
    """max over target examples t of cos(x_r, t), for every given row r of `points`, in chunks of rows."""
    targets = _unit(target.to(points.device).float())
    step = max(1, CHUNK_ELEMENTS // max(points.shape[1], len(targets), 1))
    parts = [(_unit(points[chunk].float()) @ targets.T).max(dim=1).values for chunk in torch.split(rows, step)]
    return torch.cat(parts) if parts else torch.zeros(0, device=points.device)


def _unit(x: Tensor) -> Tensor:
    """Rows scaled to norm 1; a zero row stays zero."""
    return torch.nn.functional.normalize(x, dim=1)

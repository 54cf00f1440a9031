"""Greedy k-center (farthest-first traversal): the coverage baseline.

Each pick is the candidate farthest from its nearest center, so the picks spread over the data and every example
ends up close to some pick. For K centers the covering radius is at most twice the optimal K-center radius
(Gonzalez 1985); Sener & Savarese (ICLR 2018, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach") use this greedy as their core-set selection, starting from the already labelled examples.

Distances are Euclidean between L2-normalised vectors (cosine geometry: |u - v|^2 = 2 - 2 cos(u, v)); a zero
vector stays zero, at distance 1 from every unit vector. The nearest-center distance of every candidate is kept
and lowered after each pick by its distance to the new center: O(N d) per pick, products of slices of rows with
the center, with no N x N matrix. Distances come from those products (|u - v|^2 = |u|^2 + |v|^2 - 2 u.v, in
float32), so they carry rounding of about 1e-3 near 0: an exact copy of a center is at distance 0 to that.
"""

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from fishersft.selection.greedy import GreedyResult, StepCallback
from fishersft.selection.quotas import GroupLimits, QuotaState

CHUNK_ELEMENTS = 1 << 24
"""Float32 elements (64 MiB) per chunk of normalised rows or of row-to-center distances."""


def kcenter_greedy(
    points: Tensor,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    warm_start: Sequence[int] = (),
    on_step: StepCallback | None = None,
    quotas: GroupLimits | None = None,
) -> GreedyResult:
    """Farthest-first traversal over `candidates` (indices of the rows of `points` [N x d], each example's
    vector) under a budget: example i costs costs[i] and the picks may cost at most `limit`.

    The centers start as the `warm_start` examples, which are never picked. Each step picks, among the remaining
    candidates that still fit the budget (cost <= what is left), the one farthest from its nearest center (ties:
    lowest index), which becomes a center; it stops when none fits. Without a warm start there is no center for
    the first pick: it is the candidate farthest from the mean of the candidates' normalised vectors
    (deterministic, unlike Gonzalez's arbitrary first point), and the mean is not a center after it.

    Gains are each pick's distance to its nearest center when it was picked (the first pick of a cold start: its
    distance to the mean). Apart from that one they never increase: each is the covering radius, by the
    centers before it, of the remaining candidates that fit. With `quotas`, only the candidates their group's
    quota allows are considered at each step (fishersft.selection.quotas).
    """
    device = points.device
    rows = torch.sort(candidates.to(device)).values
    scale = _inverse_norms(points)
    squares = (_norms(points) * scale)[rows] ** 2  # |u_r|^2: 1, or 0 for a zero row
    cost = costs.to(device=device, dtype=torch.float64)[rows]
    alive = cost <= limit
    if not bool(alive.any()):
        return GreedyResult([], [])
    if warm_start:
        warm = torch.as_tensor(list(warm_start), dtype=torch.long, device=device)
        alive &= ~torch.isin(rows, warm)
        centers = points[warm].float() * scale[warm, None]
    else:
        centers = _mean_unit(points, rows, scale)[None, :]
    nearest = _nearest(points, scale, rows, squares, centers)
    order: list[int] = []
    gains: list[float] = []
    left = limit
    cold = not warm_start  # the mean stood in for a center: replaced, not joined, by the first pick
    state = None if quotas is None else QuotaState(quotas, costs, rows.tolist())
    while True:
        allowed = alive & (cost <= left)
        if state is not None:
            allowed &= state.admissible(rows.cpu(), left).to(device)
        score = torch.where(allowed, nearest, -torch.inf)
        best = int(torch.argmax(score))  # the first maximum: the lowest index
        if not bool(torch.isfinite(score[best])):
            break
        i = int(rows[best])
        if state is not None:
            state.take(i)
        order.append(i)
        gains.append(float(nearest[best]))
        alive[best] = False
        left -= float(cost[best])
        distance = _nearest(points, scale, rows, squares, points[i : i + 1].float() * scale[i])
        nearest = distance if cold else torch.minimum(nearest, distance)
        cold = False
        if on_step:
            on_step(limit - left)
    return GreedyResult(order, gains)


def _norms(points: Tensor) -> Tensor:
    """|x| of every row, a slice of rows at a time."""
    step = _chunk_rows(points.shape[1])
    return torch.cat([torch.linalg.vector_norm(part.float(), dim=1) for part in torch.split(points, step)])


def _inverse_norms(points: Tensor) -> Tensor:
    """1 / |x| of every row (1 / 1e-12 for a zero row, which stays zero)."""
    return 1 / _norms(points).clamp(min=1e-12)


def _mean_unit(points: Tensor, rows: Tensor, scale: Tensor) -> Tensor:
    """Mean of the normalised given rows, in chunks."""
    step = _chunk_rows(points.shape[1])
    total = torch.zeros(points.shape[1], dtype=torch.float64, device=points.device)
    for chunk in torch.split(rows, step):
        total += (points[chunk].float() * scale[chunk, None]).sum(dim=0, dtype=torch.float64)
    return (total / len(rows)).float()


def _nearest(points: Tensor, scale: Tensor, rows: Tensor, squares: Tensor, centers: Tensor) -> Tensor:
    """min over centers c of |u_r - c| for the given rows r (ascending), u_r = x_r / |x_r|, by products of a slice
    of `points` (no copy) with a chunk of centers at a time: memory O(chunk) beyond the result. Slices without
    any of the rows are skipped."""
    step = _chunk_rows(points.shape[1])
    block = _chunk_rows(step)
    norms = (centers * centers).sum(dim=1)
    bounds = torch.searchsorted(rows, torch.arange(0, len(points) + step, step, device=rows.device)).tolist()
    nearest = torch.full((len(rows),), torch.inf, device=points.device)
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if lo == hi:
            continue
        x = points[k * step : (k + 1) * step].float()
        local = rows[lo:hi] - k * step
        for part, part_norms in zip(torch.split(centers, block), torch.split(norms, block), strict=True):
            products = (x @ part.T)[local] * scale[rows[lo:hi], None]
            squared = squares[lo:hi, None] + part_norms[None, :] - 2 * products
            nearest[lo:hi] = torch.minimum(nearest[lo:hi], squared.clamp(min=0).min(dim=1).values.sqrt())
    return nearest


def _chunk_rows(width: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(width, 1))

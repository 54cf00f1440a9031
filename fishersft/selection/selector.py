"""Choose examples under a budget: FisherSFT greedy (lazy, exact or stochastic; exact greedy on a target's
predictive variance when a target is given) or a baseline's order."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from fishersft.contract.selection import DEFAULT_EPSILON, Algorithm, Budget, Method, Weighting
from fishersft.errors import InputError
from fishersft.methods import DEFAULT_METHOD, RankingInputs, method_spec
from fishersft.selection.batched import batched_greedy
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import GreedyResult, StepCallback, exact_greedy, lazy_greedy, stochastic_greedy
from fishersft.selection.incremental import incremental_greedy
from fishersft.selection.logdet import LogDetObjective
from fishersft.selection.quotas import GroupLimits, quota_greedy
from fishersft.selection.targeted import TargetedObjective, predictive_variance


@dataclass
class Selection:
    indices: list[int]
    """Chosen example indices, in pick order."""
    gains: list[float]
    """f(S) increase of each pick, given the picks before it (and the warm start)."""
    objective: float
    """f(S) = log det(lambda*I + sum of X_i^T X_i over the warm start and the picks)."""
    evaluations: int
    """How many single-example gains were computed."""
    variance: tuple[float, float] | None = None
    """With a target: its predictive variance tr(A Sigma^-1) before the picks (after the warm start) and after."""
    algorithm: Algorithm = "lazy"
    """The greedy that ran (see `greedy_algorithm`; exact for fisher with a target; as asked for other methods)."""


def select(
    features: Tensor,
    offsets: Tensor,
    budget: Budget,
    *,
    weighting: Weighting = "tokens",
    uncertainty: Tensor | None = None,
    **options: Any,
) -> Selection:
    """Select examples from in-memory `features` [tokens x d], example i owning rows offsets[i]:offsets[i+1]
    (its loss tokens). `weighting`: see WEIGHTING_DOC (`uncertainty` needs each row's u [tokens]); `options`:
    those of `select_blocks`."""
    lengths = offsets.diff()
    blocks = FeatureBlocks.of(*weighted(features, offsets, weighting, uncertainty))
    return select_blocks(blocks, lengths, budget, **options)


def select_blocks(
    blocks: FeatureBlocks,
    lengths: Tensor,
    budget: Budget,
    *,
    method: Method = DEFAULT_METHOD,
    lam: float = 1.0,
    seed: int = 0,
    warm_start: Sequence[int] = (),
    exclude: Sequence[int] = (),
    algorithm: Algorithm = "lazy",
    epsilon: float = DEFAULT_EPSILON,
    device: torch.device | str = "cpu",
    on_step: StepCallback | None = None,
    ranking_inputs: RankingInputs | None = None,
    target: Tensor | None = None,
    quotas: GroupLimits | None = None,
) -> Selection:
    """Select examples given their (weighted) feature blocks and loss tokens `lengths` (the costs of a token
    budget). Examples in `warm_start` (indices) are already in the design: they seed Sigma and are not chosen
    again. Examples in `exclude` (indices: a held-out set, say) are never chosen. Gains are computed on `device`.
    `algorithm`: `lazy` (exact greedy's picks by the fastest path for the data's shape, see `greedy_algorithm`),
    `incremental` (exact greedy's picks for examples of one row, see `incremental_greedy`), `exact` (every gain at
    every step: the reference), `batched` (exact greedy's picks without a host round trip per pick: for GPUs, see
    `batched_greedy`) or `stochastic` (approximate, see `stochastic_greedy`, with `epsilon`). A method that ranks
    (see fishersft.methods) takes examples in its own order, from the `ranking_inputs` its spec asks for; its gains
    are measured on the same objective. `target`: a target set's second moment A [d x d] (see
    fishersft.selection.targeted); with it, fisher is exact greedy on the target's predictive variance (whatever
    `algorithm`), and every method reports that variance. `quotas`: each group's min and max picks, which every
    method keeps (fishersft.selection.quotas; fisher runs lazy greedy, or exact with `algorithm` exact or a target,
    over the candidates they allow)."""
    objective = LogDetObjective(blocks, lam, device)
    for i in warm_start:
        objective.add(i)
    start = objective.value()
    before = 0.0 if target is None else predictive_variance(objective.sigma, target)
    candidates = torch.ones(len(blocks), dtype=torch.bool)
    candidates[list(warm_start)] = False
    candidates[list(exclude)] = False
    candidates = candidates.nonzero().flatten()
    costs, limit = budget_costs(budget, lengths)
    evaluations = 0
    spec = method_spec(method)
    if spec.objective and target is None and quotas is None:  # quotas run lazy or exact greedy (quota_greedy)
        algorithm = greedy_algorithm(algorithm, blocks, candidates)
    if spec.objective and target is not None:
        algorithm = "exact"
        targeted = TargetedObjective(blocks, target, lam, device)
        for i in warm_start:
            targeted.add(i)
        if quotas is None:
            picks = exact_greedy(targeted, costs, limit, candidates, on_step).order
        else:
            picks = quota_greedy(targeted, costs, limit, candidates, quotas, lazy=False, on_step=on_step).order
        result = _measured(objective, picks, costs, None)
        evaluations = targeted.evaluations
    elif spec.ranking is not None:
        inputs = replace(ranking_inputs or RankingInputs(), quotas=quotas)
        order = spec.ranking(inputs, costs, limit, candidates, warm_start, seed)
        result = _measured(objective, order, costs, on_step)
    elif quotas is not None:
        result = quota_greedy(objective, costs, limit, candidates, quotas, lazy=algorithm != "exact", on_step=on_step)
    elif algorithm == "batched":
        result = batched_greedy(objective, costs, limit, candidates, on_step)
    elif algorithm == "incremental":
        result = incremental_greedy(objective, costs, limit, candidates, on_step)
    elif algorithm == "stochastic":
        size = stochastic_sample_size(len(candidates), expected_picks(costs[candidates], limit), epsilon)
        result = stochastic_greedy(objective, costs, limit, candidates, size, seed, on_step)
    else:
        result = (lazy_greedy if algorithm == "lazy" else exact_greedy)(objective, costs, limit, candidates, on_step)
    variance = None if target is None else (before, predictive_variance(objective.sigma, target))
    return Selection(
        result.order, result.gains, start + sum(result.gains), objective.evaluations + evaluations, variance, algorithm
    )


def greedy_algorithm(asked: Algorithm, blocks: FeatureBlocks, candidates: Tensor) -> Algorithm:
    """The greedy that runs for `asked`: `lazy` asks for exact greedy's picks by the fastest path, which is
    `incremental` when every candidate has at most one row (O(N d) a pick, whatever the picks' gains: see
    docs/speed.md), else lazy greedy. Asking for `incremental` on examples of several rows is an input error."""
    one_row = len(candidates) == 0 or int(blocks.counts[candidates].max()) <= 1
    if asked == "incremental" and not one_row:
        raise InputError(
            "algorithm 'incremental' needs examples of one feature row (weighting 'mean', or a features file of one "
            "row per example)",
            ["algorithm: use 'lazy', which runs incremental greedy whenever every example has one row"],
        )
    return "incremental" if asked == "lazy" and one_row else asked


def budget_costs(budget: Budget, lengths: Tensor) -> tuple[Tensor, float]:
    """Per-example costs under `budget` (1 an example, or its loss tokens) and the limit on their sum."""
    if budget.examples is not None:
        return torch.ones(len(lengths), dtype=torch.float64), float(budget.examples)
    return lengths.to(torch.float64), float(budget.limit)


def expected_picks(costs: Tensor, limit: float) -> float:
    """K of a budget: the examples it allows, or for a token budget the tokens over the mean example's."""
    return min(len(costs), limit / float(costs.mean())) if len(costs) else 0.0


def stochastic_sample_size(n: int, k: float, epsilon: float) -> int:
    """(N/K) ln(1/eps) candidates per pick (Mirzasoleiman et al. 2015), at least 1 and at most N."""
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    return max(1, min(n, math.ceil(n / max(k, 1.0) * math.log(1 / epsilon))))


def weighted(
    features: Tensor, offsets: Tensor, weighting: Weighting, uncertainty: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The rows, their offsets and a per-example scale of the rows (or None) whose sum of outer products per
    example is that example's term of Sigma. `uncertainty` [tokens]: each row's u, for weighting `uncertainty`."""
    lengths = offsets.diff()
    if weighting == "tokens":
        return features, offsets, None
    if weighting == "uncertainty":  # rows scaled by u: X_i^T X_i becomes X_i^T diag(u^2) X_i
        if uncertainty is None or uncertainty.shape != features.shape[:1]:
            raise ValueError("weighting 'uncertainty' needs each row's uncertainty [tokens]")
        return features * uncertainty.to(features.dtype)[:, None], offsets, None
    if weighting == "examples":  # rows scaled by 1/sqrt(n_i): X_i^T X_i becomes X_i^T X_i / n_i
        return features, offsets, lengths.to(torch.float32).rsqrt()
    if weighting == "mean":  # one row per example: its mean feature
        owner = torch.arange(len(lengths)).repeat_interleave(lengths)
        sums = torch.zeros(len(lengths), features.shape[1], dtype=torch.float32).index_add_(0, owner, features.float())
        return sums / lengths.clamp(min=1)[:, None], torch.arange(len(lengths) + 1), None
    raise ValueError(f"unknown weighting {weighting!r}")


def _measured(
    objective: LogDetObjective, order: Sequence[int], costs: Tensor, on_step: StepCallback | None
) -> GreedyResult:
    """`order` added to the design one by one: what each pick adds to log det Sigma."""
    gains, spent = [], 0.0
    for i in order:
        gains.append(float(objective.gains(torch.tensor([i]))[0]))
        objective.add(i)
        spent += float(costs[i])
        if on_step:
            on_step(spent)
    return GreedyResult(list(order), gains)

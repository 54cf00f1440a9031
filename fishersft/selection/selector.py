"""Choose examples under a budget: FisherSFT greedy (lazy or exact) or the seeded random baseline."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import GreedyResult, StepCallback, exact_greedy, lazy_greedy
from fishersft.selection.logdet import LogDetObjective
from fishersft.variants import Method, Weighting


@dataclass(frozen=True)
class Budget:
    """At most `examples` examples, or at most `tokens` loss tokens: exactly one of the two."""

    examples: int | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.examples is None) == (self.tokens is None):
            raise ValueError("give exactly one of examples and tokens")
        if (self.examples if self.examples is not None else self.tokens) < 0:  # type: ignore[operator]
            raise ValueError("a budget cannot be negative")

    def as_dict(self) -> dict[str, int]:
        """`{"examples": K}` or `{"tokens": T}`, as the CLI's result and the HTTP API write it."""
        return {"examples": self.examples} if self.examples is not None else {"tokens": self.tokens}  # type: ignore[dict-item]

    def costs(self, lengths: Tensor) -> tuple[Tensor, float]:
        """Per-example costs and the limit on their sum."""
        if self.examples is not None:
            return torch.ones(len(lengths), dtype=torch.float64), float(self.examples)
        return lengths.to(torch.float64), float(self.tokens)  # type: ignore[arg-type]


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


def select(
    features: Tensor,
    offsets: Tensor,
    budget: Budget,
    *,
    method: Method = "fisher",
    lam: float = 1.0,
    seed: int = 0,
    warm_start: Sequence[int] = (),
    exclude: Sequence[int] = (),
    weighting: Weighting = "tokens",
    lazy: bool = True,
    on_step: StepCallback | None = None,
) -> Selection:
    """Select examples from the flat `features` [tokens x d], example i owning rows offsets[i]:offsets[i+1].

    Examples in `warm_start` (indices) are already in the design: they seed Sigma and are not chosen again.
    Examples in `exclude` (indices: a held-out set, say) are never chosen. `weighting`: see WEIGHTING_DOC.
    """
    lengths = offsets.diff()
    blocks = FeatureBlocks(*weighted(features, offsets, weighting))
    objective = LogDetObjective(blocks, lam)
    for i in warm_start:
        objective.add(i)
    start = objective.value()
    candidates = torch.ones(len(blocks), dtype=torch.bool)
    candidates[list(warm_start)] = False
    candidates[list(exclude)] = False
    candidates = candidates.nonzero().flatten()
    costs, limit = budget.costs(lengths)
    if method == "random":
        result = _random_order(objective, costs, limit, candidates, seed, on_step)
    elif method == "fisher":
        result = (lazy_greedy if lazy else exact_greedy)(objective, costs, limit, candidates, on_step)
    else:
        raise ValueError(f"unknown method {method!r}")
    return Selection(result.order, result.gains, start + sum(result.gains), objective.evaluations)


def weighted(features: Tensor, offsets: Tensor, weighting: Weighting) -> tuple[Tensor, Tensor]:
    """The rows and offsets whose sum of outer products per example is that example's term of Sigma."""
    lengths = offsets.diff()
    if weighting == "tokens":
        return features, offsets
    if weighting == "examples":  # rows scaled by 1/sqrt(n_i): X_i^T X_i becomes X_i^T X_i / n_i
        return features * lengths.to(features.dtype).rsqrt().repeat_interleave(lengths)[:, None], offsets
    if weighting == "mean":  # one row per example: its mean feature
        owner = torch.arange(len(lengths)).repeat_interleave(lengths)
        sums = torch.zeros(len(lengths), features.shape[1], dtype=features.dtype).index_add_(0, owner, features)
        return sums / lengths.clamp(min=1).to(features.dtype)[:, None], torch.arange(len(lengths) + 1)
    raise ValueError(f"unknown weighting {weighting!r}")


def _random_order(
    objective: LogDetObjective,
    costs: Tensor,
    limit: float,
    candidates: Tensor,
    seed: int,
    on_step: StepCallback | None,
) -> GreedyResult:
    """Candidates in a seeded random order, each taken if it still fits; gains are measured as they are added."""
    generator = torch.Generator().manual_seed(seed)
    order, gains = [], []
    cost = costs.tolist()
    left = limit
    for i in candidates[torch.randperm(len(candidates), generator=generator)].tolist():
        if cost[i] <= left:
            gains.append(float(objective.gains(torch.tensor([i]))[0]))
            objective.add(i)
            order.append(i)
            left -= cost[i]
            if on_step:
                on_step(limit - left)
    return GreedyResult(order, gains)

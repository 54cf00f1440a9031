"""Batched greedy (picks on the device) against exact greedy, lazy greedy and the brute-force references."""

import itertools

import pytest
import torch

from fishersft.contract.selection import Budget
from fishersft.selection import select
from fishersft.selection.batched import WINDOW, batched_greedy
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import exact_greedy
from fishersft.selection.logdet import LogDetObjective
from fishersft.selection.selector import budget_costs, select_blocks
from tests.test_selection import logdet_of, naive_greedy, random_dataset


def greedy_pair(seed: int, budget: Budget, active_size: int | None, dtype: torch.dtype = torch.float32):
    """(exact greedy, batched greedy) on one random dataset, rows stored in `dtype`."""
    features, offsets, _ = random_dataset(seed, ties=seed % 2 == 0)
    lam = [0.01, 1.0, 10.0][seed % 3]
    blocks = FeatureBlocks.of(features.to(dtype), offsets)
    costs, limit = budget_costs(budget, offsets.diff())
    every = torch.arange(len(costs))
    exact = exact_greedy(LogDetObjective(blocks, lam), costs, limit, every)
    batched = batched_greedy(LogDetObjective(blocks, lam), costs, limit, every, dtype=dtype, active_size=active_size)
    return exact, batched


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("budget", [Budget(examples=12), Budget(tokens=40)])
@pytest.mark.parametrize("active_size", [1, None])
def test_batched_greedy_equals_exact_greedy(seed, budget, active_size):
    """Whatever starts active (1 candidate: many activations; None: every one), the picks are exact greedy's,
    ties (exact copies, in half the seeds) to the lowest index, under example and token budgets."""
    exact, batched = greedy_pair(seed, budget, active_size)
    assert batched.order == exact.order
    assert batched.gains == pytest.approx(exact.gains, rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_float64_batched_greedy_is_naive_greedy_with_exact_gains(seed):
    features, offsets, blocks = random_dataset(seed, n=15)
    blocks64 = [b.to(torch.float64) for b in blocks]
    objective = LogDetObjective(FeatureBlocks.of(features.to(torch.float64), offsets), lam=0.7)
    ones = torch.ones(15, dtype=torch.float64)
    picked = batched_greedy(objective, ones, 6, torch.arange(15), dtype=torch.float64, active_size=2)
    assert picked.order == naive_greedy(blocks64, 6, 0.7)
    values = [logdet_of(blocks64, picked.order[:k], 0.7) for k in range(7)]
    assert picked.gains == pytest.approx([b - a for a, b in itertools.pairwise(values)], rel=1e-10)


def test_ties_are_broken_by_lowest_index():
    x = torch.randn(3, 5, dtype=torch.float64)
    features, offsets = torch.cat([x, x, x]), torch.tensor([0, 3, 6, 9])
    assert select(features, offsets, Budget(examples=3), algorithm="batched").indices == [0, 1, 2]


def test_many_picks_across_windows_refreshes_and_activations_are_lazy_greedys():
    """Clustered rows with a large shared mean: early downdates cancel (C_i is recomputed from Sigma), and picks
    run through many windows while candidates are activated; the picks stay lazy (= exact) greedy's."""
    g = torch.Generator().manual_seed(0)
    n, tokens, d, k = 300, 8, 24, 3 * WINDOW
    centres = 2 * torch.randn(12, d, generator=g)
    per_example = centres[torch.randint(0, 12, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    features = (3 * torch.randn(d, generator=g) + per_example.repeat_interleave(tokens, 0)).to(torch.float16)
    features += 0.3 * torch.randn(n * tokens, d, generator=g).to(torch.float16)
    offsets = torch.arange(0, n * tokens + 1, tokens)
    blocks, lengths = FeatureBlocks.of(features, offsets), offsets.diff()
    lazy = select_blocks(blocks, lengths, Budget(examples=k))
    steps: list[float] = []
    objective = LogDetObjective(blocks, 1.0)
    ones = torch.ones(n, dtype=torch.float64)
    batched = batched_greedy(objective, ones, k, torch.arange(n), steps.append, active_size=20)
    assert batched.order == lazy.indices
    assert batched.gains == pytest.approx(lazy.gains, rel=1e-4)
    assert steps == list(range(1, k + 1))
    assert objective.evaluations > k * 20


@pytest.mark.parametrize("budget", [Budget(examples=5), Budget(tokens=30)])
def test_warm_start_and_exclusions_match_lazy_greedy(budget):
    features, offsets, blocks = random_dataset(4)
    options = {"warm_start": [0, 1], "exclude": [2, 5, 9], "lam": 0.5}
    batched = select(features, offsets, budget, algorithm="batched", **options)
    lazy = select(features, offsets, budget, **options)
    assert batched.indices == lazy.indices
    assert not {0, 1, 2, 5, 9} & set(batched.indices)
    assert batched.objective == pytest.approx(logdet_of(blocks, [0, 1, *batched.indices], 0.5), rel=1e-6)

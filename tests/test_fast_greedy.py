"""The fast exact paths (incremental greedy for one-row examples) against exact greedy and brute force, and the
selector's choice of path by shape."""

import itertools

import pytest
import torch

from fishersft.contract.selection import Budget
from fishersft.errors import InputError
from fishersft.selection import incremental, select
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import exact_greedy, lazy_greedy
from fishersft.selection.incremental import WINDOW_LIMIT, incremental_greedy
from fishersft.selection.logdet import LogDetObjective
from fishersft.selection.selector import budget_costs
from tests.test_selection import logdet_of, naive_greedy, random_dataset


def one_row_dataset(seed: int, n: int = 40, d: int = 6, ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples of one row (lengths 1..9 loss tokens as costs); with `ties`, exact copies and a zero row."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).add(0.2)
    if ties:
        rows[3], rows[9], rows[17] = rows[1], rows[1], rows[2]
        rows[5] = 0
    return rows, torch.randint(1, 10, (n,), generator=g)


def greedy_pair(seed: int, budget: Budget, dtype: torch.dtype = torch.float32, warm: int = 0):
    rows, lengths = one_row_dataset(seed, ties=seed % 2 == 0)
    lam = [0.01, 1.0, 10.0][seed % 3]
    blocks = FeatureBlocks.of(rows.to(dtype), torch.arange(len(rows) + 1))
    costs, limit = budget_costs(budget, lengths)
    candidates = torch.arange(warm, len(rows))
    objectives = [LogDetObjective(blocks, lam), LogDetObjective(blocks, lam)]
    for objective, i in itertools.product(objectives, range(warm)):
        objective.add(i)
    exact = exact_greedy(objectives[0], costs, limit, candidates)
    return exact, incremental_greedy(objectives[1], costs, limit, candidates)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("budget", [Budget(examples=15), Budget(tokens=60)])
def test_incremental_greedy_equals_exact_greedy(seed, budget):
    """Picks in exact greedy's order, ties (exact copies, in half the seeds) to the lowest index, under example
    and token budgets, rows stored as float16 (the store's dtype)."""
    exact, incremental = greedy_pair(seed, budget, torch.float16)
    assert incremental.order == exact.order
    assert incremental.gains == pytest.approx(exact.gains, rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_incremental_greedy_from_a_warm_start_equals_exact_greedy(seed):
    exact, incremental = greedy_pair(seed, Budget(examples=10), warm=5)
    assert incremental.order == exact.order


@pytest.mark.parametrize("seed", range(5))
def test_incremental_greedy_is_naive_greedy_with_exact_gains(seed):
    rows, _ = one_row_dataset(seed, n=15)
    blocks = [r[None].to(torch.float64) for r in rows]
    objective = LogDetObjective(FeatureBlocks.of(rows.to(torch.float64), torch.arange(16)), lam=0.7)
    picked = incremental_greedy(objective, torch.ones(15, dtype=torch.float64), 6, torch.arange(15))
    assert picked.order == naive_greedy(blocks, 6, 0.7)
    values = [logdet_of(blocks, picked.order[:k], 0.7) for k in range(7)]
    assert picked.gains == pytest.approx([b - a for a, b in itertools.pairwise(values)], rel=1e-10)


def clustered_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Rows around 12 centres and a large shared mean, float16: downdates cancel."""
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(12, d, generator=g)
    rows = 3 * torch.randn(d, generator=g) + centres[torch.randint(0, 12, (n,), generator=g)]
    return (rows + 0.3 * torch.randn(n, d, generator=g)).to(torch.float16)


@pytest.mark.parametrize("window_limit", [WINDOW_LIMIT, 0])
def test_many_picks_of_clustered_rows_are_lazy_greedys(window_limit, monkeypatch):
    """Many picks of clustered rows, with the default window and with every q recomputed from Sigma before
    every pick (a window limit of 0): the picks stay lazy (= exact) greedy's."""
    monkeypatch.setattr(incremental, "WINDOW_LIMIT", window_limit)
    n, k = 2000, 150
    blocks = FeatureBlocks.of(clustered_rows(n, 24), torch.arange(n + 1))
    ones, every = torch.ones(n, dtype=torch.float64), torch.arange(n)
    lazy = lazy_greedy(LogDetObjective(blocks, 1.0), ones, k, every)
    objective = LogDetObjective(blocks, 1.0)
    steps: list[float] = []
    fast = incremental_greedy(objective, ones, k, every, steps.append)
    assert fast.order == lazy.order
    assert fast.gains == pytest.approx(lazy.gains, rel=1e-5)
    assert steps == list(range(1, k + 1))
    refreshes = 0 if window_limit else k
    assert objective.evaluations >= n * (refreshes + 1) + sum(n - i for i in range(1, k + 1))


def test_more_exact_copies_than_a_window_holds_are_taken_by_lowest_index():
    """Copies of the best first pick (the longest row, lambda = 1) ahead of the rest: the first copy is picked."""
    rows = clustered_rows(30, 8)
    longest = int(rows.float().norm(dim=1).argmax())
    copies = torch.cat([rows[longest : longest + 1].repeat(2 * WINDOW_LIMIT, 1), rows])
    picked = select(copies, torch.arange(len(copies) + 1), Budget(examples=3), weighting="mean")
    assert picked.algorithm == "incremental"
    assert picked.indices[0] == 0
    assert (
        picked.indices == select(copies, torch.arange(len(copies) + 1), Budget(examples=3), algorithm="exact").indices
    )


def test_examples_of_several_rows_are_refused():
    blocks = FeatureBlocks.of(torch.randn(3, 4), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="one feature row"):
        incremental_greedy(LogDetObjective(blocks, 1.0), torch.ones(2), 2, torch.arange(2))


@pytest.mark.parametrize("budget", [Budget(examples=6), Budget(tokens=25)])
def test_lazy_on_one_row_examples_runs_incremental_greedy_with_exact_greedys_picks(budget):
    """The selector runs incremental greedy for `lazy` on one-row examples (the mean weighting), with a warm start
    and exclusions, and says so; its picks and objective are exact greedy's."""
    rows, _ = one_row_dataset(7, n=30, d=8, ties=True)
    tokens = rows.repeat_interleave(3, 0)  # three loss tokens an example: their mean is the row
    offsets = torch.arange(0, 91, 3)
    options = {"weighting": "mean", "warm_start": [4, 11], "exclude": [0, 2]}
    fast = select(tokens, offsets, budget, **options)
    exact = select(tokens, offsets, budget, algorithm="exact", **options)
    assert (fast.algorithm, exact.algorithm) == ("incremental", "exact")
    assert fast.indices == exact.indices
    assert fast.objective == pytest.approx(exact.objective, rel=1e-6)


def test_incremental_on_examples_of_several_rows_is_an_input_error():
    features, offsets, _ = random_dataset(0)
    with pytest.raises(InputError, match="one feature row"):
        select(features, offsets, Budget(examples=3), algorithm="incremental")
    assert select(features, offsets, Budget(examples=3)).algorithm == "lazy"


@pytest.mark.parametrize("seed", range(10))
def test_near_ties_float32_products_cannot_order_are_brute_forces_order(seed):
    """Rows that differ by 1e-5 of a large shared component: the float32 downdates alone misorder them (every
    seed, with the error bounds switched off), so the window's float64 recomputation decides; the picks are those
    of naive greedy with float64 log determinants."""
    g = torch.Generator().manual_seed(seed)
    n, d, k = 12, 4, 6
    common = 300 * torch.randn(d, generator=g, dtype=torch.float64)
    rows = (common + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(torch.float32)
    objective = LogDetObjective(FeatureBlocks.of(rows, torch.arange(n + 1)), 1.0)
    picked = incremental_greedy(objective, torch.ones(n, dtype=torch.float64), k, torch.arange(n))
    assert picked.order == naive_greedy([r[None].double() for r in rows], k, 1.0)

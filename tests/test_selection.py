"""The selection math against brute force: naive log det, enumeration of all subsets."""

import itertools
import math

import pytest
import torch

from fishersft.contract.selection import Budget
from fishersft.selection import select
from fishersft.selection.blocks import FeatureBlocks, padded_rows
from fishersft.selection.greedy import exact_greedy, lazy_greedy
from fishersft.selection.logdet import LogDetObjective


def random_dataset(seed: int, n: int = 30, d: int = 6, max_tokens: int = 9, ties: bool = False):
    """Random examples of 1..max_tokens rows; with `ties`, some examples are exact copies of others and some
    are rank-deficient (repeated rows, more rows than dimensions)."""
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.randn(int(torch.randint(1, max_tokens + 1, (1,), generator=g)), d, generator=g) for _ in range(n)]
    if ties:
        blocks[3] = blocks[1].clone()
        blocks[7] = blocks[2].clone()
        blocks[5] = blocks[4][:1].repeat(4, 1)  # rank 1
        blocks[6] = torch.randn(2 * d + 1, 2, generator=g) @ torch.randn(2, d, generator=g)  # n > d, rank 2
    lengths = torch.tensor([len(b) for b in blocks])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return torch.cat(blocks), offsets, blocks


def logdet_of(blocks, chosen, lam):
    """f(S) from scratch."""
    d = blocks[0].shape[1]
    sigma = lam * torch.eye(d, dtype=torch.float64)
    for i in chosen:
        x = blocks[i].to(torch.float64)
        sigma += x.T @ x
    return torch.linalg.slogdet(sigma).logabsdet.item()


def naive_greedy(blocks, k, lam):
    chosen: list[int] = []
    for _ in range(k):
        base = logdet_of(blocks, chosen, lam)
        gains = [(logdet_of(blocks, [*chosen, i], lam) - base, -i) for i in range(len(blocks)) if i not in chosen]
        chosen.append(-max(gains)[1])
    return chosen


def test_padded_rows_is_the_smallest_bucket_that_fits():
    assert [padded_rows(n) for n in (1, 8, 9, 16, 17, 24, 25, 33, 48, 49, 65)] == [
        8,
        8,
        16,
        16,
        24,
        24,
        32,
        48,
        48,
        64,
        96,
    ]


def test_gains_match_the_matrix_determinant_lemma_from_scratch():
    features, offsets, blocks = random_dataset(0, ties=True)
    objective = LogDetObjective(FeatureBlocks.of(features, offsets), lam=0.5)
    for i in (0, 2, 6):
        objective.add(i)
    gains = objective.gains(torch.arange(len(blocks)))
    base = logdet_of(blocks, [0, 2, 6], 0.5)
    expected = [logdet_of(blocks, [0, 2, 6, i], 0.5) - base for i in range(len(blocks))]
    # example 6 is stored as its float32 QR factor: float32 precision, not float64
    assert gains.tolist() == pytest.approx(expected, rel=1e-6)
    assert objective.value() == pytest.approx(base, rel=1e-6)


def test_long_examples_are_compressed_without_changing_their_gain():
    features, offsets, blocks = random_dataset(1, d=4, max_tokens=12)
    compressed = FeatureBlocks.of(features, offsets)
    assert int(compressed.counts.max()) <= 4 and int(offsets.diff().max()) > 4
    gains = LogDetObjective(compressed, lam=1.0).gains(torch.arange(len(blocks)))
    expected = [logdet_of(blocks, [i], 1.0) - logdet_of(blocks, [], 1.0) for i in range(len(blocks))]
    assert gains.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_exact_greedy_equals_naive_greedy(seed):
    features, offsets, blocks = random_dataset(seed, n=15)
    picked = select(features, offsets, Budget(examples=6), lam=0.7, algorithm="exact")
    assert picked.indices == naive_greedy(blocks, 6, 0.7)
    assert picked.objective == pytest.approx(logdet_of(blocks, picked.indices, 0.7), rel=1e-6)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("budget", [Budget(examples=12), Budget(tokens=40)])
def test_lazy_greedy_equals_exact_greedy(seed, budget):
    features, offsets, _ = random_dataset(seed, ties=seed % 2 == 0)
    lam = [0.01, 1.0, 10.0][seed % 3]
    exact = select(features, offsets, budget, lam=lam, algorithm="exact")
    lazy = select(features, offsets, budget, lam=lam)
    assert lazy.indices == exact.indices
    assert lazy.gains == exact.gains
    assert lazy.evaluations < exact.evaluations


def test_ties_are_broken_by_lowest_index():
    x = torch.randn(3, 5, dtype=torch.float64)
    features = torch.cat([x, x, x])  # three identical examples
    offsets = torch.tensor([0, 3, 6, 9])
    for algorithm in ("lazy", "exact"):
        assert select(features, offsets, Budget(examples=3), algorithm=algorithm).indices == [0, 1, 2]


def test_objective_is_monotone_and_gains_diminish():
    features, offsets, blocks = random_dataset(3, ties=True)
    picked = select(features, offsets, Budget(examples=len(blocks)), lam=1.0)
    assert sorted(picked.indices) == list(range(len(blocks)))
    assert all(g >= 0 for g in picked.gains)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(picked.gains))  # greedy gains never increase
    values = [logdet_of(blocks, picked.indices[:k], 1.0) for k in range(len(blocks) + 1)]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_within_1_minus_1_over_e_of_the_optimum(seed):
    features, offsets, blocks = random_dataset(seed, n=10, d=4, max_tokens=3)
    lam, k = 0.1, 3
    base = logdet_of(blocks, [], lam)
    best = max(logdet_of(blocks, list(s), lam) for s in itertools.combinations(range(10), k)) - base
    greedy = select(features, offsets, Budget(examples=k), lam=lam).objective - base
    assert greedy >= (1 - 1 / math.e) * best - 1e-9


def test_token_budget_is_respected_and_uses_best_single_when_better():
    # one long, very informative example that alone fills the budget, many cheap nearly useless ones
    big = 10 * torch.eye(4, dtype=torch.float64)
    small = 0.01 * torch.ones(8, 4, dtype=torch.float64)
    features = torch.cat([small, big])
    offsets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 12])
    picked = select(features, offsets, Budget(tokens=4), lam=1.0)
    assert picked.indices == [8]
    for seed in range(10):
        features, offsets, _ = random_dataset(seed)
        picked = select(features, offsets, Budget(tokens=25))
        assert int(offsets.diff()[picked.indices].sum()) <= 25


def test_warm_start_seeds_sigma_and_is_not_chosen_again():
    features, offsets, blocks = random_dataset(4)
    picked = select(features, offsets, Budget(examples=5), warm_start=[0, 1])
    assert not {0, 1} & set(picked.indices)
    assert picked.objective == pytest.approx(logdet_of(blocks, [0, 1, *picked.indices], 1.0), rel=1e-6)
    first_gain = logdet_of(blocks, [0, 1, picked.indices[0]], 1.0) - logdet_of(blocks, [0, 1], 1.0)
    assert picked.gains[0] == pytest.approx(first_gain, rel=1e-6)


def test_random_is_seeded_and_reports_true_gains():
    features, offsets, blocks = random_dataset(5)
    a = select(features, offsets, Budget(examples=7), method="random", seed=3)
    assert a.indices == select(features, offsets, Budget(examples=7), method="random", seed=3).indices
    assert a.indices != select(features, offsets, Budget(examples=7), method="random", seed=4).indices
    assert a.objective == pytest.approx(logdet_of(blocks, a.indices, 1.0), rel=1e-6)
    assert a.objective < select(features, offsets, Budget(examples=7)).objective


def test_budget_larger_than_the_dataset_selects_everything():
    features, offsets, _blocks = random_dataset(6, n=8)
    assert sorted(select(features, offsets, Budget(examples=100)).indices) == list(range(8))
    # an empty budget, which no request can name (the contract requires a positive one): the math picks nothing
    assert select(features, offsets, Budget.model_construct(examples=0)).indices == []


class ScriptedGains:
    """An objective whose gains follow a script per step, including a gain that grows by rounding noise."""

    def __init__(self, script: list[list[float]]) -> None:
        self.script, self.steps, self.evaluations = script, 0, 0

    def gains(self, idx: torch.Tensor) -> torch.Tensor:
        self.evaluations += len(idx)
        return torch.tensor([self.script[self.steps][i] for i in idx.tolist()], dtype=torch.float64)

    def add(self, i: int) -> None:
        self.steps += 1


def test_lazy_greedy_absorbs_gains_that_grow_by_rounding_noise():
    # after the first pick, candidate 2 comes out 2e-7 above its earlier value, and above candidate 1's new
    # value, whose bound was higher: exact greedy picks 2, and so must lazy greedy
    script = [[1.0, 0.9, 0.8999999, 0.1], [0.0, 0.89999995, 0.9000001, 0.1], [0.0, 0.5, 0.5, 0.1]]
    ones = torch.ones(4, dtype=torch.float64)
    exact = exact_greedy(ScriptedGains(script), ones, 2, torch.arange(4))
    lazy = lazy_greedy(ScriptedGains(script), ones, 2, torch.arange(4))
    assert exact.order == lazy.order == [0, 2]


@pytest.mark.parametrize("budget", [Budget(examples=6), Budget(tokens=25)])
def test_examples_weighting_is_the_tokens_objective_on_features_scaled_by_one_over_sqrt_length(budget):
    features, offsets, blocks = random_dataset(11, ties=True)
    lengths = offsets.diff()
    scaled = features * lengths.float().rsqrt().repeat_interleave(lengths)[:, None]
    by_examples = select(features, offsets, budget, weighting="examples")
    on_scaled = select(scaled, offsets, budget, weighting="tokens")
    assert by_examples.indices == on_scaled.indices
    # Sigma sums the scaled rows in float64 where the pre-scaled rows were rounded to float32 first
    assert by_examples.objective == pytest.approx(on_scaled.objective, rel=1e-7)
    assert by_examples.objective == pytest.approx(
        logdet_of([b / math.sqrt(len(b)) for b in blocks], by_examples.indices, 1.0), rel=1e-6
    )
    with pytest.raises(ValueError, match="unknown weighting"):
        select(features, offsets, budget, weighting="sentences")


@pytest.mark.parametrize("budget", [Budget(examples=6), Budget(tokens=25)])
def test_mean_weighting_is_the_tokens_objective_on_one_mean_row_per_example(budget):
    """`mean`: Sigma sums the outer product of each example's mean feature; the budget still counts the
    example's loss tokens (its training cost), not its one row."""
    features, offsets, blocks = random_dataset(12, ties=True)
    means = [b.mean(0, keepdim=True) for b in blocks]
    by_mean = select(features, offsets, budget, weighting="mean")
    assert by_mean.objective == pytest.approx(logdet_of(means, by_mean.indices, 1.0), rel=1e-6)
    lengths = offsets.diff()
    spent = len(by_mean.indices) if budget.examples is not None else int(lengths[by_mean.indices].sum())
    assert spent <= (budget.examples or budget.tokens)
    if budget.examples is not None:  # unit costs: the naive greedy on the mean rows picks the same
        assert by_mean.indices == naive_greedy(means, budget.examples, 1.0)

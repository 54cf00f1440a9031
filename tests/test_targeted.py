"""Targeted design (fisher with a target) against brute force: tr(A Sigma^-1) by direct inversion. (Blocks of more
rows than dimensions are stored as their float32 QR factor: values agree to float32 rounding, not float64.)"""

import pytest
import torch

from fishersft.contract.selection import Budget
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import exact_greedy
from fishersft.selection.selector import budget_costs, select_blocks
from fishersft.selection.targeted import TargetedObjective, predictive_variance, second_moment
from tests.test_selection import random_dataset


def random_target(seed: int, d: int = 6, rows: int = 10) -> torch.Tensor:
    a = torch.randn(rows, d, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    return a.T @ a / rows


def variance_of(blocks, chosen, target, lam) -> float:
    """tr(A (lambda I + sum X^T X)^-1) from scratch, by direct inversion."""
    sigma = lam * torch.eye(target.shape[0], dtype=torch.float64)
    for i in chosen:
        x = blocks[i].to(torch.float64)
        sigma += x.T @ x
    return float(torch.trace(target @ torch.linalg.inv(sigma)))


def brute_force_greedy(blocks, target, costs, limit, lam, warm=()):
    """Greedy on the direct difference of variances, per unit cost, among what still fits (ties: lowest index);
    then the better of that set and the best affordable single example, as `exact_greedy` does."""
    chosen, gains, left = list(warm), [], limit
    singles = None
    while True:
        base = variance_of(blocks, chosen, target, lam)
        fits = [i for i in range(len(blocks)) if i not in chosen and costs[i] <= left]
        if not fits:
            break
        gain = {i: base - variance_of(blocks, [*chosen, i], target, lam) for i in fits}
        singles = singles or gain
        best = max(fits, key=lambda i: (gain[i] / costs[i], -i))
        chosen.append(best)
        gains.append(gain[best])
        left -= costs[best]
    picks = chosen[len(warm) :]
    if singles:
        single = max(singles, key=lambda i: (singles[i], -i))
        if singles[single] > sum(gains):
            return [single]
    return picks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_gain_equals_the_direct_difference_of_variances(seed, lam):
    features, offsets, blocks = random_dataset(seed, ties=seed == 3)
    target = random_target(seed)
    objective = TargetedObjective(FeatureBlocks.of(features, offsets), target, lam)
    chosen: list[int] = []
    for pick in (4, 11, 0):
        base = variance_of(blocks, chosen, target, lam)
        assert objective.value() == pytest.approx(base, rel=1e-6)
        direct = torch.tensor(
            [base - variance_of(blocks, [*chosen, i], target, lam) for i in range(len(blocks))], dtype=torch.float64
        )
        gains = objective.gains(torch.arange(len(blocks)))
        assert torch.allclose(gains, direct, rtol=1e-4, atol=1e-9), (gains - direct).abs().max()
        objective.add(pick)
        chosen.append(pick)
    assert objective.evaluations == 3 * len(blocks)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["examples", "tokens"])
def test_greedy_picks_equal_brute_force_greedy(seed, kind):
    features, offsets, blocks = random_dataset(seed, n=20, ties=seed == 4)
    target = random_target(seed)
    lengths = offsets.diff()
    budget = Budget(examples=6) if kind == "examples" else Budget(tokens=30)
    costs, limit = budget_costs(budget, lengths)
    expected = brute_force_greedy(blocks, target, costs.tolist(), limit, 1.0)
    objective = TargetedObjective(FeatureBlocks.of(features, offsets), target, 1.0)
    assert exact_greedy(objective, costs, limit, torch.arange(len(blocks))).order == expected
    # through the selector, with its measured log det gains and the variance before and after
    selection = select_blocks(FeatureBlocks.of(features, offsets), lengths, budget, target=target)
    assert selection.indices == expected
    assert selection.variance == pytest.approx(
        (variance_of(blocks, [], target, 1.0), variance_of(blocks, expected, target, 1.0)), rel=1e-6
    )


def test_warm_start_seeds_sigma_and_exclusions_are_never_picked():
    features, offsets, blocks = random_dataset(7, n=20)
    target = random_target(7)
    lengths = offsets.diff()
    warm, excluded = [2, 9], [5, 13]
    selection = select_blocks(
        FeatureBlocks.of(features, offsets),
        lengths,
        Budget(examples=5),
        target=target,
        warm_start=warm,
        exclude=excluded,
    )
    costs = [1.0 if i not in excluded else 1e9 for i in range(len(blocks))]  # excluded: never fits
    assert selection.indices == brute_force_greedy(blocks, target, costs, 5.0, 1.0, warm)
    assert selection.variance is not None
    assert selection.variance[0] == pytest.approx(variance_of(blocks, warm, target, 1.0), rel=1e-6)


def test_second_moment_is_the_mean_outer_product_of_the_weighted_rows():
    features, offsets, blocks = random_dataset(2, ties=True)  # one example has more rows than dimensions (QR)
    rows = features.to(torch.float64)
    whole = second_moment(FeatureBlocks.of(features, offsets), len(rows))
    assert torch.allclose(whole, rows.T @ rows / len(rows), atol=1e-6)
    scale = offsets.diff().to(torch.float32).rsqrt()  # `examples` weighting: each example's mean outer product
    per_example = sum(x.double().T @ x.double() / len(x) for x in blocks)
    scaled = second_moment(FeatureBlocks.of(features, offsets, scale), len(blocks))
    assert torch.allclose(scaled, per_example / len(blocks), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        second_moment(FeatureBlocks.of(features, offsets), 0)


def test_targeted_picks_lower_the_targets_variance_more_than_log_det_picks():
    """The target lies in span(e0, e1); most candidates are large in the other directions, which log det
    prefers (more volume), while only the small in-span candidates inform the target."""
    d, g = 8, torch.Generator().manual_seed(0)
    off_span = [torch.randn(3, d, generator=g) * 3 for _ in range(12)]
    for block in off_span:
        block[:, :2] *= 0.05
    in_span = [torch.zeros(2, d) for _ in range(6)]
    for block in in_span:
        block[:, :2] = torch.randn(2, 2, generator=g)
    blocks = off_span + in_span
    features = torch.cat(blocks)
    offsets = torch.tensor([0, *torch.tensor([len(b) for b in blocks]).cumsum(0).tolist()])
    points = torch.randn(20, 2, generator=g, dtype=torch.float64)
    target = torch.zeros(d, d, dtype=torch.float64)
    target[:2, :2] = points.T @ points / len(points)
    lengths = offsets.diff()
    budget = Budget(examples=4)
    targeted = select_blocks(FeatureBlocks.of(features, offsets), lengths, budget, target=target)
    log_det = select_blocks(FeatureBlocks.of(features, offsets), lengths, budget, algorithm="exact")
    assert set(targeted.indices) <= set(range(12, 18)) and not set(log_det.indices) & set(range(12, 18))
    assert variance_of(blocks, targeted.indices, target, 1.0) < 0.5 * variance_of(blocks, log_det.indices, target, 1.0)
    assert log_det.objective > targeted.objective  # log det, the objective each one was not chosen for


def test_predictive_variance_needs_a_matching_target():
    features, offsets, _ = random_dataset(0)
    with pytest.raises(ValueError, match="second moment"):
        TargetedObjective(FeatureBlocks.of(features, offsets), torch.eye(3), 1.0)
    assert predictive_variance(2 * torch.eye(4), torch.eye(4)) == pytest.approx(2.0)

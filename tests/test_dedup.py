"""Near-duplicate removal against the brute-force N x N version, and before every method."""

import numpy as np
import pytest
import torch

from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.features.set import FeatureSet
from fishersft.pipeline import select_features
from fishersft.selection.dedup import near_duplicates
from tests.test_curation import labelled_set


def naive_dedup(points: torch.Tensor, threshold: float) -> list[int]:
    """The N x N similarity matrix, then rows in order: removed by the first earlier kept row at the threshold."""
    unit = torch.nn.functional.normalize(points.double(), dim=1)
    similar = unit @ unit.T >= threshold - 1e-6
    survivor = []
    for i in range(len(points)):
        earlier = [j for j in range(i) if survivor[j] < 0 and similar[i, j]]
        survivor.append(earlier[0] if earlier else -1)
    return survivor


def duplicated_points(seed: int, n: int = 60, d: int = 5) -> torch.Tensor:
    """Random rows, a third of them noisy copies of earlier ones (some of copies), a few zero rows."""
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(n, d, generator=g)
    for i in range(n // 3, n, 2):
        source = int(torch.randint(0, i, (1,), generator=g))
        points[i] = points[source] * float(torch.rand(1, generator=g) + 0.5) + 0.05 * torch.randn(d, generator=g)
    points[[3, 17]] = 0.0
    return points


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.9, 0.99, 1.0])
@pytest.mark.parametrize("block", [1, 7, 4096])
def test_near_duplicates_are_the_brute_force_n_by_n_ones(seed, threshold, block):
    points = duplicated_points(seed)
    points[40] = points[12]  # an exact copy: removed even at threshold 1
    survivor = near_duplicates(points, threshold, block=block)
    assert survivor.tolist() == naive_dedup(points, threshold)
    assert survivor[40] == 12 or survivor[40] == survivor[12]  # 12's survivor, when 12 was removed itself
    as_numpy = near_duplicates(points.numpy(), threshold, rows=torch.arange(10, 60), block=block)
    assert as_numpy.tolist() == naive_dedup(points[10:], threshold)  # positions in `rows`


def test_dedup_removes_them_before_the_method_and_lists_each_with_its_survivor():
    features, labels = labelled_set(n=40)
    copies = {25: 3, 30: 3, 33: 8}  # example 25 and 30 copy 3's rows, 33 copies 8's
    rows = np.array(features.features)
    for copy, source in copies.items():
        start, stop = features.offsets[source], features.offsets[source + 1]
        rows[features.offsets[copy] : features.offsets[copy + 1]] = rows[start : start + 1]
        rows[start:stop] = rows[start : start + 1]
    features = FeatureSet(rows, features.offsets, features.ids)
    means = features.mean_rows()
    assert np.allclose(means[25], means[3])
    for method in ("fisher", "random", "kcenter"):
        options = SelectionOptions(
            budget={"examples_fraction": 1.0}, method=method, dedup={"threshold": 0.999}, warm_start_ids=["x8"]
        )
        result = select_features(features, options, exclude=[30], labels=labels)
        # 30 is held out and 8 the warm start: neither is in the pool, so 33 has no survivor there
        assert [(r.id, r.survivor) for r in result.dedup.removed] == [("x25", "x3")]
        assert "x25" not in result.selected and "x3" in result.selected and "x33" in result.selected
        assert result.resolved_budget == Budget(examples=38)  # the fraction: of the pool before dedup
        assert result.dedup.threshold == 0.999
    plain = select_features(features, SelectionOptions(budget={"examples": 5}))
    assert plain.dedup is None

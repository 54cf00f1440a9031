"""GreeDi (Mirzasoleiman et al., NeurIPS 2013): greedy selection spread over m machines. The candidates are split
into m partitions, greedy with the whole budget runs on each partition (in parallel, one job each), then greedy
with the budget runs again over the union of their picks; the answer is the better of that and the best
partition's own picks. Each machine holds N/m candidates (the last round m x K), so memory per machine falls
about m-fold; time falls less, since each partition still picks K.

Partitions are drawn at random (seeded): with random partitions the expected objective is at least
(1 - 1/e) / 2 of the optimum (Barbosa et al., ICML 2015); the literature finds it within a few percent of
centralized greedy, and on this objective it came within 0.01% (docs/scale.md, "Scale-out"). With m = 1 the merge
round re-picks the same examples in the same order, so the answer is centralized greedy's.
"""

from collections.abc import Sequence

import torch


def partition(n: int, m: int, seed: int, exclude: Sequence[int] = ()) -> list[list[int]]:
    """The candidates 0..n-1 but `exclude`, in m seeded random partitions of near-equal size, each ascending."""
    if m < 1:
        raise ValueError(f"partitions must be at least 1, got {m}")
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(exclude)] = False
    candidates = keep.nonzero().flatten()
    shuffled = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))]
    return [sorted(part.tolist()) for part in shuffled.tensor_split(m)]

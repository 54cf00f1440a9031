"""The baselines against brute force: k-center greedy and RDS+ similarity, written naively with python loops."""

import itertools
import math

import pytest
import torch

from fishersft.selection import kcenter, similarity
from fishersft.selection.kcenter import kcenter_greedy
from fishersft.selection.similarity import similarity_order


def random_points(seed: int, n: int = 40, d: int = 5, max_cost: int = 9):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(n, d, generator=g)
    tokens = torch.randint(1, max_cost + 1, (n,), generator=g).to(torch.float64)
    return points, tokens


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm > 0 else list(v)


def dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def naive_kcenter(points, costs, limit, candidates, warm=()):
    """Farthest-first from scratch: every step recomputes every candidate's distance to every center."""
    vec = [unit(p) for p in points.tolist()]
    cost = costs.tolist()
    pool = [i for i in candidates.tolist() if i not in warm]
    centers = [vec[w] for w in warm]
    if not centers:  # cold start: the mean of the candidates stands in for the first pick's center
        centers = [[sum(vec[i][k] for i in pool) / len(pool) for k in range(len(vec[0]))]]
    mean_only = not warm
    order, gains, left = [], [], limit
    while True:
        fits = [i for i in pool if i not in order and cost[i] <= left]
        if not fits:
            return order, gains
        scored = [(min(dist(vec[i], c) for c in centers), -i) for i in fits]
        gain, neg = max(scored)
        order.append(-neg)
        gains.append(gain)
        left -= cost[-neg]
        centers = [vec[-neg]] if mean_only else [*centers, vec[-neg]]
        mean_only = False


def naive_similarity(points, target, costs, limit, candidates):
    vec, tgt, cost = [unit(p) for p in points.tolist()], [unit(t) for t in target.tolist()], costs.tolist()
    score = {i: max(sum(a * b for a, b in zip(vec[i], t, strict=True)) for t in tgt) for i in candidates.tolist()}
    order, gains, left = [], [], limit
    for i in sorted(score, key=lambda i: (-score[i], i)):
        if cost[i] <= left:
            order.append(i)
            gains.append(score[i])
            left -= cost[i]
    return order, gains


BUDGETS = ["examples", "tokens"]


def budget(kind: str, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    return (torch.ones(len(tokens), dtype=torch.float64), 12.0) if kind == "examples" else (tokens, 40.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", BUDGETS)
@pytest.mark.parametrize("warm", [(), (3, 17, 28)])
def test_kcenter_equals_brute_force(seed, kind, warm):
    points, tokens = random_points(seed)
    costs, limit = budget(kind, tokens)
    candidates = torch.arange(len(points))
    result = kcenter_greedy(points, costs, limit, candidates, warm_start=warm)
    order, gains = naive_kcenter(points, costs, limit, candidates, warm)
    assert result.order == order
    assert result.gains == pytest.approx(gains, abs=1e-5)
    assert not set(result.order) & set(warm)


@pytest.mark.parametrize("warm", [(), (1, 2)])
def test_kcenter_in_small_chunks_is_the_same(monkeypatch, warm):
    """Rows and centers split into chunks of a few elements give the same picks and gains as one chunk."""
    points, tokens = random_points(7, n=23, d=3)
    candidates = torch.arange(len(points))
    whole = kcenter_greedy(points, tokens, 30.0, candidates, warm_start=warm)
    monkeypatch.setattr(kcenter, "CHUNK_ELEMENTS", 5)
    chunked = kcenter_greedy(points, tokens, 30.0, candidates, warm_start=warm)
    assert chunked.order == whole.order
    assert chunked.gains == pytest.approx(whole.gains, abs=1e-6)  # float32 products round by their shape
    assert chunked.order == naive_kcenter(points, tokens, 30.0, candidates, warm)[0]


@pytest.mark.parametrize("seed", range(3))
def test_kcenter_gain_is_the_covering_radius_before_the_pick(seed):
    """Under an example budget each gain (after a cold start's first) is the largest distance from any candidate
    to its nearest pick so far, so the gains never increase; with a warm start that holds from the first pick."""
    points, _ = random_points(seed, n=30)
    ones = torch.ones(len(points), dtype=torch.float64)
    candidates = torch.arange(len(points))
    vec = [unit(p) for p in points.tolist()]
    for warm in [(), (0, 5)]:
        result = kcenter_greedy(points, ones, 10.0, candidates, warm_start=warm)
        pool = [i for i in range(len(points)) if i not in warm]
        first = 0 if warm else 1
        for k in range(first, len(result.order)):
            centers = [vec[c] for c in [*warm, *result.order[:k]]]
            radius = max(min(dist(vec[i], c) for c in centers) for i in pool)
            assert result.gains[k] == pytest.approx(radius, abs=1e-5)
        assert all(a >= b for a, b in itertools.pairwise(result.gains[first:]))


def test_kcenter_respects_candidates_and_budget():
    points, tokens = random_points(3, n=50)
    candidates = torch.arange(1, 50, 3)
    result = kcenter_greedy(points, tokens, 25.0, candidates, warm_start=(4, 10))  # 10 is a candidate too
    assert set(result.order) <= set(candidates.tolist()) - {10}
    assert len(set(result.order)) == len(result.order)
    spent = sum(tokens[result.order].tolist())
    assert spent <= 25
    left = [i for i in candidates.tolist() if i not in result.order and i != 10]
    assert all(tokens[i] > 25 - spent for i in left)  # it stopped only when nothing fit
    assert kcenter_greedy(points, tokens, 0.5, candidates).order == []
    assert kcenter_greedy(points, tokens, 25.0, torch.zeros(0, dtype=torch.long)).order == []


def clusters(seed: int, k: int = 5, size: int = 20, d: int = 8):
    """k tight Gaussian clusters around random directions; row i belongs to cluster i % k."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g)
    label = torch.arange(k * size) % k
    return centers[label] + 0.01 * torch.randn(k * size, d, generator=g), label


def test_kcenter_hits_every_cluster_first_where_random_does_not():
    hits_random = []
    for seed in range(10):
        points, label = clusters(seed)
        ones = torch.ones(len(points), dtype=torch.float64)
        result = kcenter_greedy(points, ones, 5.0, torch.arange(len(points)))
        assert sorted(label[result.order].tolist()) == [0, 1, 2, 3, 4]
        assert min(result.gains) > 0.2  # every pick opened a new cluster, far from the others
        shuffled = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:5]
        hits_random.append(len(set(label[shuffled].tolist())) == 5)
    assert not all(hits_random)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", BUDGETS)
def test_similarity_equals_brute_force(seed, kind):
    points, tokens = random_points(seed)
    target = torch.randn(6, points.shape[1], generator=torch.Generator().manual_seed(100 + seed))
    costs, limit = budget(kind, tokens)
    candidates = torch.arange(0, len(points), 2)
    result = similarity_order(points, target, costs, limit, candidates)
    order, gains = naive_similarity(points, target, costs, limit, candidates)
    assert result.order == order
    assert result.gains == pytest.approx(gains, abs=1e-5)


def test_similarity_in_small_chunks_is_the_same(monkeypatch):
    points, tokens = random_points(5, n=31, d=4)
    target = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    candidates = torch.arange(len(points))
    whole = similarity_order(points, target, tokens, 35.0, candidates)
    monkeypatch.setattr(similarity, "CHUNK_ELEMENTS", 3)
    chunked = similarity_order(points, target, tokens, 35.0, candidates)
    assert chunked.order == whole.order
    assert chunked.gains == pytest.approx(whole.gains, abs=1e-6)  # float32 products round by their shape


def test_a_copy_of_a_target_example_is_picked_first():
    points, tokens = random_points(2)
    target = torch.randn(5, points.shape[1], generator=torch.Generator().manual_seed(9))
    points[21] = 3 * target[2]  # the same direction: cosine 1
    result = similarity_order(points, target, tokens, 30.0, torch.arange(len(points)))
    assert result.order[0] == 21
    assert result.gains[0] == pytest.approx(1.0, abs=1e-6)
    assert all(g < 0.999 for g in result.gains[1:])


def test_similarity_respects_candidates_and_budget():
    points, tokens = random_points(4, n=50)
    target = points[:3].clone()  # the best matches are outside the candidates
    candidates = torch.arange(10, 50, 2)
    result = similarity_order(points, target, tokens, 20.0, candidates)
    assert set(result.order) <= set(candidates.tolist())
    spent = sum(tokens[result.order].tolist())
    assert spent <= 20
    assert all(tokens[i] > 20 - spent for i in candidates.tolist() if i not in result.order)
    with pytest.raises(ValueError, match="empty"):
        similarity_order(points, target[:0], tokens, 20.0, candidates)


@pytest.mark.parametrize("method", ["kcenter", "similarity"])
def test_on_step_reports_spent_budget(method):
    points, tokens = random_points(6)
    candidates = torch.arange(len(points))
    spent: list[float] = []
    if method == "kcenter":
        result = kcenter_greedy(points, tokens, 40.0, candidates, on_step=spent.append)
    else:
        result = similarity_order(points, points[:4], tokens, 40.0, candidates, on_step=spent.append)
    assert len(spent) == len(result.order) > 1
    assert spent == pytest.approx(torch.cumsum(tokens[result.order], 0).tolist())
    assert all(a < b for a, b in itertools.pairwise(spent)) and spent[-1] <= 40


def copies(kind: str):
    """Random points where 17, 25, 33 and 41 are exact copies, and a target whose best match they are."""
    points, tokens = random_points(8, n=60)
    for copy in (41, 17, 33):
        points[copy] = points[25]
    target = torch.randn(4, points.shape[1], generator=torch.Generator().manual_seed(3))
    target[0] = points[25] + 0.1
    return points, target, *budget(kind, tokens)


@pytest.mark.parametrize("kind", BUDGETS)
def test_similarity_ties_go_to_the_lowest_index(kind):
    """Exact copies score the same: the lowest index is taken first, like the brute force."""
    points, target, costs, limit = copies(kind)
    candidates = torch.arange(len(points))
    picked = similarity_order(points, target, costs, limit, candidates).order
    assert picked == naive_similarity(points, target, costs, limit, candidates)[0]
    if kind == "examples":
        assert picked[:4] == [17, 25, 33, 41]


@pytest.mark.parametrize("kind", BUDGETS)
def test_kcenter_with_exact_copies_equals_brute_force(kind):
    points, _, costs, limit = copies(kind)
    candidates = torch.arange(len(points))
    order = kcenter_greedy(points, costs, limit, candidates).order
    assert order == naive_kcenter(points, costs, limit, candidates)[0]
    assert len({17, 25, 33, 41} & set(order)) <= 1  # a copy of a center is at distance ~0: never worth a pick

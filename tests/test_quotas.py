"""Group quotas against brute force: fisher's constrained greedy, the rankings' one pass, the pool's and the
contract's refusals."""

from collections import Counter

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.errors import InputError
from fishersft.features.target import TargetSet
from fishersft.methods.fitting import fitting
from fishersft.pipeline import select_features
from fishersft.selection.quotas import GroupLimits
from fishersft.selection.selector import budget_costs, select
from tests.test_curation import labelled_set


def naive_feasible(taken, candidates, groups, costs, left, minimum):
    """Whether the unmet mins can still be met within `left`: each group's cheapest untaken candidates, from
    scratch."""
    need = 0.0
    for g, m in enumerate(minimum):
        missing = m - sum(1 for i in taken if groups[i] == g)
        if missing > 0:
            pool = sorted(costs[i] for i in candidates if groups[i] == g and i not in taken)
            if len(pool) < missing:
                return False
            need += sum(pool[:missing])
    return need <= left + 1e-9


def naive_allowed(i, taken, candidates, groups, costs, left, minimum, maximum):
    g = groups[i]
    if sum(1 for j in taken if groups[j] == g) >= maximum[g] or costs[i] > left:
        return False
    return naive_feasible([*taken, i], candidates, groups, costs, left - costs[i], minimum)


def naive_quota_greedy(rows, offsets, costs, limit, candidates, groups, minimum, maximum, warm=()):
    """Constrained greedy from scratch: every step, every allowed candidate's gain by two log determinants of
    Sigma = I + the warm start's and the picks' X^T X (float64)."""
    blocks = [rows[offsets[i] : offsets[i + 1]].double() for i in range(len(offsets) - 1)]
    sigma = torch.eye(rows.shape[1], dtype=torch.float64) + sum((blocks[w].T @ blocks[w] for w in warm), 0)
    taken, left = [], limit
    while True:
        allowed = [
            i
            for i in candidates
            if i not in taken and naive_allowed(i, taken, candidates, groups, costs, left, minimum, maximum)
        ]
        if not allowed:
            return taken
        base = torch.linalg.slogdet(sigma).logabsdet
        gain = {i: float(torch.linalg.slogdet(sigma + blocks[i].T @ blocks[i]).logabsdet - base) for i in allowed}
        best = max(allowed, key=lambda i: (gain[i] / costs[i], -i))
        taken.append(best)
        sigma = sigma + blocks[best].T @ blocks[best]
        left -= costs[best]


def quota_case(seed: int, n: int = 24, d: int = 4, n_groups: int = 3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 5, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    rows = torch.randn(int(offsets[-1]), d, generator=g)
    groups = torch.randint(0, n_groups, (n,), generator=g)
    sizes = torch.bincount(groups, minlength=n_groups).tolist()
    minimum = [min(s, int(torch.randint(0, 3, (1,), generator=g))) for s in sizes]
    maximum = [m + int(torch.randint(0, 3, (1,), generator=g)) for m in minimum]
    return rows, offsets, lengths, groups, minimum, maximum


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["examples", "tokens"])
def test_fisher_under_quotas_is_the_brute_force_constrained_greedy(seed, kind):
    rows, offsets, lengths, groups, minimum, maximum = quota_case(seed)
    budget = Budget(examples=6) if kind == "examples" else Budget(tokens=16)
    costs, limit = budget_costs(budget, lengths)
    candidates = [i for i in range(24) if i not in (2, 7)]  # 2 excluded, 7 the warm start
    if not naive_feasible([], candidates, groups.tolist(), costs.tolist(), limit, minimum):
        minimum = [0] * len(minimum)
    limits = GroupLimits(groups, minimum, maximum)
    for algorithm in ("lazy", "exact"):
        picked = select(rows, offsets, budget, quotas=limits, algorithm=algorithm, exclude=[2], warm_start=[7])
        expected = naive_quota_greedy(
            rows, offsets, costs.tolist(), limit, candidates, groups.tolist(), minimum, maximum, warm=[7]
        )
        assert picked.indices == expected, algorithm
        counts = Counter(groups[picked.indices].tolist())
        assert all(minimum[g] <= counts[g] <= maximum[g] for g in range(len(minimum)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["examples", "tokens"])
def test_a_ranking_under_quotas_takes_its_order_where_the_brute_force_allows(seed, kind):
    _, _, lengths, groups, minimum, maximum = quota_case(seed)
    budget = Budget(examples=6) if kind == "examples" else Budget(tokens=16)
    costs, limit = budget_costs(budget, lengths)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(seed)).tolist()
    if not naive_feasible([], order, groups.tolist(), costs.tolist(), limit, minimum):
        minimum = [0] * len(minimum)
    taken, left = [], limit
    for i in order:  # one pass, from scratch: each example if allowed when its turn comes
        if naive_allowed(i, taken, order, groups.tolist(), costs.tolist(), left, minimum, maximum):
            taken.append(i)
            left -= float(costs[i])
    assert fitting(order, costs, limit, GroupLimits(groups, minimum, maximum)) == taken
    # one pass is enough: nothing the pass refused would be allowed after it
    assert not [
        i
        for i in order
        if i not in taken and naive_allowed(i, taken, order, groups.tolist(), costs.tolist(), left, minimum, maximum)
    ]


@pytest.mark.parametrize("method", ["fisher", "random", "kcenter", "similarity", "loss"])
@pytest.mark.parametrize("budget", [{"examples": 8}, {"tokens": 30}])
def test_every_method_keeps_the_quotas_and_reports_the_counts(method, budget):
    features, labels = labelled_set(n=60, shares=(0.8, 0.15, 0.05))
    features.losses = np.random.default_rng(1).random(60)
    sizes = Counter(row["source"] for row in labels)
    quotas = {"by": "source", "min": {"s2": min(2, sizes["s2"]), "s1": 2}, "max": {"s0": 4}}
    target = TargetSet("t", labelled_set(n=4, seed=9)[0]) if method == "similarity" else None
    options = SelectionOptions(budget=budget, method=method, quotas=quotas, group_by="source")
    result = select_features(features, options, labels=labels, target=target)
    counts = Counter(labels[features.index[str(i)]]["source"] for i in result.selected)
    assert result.groups is not None and result.groups.counts == dict(sorted(counts.items()))
    assert counts["s2"] >= quotas["min"]["s2"] and counts["s1"] >= 2 and counts["s0"] <= 4
    free = select_features(features, SelectionOptions(budget=budget, method=method), labels=labels, target=target)
    if method != "random":  # random's balanced draw already differs by group_by
        assert Counter(labels[features.index[str(i)]]["source"] for i in free.selected)["s0"] > 4  # they bind


def test_quotas_the_pool_cannot_meet_are_refused_naming_the_group():
    features, labels = labelled_set(n=60, shares=(0.8, 0.15, 0.05))
    sizes = Counter(row["source"] for row in labels)

    def refused(quotas, budget=None, **context):
        options = SelectionOptions(budget=budget or {"examples": 8}, quotas={"by": "source", **quotas})
        with pytest.raises(InputError) as error:
            select_features(features, options, labels=labels, **context)
        return str(error.value)

    assert "quotas.min.s9" in refused({"min": {"s9": 1}})
    assert "quotas.max.s9" in refused({"max": {"s9": 1}})
    assert "quotas.min.s2" in refused({"min": {"s2": sizes["s2"] + 1}}, {"examples": 50})
    held = [i for i, row in enumerate(labels) if row["source"] == "s2"][:1]  # held out: not in the pool
    assert "quotas.min.s2" in refused({"min": {"s2": sizes["s2"]}}, {"examples": 50}, exclude=held)
    assert "quotas.min:" in refused({"min": {"s0": 8}}, {"tokens": 7})  # 8 examples hold 8 tokens at least
    assert "quotas.min" in refused({"min": {"s0": 5}}, {"examples_fraction": 0.05})  # 3 examples
    with pytest.raises(InputError, match="quotas: for JSONL"):
        select_features(features, SelectionOptions(budget={"examples": 3}, quotas={"by": "source", "max": {"a": 1}}))
    with pytest.raises(InputError, match=r"quotas\.by"):
        select_features(
            features, SelectionOptions(budget={"examples": 3}, quotas={"by": "lang", "max": {"a": 1}}), labels=labels
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget": {"examples": 3}, "quotas": {"by": "source", "min": {"a": 2, "b": 2}}}, "above the budget"),
        ({"budget": {"examples": 3}, "quotas": {"by": "source", "min": {"a": 2}, "max": {"a": 1}}}, "below its min"),
        ({"budget": {"examples": 3}, "quotas": {"by": "source"}}, "name a group"),
        ({"budget": {"examples": 3}, "quotas": {"by": "source", "min": {"a": -1}}}, "greater than or equal"),
        ({"budget": {"examples": 3}, "group_by": "category", "quotas": {"by": "source", "max": {"a": 1}}}, "one field"),
        ({"budget": {"examples": 3}, "partitions": 2, "quotas": {"by": "source", "max": {"a": 1}}}, "partitions"),
        ({"budget": {"examples": 3}, "algorithm": "batched", "quotas": {"by": "s", "max": {"a": 1}}}, "batched"),
    ],
)
def test_quotas_no_pool_could_meet_are_refused_by_the_contract(options, message):
    with pytest.raises(ValidationError, match=message) as error:
        SelectionOptions.model_validate(options)
    assert error.value.errors()[0]["loc"][0] == "quotas"

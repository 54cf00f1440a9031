"""Curation options of any selection: random balanced by group (against exact largest remainders), budgets as a
fraction of the pool, and all of them through the API, the CLI, the library and a service job (quotas and
near-duplicate removal against brute force: test_quotas.py, test_dedup.py)."""

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from rq import Queue

import fishersft
from fishersft.cli import build_parser
from fishersft.cli.common import request_options
from fishersft.contract.comparison import ComparisonBudget, ComparisonOptions, ComparisonRun
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.data.dataset import read_labels
from fishersft.errors import InputError
from fishersft.features.set import FeatureSet
from fishersft.pipeline import embed_dataset, select_features, select_partitioned
from fishersft.selection.balanced import balanced_random_order, largest_remainder
from fishersft.training.comparison import comparison_runs, summarize
from tests.conftest import SAMPLE


def labelled_set(n: int = 60, dim: int = 6, seed: int = 0, shares=(0.6, 0.3, 0.1)):
    """Random features whose rows carry a `source` drawn with `shares` (the first group dominates)."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 6, n))])
    features = rng.standard_normal((offsets[-1], dim)).astype(np.float32)
    names = [f"s{k}" for k in range(len(shares))]
    labels = [{"source": str(v)} for v in rng.choice(names, n, p=list(shares))]
    return FeatureSet(features, offsets, [f"x{i}" for i in range(n)]), labels


def exact_shares(weights: list[int], total: int) -> list[Fraction]:
    return [Fraction(total * w, sum(weights)) for w in weights]


@pytest.mark.parametrize("seed", range(20))
def test_largest_remainder_gives_each_group_its_floor_and_the_leftovers_to_the_largest_remainders(seed):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randint(0, 50, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
    weights[0] += 1  # at least one group with weight
    total = int(torch.randint(0, sum(weights) + 1, (1,), generator=g))
    shares = largest_remainder(weights, total, torch.Generator().manual_seed(seed))
    exact = exact_shares(weights, total)
    assert sum(shares) == total
    assert all(s - int(e) in (0, 1) for s, e in zip(shares, exact, strict=True))
    # a group that got the extra unit never has a smaller remainder than one that did not
    up = [e - int(e) for s, e in zip(shares, exact, strict=True) if s > int(e)]
    down = [e - int(e) for s, e in zip(shares, exact, strict=True) if s == int(e)]
    assert not up or not down or min(up) >= max(down)


def test_largest_remainder_breaks_ties_by_the_seed():
    winners = {largest_remainder([1, 1, 1], 1, torch.Generator().manual_seed(s)).index(1) for s in range(20)}
    assert winners == {0, 1, 2}


@pytest.mark.parametrize("seed", range(5))
def test_balanced_random_under_an_example_budget_draws_each_group_its_share(seed):
    groups = torch.tensor([0] * 30 + [1] * 15 + [2] * 5)
    candidates = torch.arange(3, 50)  # the first three are not candidates: shares follow the candidates
    costs = torch.ones(50, dtype=torch.float64)
    picks = balanced_random_order(groups, costs, 10, candidates, seed)
    counts = Counter(groups[picks].tolist())
    weights = [27, 15, 5]
    expected = largest_remainder(weights, 10, _after_shuffle(candidates, seed))
    assert [counts[g] for g in range(3)] == expected
    assert len(set(picks)) == 10 and set(picks) <= set(candidates.tolist())
    assert picks == balanced_random_order(groups, costs, 10, candidates, seed)


def _after_shuffle(candidates: torch.Tensor, seed: int) -> torch.Generator:
    """The generator as `balanced_random_order` hands it to `largest_remainder`: after its shuffle."""
    generator = torch.Generator().manual_seed(seed)
    torch.randperm(len(candidates), generator=generator)
    return generator


def test_balanced_random_under_a_token_budget_shares_the_loss_tokens():
    g = torch.Generator().manual_seed(3)
    groups = torch.tensor([0] * 60 + [1] * 20)
    costs = torch.randint(1, 6, (80,), generator=g).to(torch.float64)
    picks = balanced_random_order(groups, costs, 60, torch.arange(80), seed=1)
    spent = [float(costs[[i for i in picks if groups[i] == k]].sum()) for k in range(2)]
    assert sum(spent) <= 60
    share = [float(costs[:60].sum()) / float(costs.sum()) * 60, float(costs[60:].sum()) / float(costs.sum()) * 60]
    # each group holds its share give or take one example's cost (a group's unspent share is filled from the rest)
    assert all(abs(s - e) <= 6 for s, e in zip(spent, share, strict=True))


def test_random_with_group_by_is_balanced_and_without_it_uniform():
    features, labels = labelled_set(n=200, shares=(0.8, 0.15, 0.05))
    budget = Budget(examples=20)
    balanced = select_features(
        features, SelectionOptions(budget=budget, method="random", group_by="source", seed=4), labels=labels
    )
    pool = Counter(row["source"] for row in labels)
    picked = Counter(labels[features.index[str(i)]]["source"] for i in balanced.selected)
    for name, n in pool.items():
        assert abs(picked[name] - 20 * n / 200) < 1  # its share, rounded up or down
    uniform = select_features(features, SelectionOptions(budget=budget, method="random", seed=4), labels=labels)
    generator = torch.Generator().manual_seed(4)
    assert uniform.selected == [features.ids[i] for i in torch.randperm(200, generator=generator)[:20].tolist()]


def test_a_comparison_on_grouped_rows_trains_random_balanced_too_and_judges_against_the_stronger():
    features, labels = labelled_set(n=120, shares=(0.8, 0.15, 0.05))
    options = ComparisonOptions(budget=ComparisonBudget(examples=12), random_seeds=2, weightings=["tokens"])
    runs = comparison_runs(features, options, [0, 1], labels=labels, balance_by="source")
    balanced = [r for r in runs if r.balanced_by == "source"]
    assert [r.seed for r in balanced] == [0, 1] and all(r.method == "random" for r in balanced)
    pool = Counter(labels[i]["source"] for i in range(2, 120))
    for run in balanced:
        assert 0 not in run.indices and 1 not in run.indices
        picked = Counter(labels[i]["source"] for i in run.indices)
        assert all(abs(picked[name] - 12 * n / 118) < 1 for name, n in pool.items())
    assert len(runs) == len(comparison_runs(features, options, [0, 1])) + 2  # no field, no balanced runs
    assert comparison_runs(features, options, [0, 1], labels=labels, balance_by="category") == comparison_runs(
        features, options, [0, 1]
    )
    one_group = [{"source": "s0"}] * 120  # balanced would be uniform: not trained twice
    assert comparison_runs(features, options, [0, 1], labels=one_group, balance_by="source") == comparison_runs(
        features, options, [0, 1]
    )

    def row(run, loss: float) -> ComparisonRun:
        return ComparisonRun(
            method=run.method,
            weighting=run.weighting,
            seed=run.seed,
            balanced_by=run.balanced_by,
            budget_kind=run.budget.kind,
            budget=run.budget,
            examples=len(run.indices),
            loss_tokens=1,
            length_ratio=1.0,
            groups={"field": "source", "covered": 1, "total": 3},
            ids_sha256="x",
            loss_before=3.0,
            loss_after=loss,
            perplexity_before=20.0,
            perplexity_after=10.0,
            worst_group=None,
            steps=1,
            curve=[],
            train_s=0.0,
        )

    examples = [r for r in runs if r.budget.kind == "examples"]
    uniform_better = summarize([row(r, 2.0 if r.balanced_by else 1.5) for r in examples])["examples"]
    assert uniform_better.yardstick == "random" and uniform_better.random_balanced.mean == 2.0
    balanced_better = summarize([row(r, 1.0 if r.balanced_by else 1.5) for r in examples])["examples"]
    assert balanced_better.yardstick == "random-balanced" and balanced_better.random.mean == 1.5
    assert [row(r, 1.0).label for r in balanced] == ["random-balanced/0", "random-balanced/1"]


def test_a_budget_is_exactly_one_count_or_fraction_in_zero_to_one():
    assert Budget(examples_fraction=0.25).kind == "examples" and Budget(tokens_fraction=1).kind == "tokens"
    for given in ({}, {"examples": 3, "examples_fraction": 0.1}, {"examples_fraction": 0}, {"tokens_fraction": 1.5}):
        with pytest.raises(ValidationError):
            Budget.model_validate(given)
    assert Budget(examples_fraction=0.1).resolved(45, 900) == Budget(examples=4)  # round(4.5): even
    assert Budget(tokens_fraction=0.1).resolved(45, 905) == Budget(tokens=90)
    assert Budget(examples_fraction=0.001).resolved(45, 900) == Budget(examples=1)  # at least one
    assert Budget(examples=7).resolved(45, 900) == Budget(examples=7)
    with pytest.raises(ValueError, match="resolve"):
        _ = Budget(examples_fraction=0.1).limit


@pytest.mark.parametrize("kind", ["examples", "tokens"])
def test_a_fraction_budget_selects_what_its_count_over_the_pool_selects(kind):
    features, _ = labelled_set(n=60)
    held, warm = [0, 5, 9], ["x3", "x4"]
    pool = sorted(set(range(60)) - {0, 5, 9, 3, 4})
    count = round(0.2 * (len(pool) if kind == "examples" else int(features.lengths[pool].sum())))
    fraction = select_features(
        features, SelectionOptions(budget={f"{kind}_fraction": 0.2}, warm_start_ids=warm), exclude=held
    )
    assert fraction.resolved_budget == Budget(**{kind: count}) and fraction.budget.fraction == 0.2
    counted = select_features(features, SelectionOptions(budget={kind: count}, warm_start_ids=warm), exclude=held)
    assert fraction.selected == counted.selected and counted.resolved_budget == counted.budget
    # GreeDi's partitions resolve it against the whole pool, not their own candidates
    options = SelectionOptions(budget={f"{kind}_fraction": 0.2}, warm_start_ids=warm, partitions=2)
    partitioned = select_partitioned(features, options, 2, exclude=held)
    assert partitioned.resolved_budget == Budget(**{kind: count})
    assert partitioned.partitions is not None and all(r.picks for r in partitioned.partitions.rounds)


def test_curation_requests_no_pool_could_serve_are_a_422_naming_the_field_and_nothing_is_queued(service):
    text = service.upload(SAMPLE)  # 200 rows; category: arithmetic 44, geography 43, code 42, writing 37, cooking 34
    quotas = {"by": "category", "min": {"code": 2}}
    cases = [
        ({"budget": {"examples_fraction": 0}}, "body.budget.examples_fraction"),
        ({"budget": {"tokens_fraction": 1.5}}, "body.budget.tokens_fraction"),
        ({"quotas": {**quotas, "min": {"poetry": 1}}}, "body.quotas.min.poetry"),
        ({"quotas": {**quotas, "max": {"poetry": 1}}}, "body.quotas.max.poetry"),
        ({"quotas": {**quotas, "min": {"cooking": 35}}, "budget": {"examples": 50}}, "body.quotas.min.cooking"),
        ({"quotas": {**quotas, "min": {"code": 6}}}, "body.quotas"),  # past the budget of 5
        ({"quotas": {**quotas, "min": {"code": 11}}, "budget": {"examples_fraction": 0.05}}, "body.quotas.min"),
        ({"quotas": {**quotas, "by": "source"}}, "body.quotas.by"),
        ({"dedup": {"threshold": 0}}, "body.dedup.threshold"),
        ({"dedup": {"threshold": 1.01}}, "body.dedup.threshold"),
        ({"dedup": {"threshold": 0.9}, "partitions": 2}, "body.dedup"),
    ]
    for body, field in cases:
        response = service.client.post(
            "/v1/selections", json={"dataset_id": text["id"], "budget": {"examples": 5}, **body}
        )
        assert response.status_code == 422, (body, response.text)
        assert field in [d["field"] for d in response.json()["error"]["details"]], (body, response.json())
    finetune = {
        "dataset_id": text["id"],
        "selection": {"budget": {"examples": 5}, "quotas": {**quotas, "min": {"x": 1}}},
    }
    response = service.client.post("/v1/finetunes", json=finetune)
    assert (
        response.status_code == 422 and response.json()["error"]["details"][0]["field"] == "body.selection.quotas.min.x"
    )
    assert service.client.get("/v1/selections").json()["data"] == []
    for queue in (service.settings.queue, service.settings.training_queue):
        assert Queue(queue, connection=service.redis).count == 0


def test_the_cli_spells_each_option_as_the_contract_does():
    args = build_parser().parse_args(
        [
            "select",
            "rows.jsonl",
            "--budget-tokens-fraction",
            "0.2",
            "--quotas-by",
            "category",
            "--quotas-min",
            "code=2,a=b=1",
            "--quotas-max",
            "chat=3",
            "--dedup-threshold",
            "0.9",
        ]
    )
    options = SelectionOptions.model_validate(request_options(args))
    assert options.budget == Budget(tokens_fraction=0.2) and options.dedup.threshold == 0.9
    assert options.quotas.min == {"code": 2, "a=b": 1} and options.quotas.max == {"chat": 3}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "rows.jsonl", "--budget", "3", "--quotas-min", "code"])


def test_a_service_job_with_every_curation_option_gives_the_pipelines_picks(service, llama_dir, tmp_path):
    service.start_worker()
    dataset = service.upload(SAMPLE)
    local = embed_dataset(SAMPLE, llama_dir, tmp_path / "local", max_length=64).features
    labels = read_labels(SAMPLE)
    body = {
        "budget": {"examples_fraction": 0.1},
        "method": "fisher",
        "quotas": {"by": "category", "min": {"cooking": 6}, "max": {"code": 2}},
        "dedup": {"threshold": 0.98},
    }
    job = service.select(dataset_id=dataset["id"], max_length=64, **body)
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", done
    expected = select_features(local, SelectionOptions.model_validate(body), labels=labels)
    result = done["result"]
    assert result["selected"] == expected.selected and result["resolved_budget"] == {"examples": 20}
    assert result["groups"]["counts"]["cooking"] >= 6 and result["groups"]["counts"].get("code", 0) <= 2
    assert result["dedup"] == expected.dedup.model_dump() and result["dedup"]["threshold"] == 0.98
    removed = {r["id"] for r in result["dedup"]["removed"]}
    assert not removed & set(result["selected"])


def test_the_library_takes_the_curation_options_by_the_contracts_names(tmp_path):
    features, _ = labelled_set(n=30)
    rows = np.array(features.features)
    rows[features.offsets[20] : features.offsets[21]] = rows[features.offsets[4]]  # 20's rows: one of 4's...
    rows[features.offsets[4] : features.offsets[5]] = rows[features.offsets[4]]  # ...and so are all of 4's
    np.savez(tmp_path / "f.npz", features=rows, offsets=features.offsets)
    result = fishersft.select(tmp_path / "f.npz", budget={"examples_fraction": 0.5}, dedup={"threshold": 1.0})
    assert result.resolved_budget == Budget(examples=15) and len(result.selected) == 15
    assert [(r.id, r.survivor) for r in result.dedup.removed] == [(20, 4)]
    with pytest.raises(InputError, match="quotas: for JSONL"):
        fishersft.select(tmp_path / "f.npz", budget={"examples": 3}, quotas={"by": "source", "max": {"a": 1}})
    with pytest.raises(ValidationError, match="dedup"):
        fishersft.select(tmp_path / "f.npz", budget={"examples": 3}, dedup={"threshold": 0})

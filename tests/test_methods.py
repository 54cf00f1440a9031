"""The selection methods end to end: each one through the pipeline equals its math on the store's inputs, runs as
a service job with the same picks, and requests it cannot serve are refused with a 422 naming the field."""

import numpy as np
import pytest
import torch

from fishersft.contract.comparison import ComparisonBudget, ComparisonOptions
from fishersft.contract.compression import Compression
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.features.set import FeatureSet
from fishersft.features.store import compress_store, projection_matrix
from fishersft.features.target import TargetSet, target_means, target_second_moment
from fishersft.pipeline import embed_dataset, score_difficulty, select_features
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.greedy import exact_greedy
from fishersft.selection.kcenter import kcenter_greedy
from fishersft.selection.selector import budget_costs
from fishersft.selection.similarity import similarity_order
from fishersft.selection.targeted import TargetedObjective, predictive_variance
from fishersft.training.comparison import comparison_runs
from tests.conftest import SAMPLE, sample_texts, write_jsonl


def random_set(n: int = 30, dim: int = 6, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 6, n))])
    return FeatureSet(rng.standard_normal((offsets[-1], dim)).astype(np.float32), offsets, [f"x{i}" for i in range(n)])


@pytest.mark.parametrize("budget", [Budget(examples=7), Budget(tokens=25)])
def test_kcenter_and_similarity_pick_what_their_math_picks_on_mean_features(budget):
    features = random_set()
    points = torch.from_numpy(features.mean_rows().astype(np.float32))
    costs, limit = budget_costs(budget, torch.from_numpy(features.lengths))
    every = torch.arange(len(features.ids))
    kcenter = select_features(features, SelectionOptions(budget=budget, method="kcenter"))
    assert kcenter.method == "kcenter" and kcenter.selected == [
        features.ids[i] for i in kcenter_greedy(points, costs, limit, every).order
    ]
    target = random_set(n=4, seed=1)
    similar = select_features(
        features, SelectionOptions(budget=budget, method="similarity"), target=TargetSet("t", target)
    )
    expected = similarity_order(points, torch.from_numpy(target.mean_rows().astype(np.float32)), costs, limit, every)
    assert similar.selected == [features.ids[i] for i in expected.order]
    assert similar.selected != kcenter.selected
    # every method is scored by the same objective: gains add up to it
    for result in (kcenter, similar):
        assert sum(result.gains) == pytest.approx(result.objective)  # log det(lambda I) is 0 at lambda 1
        assert result.n_selected_loss_tokens <= (budget.tokens or 10**9)


def test_methods_that_need_what_the_features_lack_say_so():
    features = random_set()
    with pytest.raises(ValueError, match="target"):
        select_features(features, SelectionOptions(budget=Budget(examples=3), method="similarity"))
    with pytest.raises(ValueError, match="base model's loss"):
        select_features(features, SelectionOptions(budget=Budget(examples=3), method="loss"))
    features.losses = np.ones(len(features.ids))  # a store the embedder wrote, without the IFD pass
    with pytest.raises(ValueError, match="without the ifd pass"):
        select_features(features, SelectionOptions(budget=Budget(examples=3), method="ifd"))


def test_every_method_runs_as_a_service_job_with_the_pipelines_picks(service, llama_dir, tmp_path):
    service.start_worker()
    dataset = service.upload(SAMPLE)
    target_rows = [{"text": t} for t in sample_texts()[:5]]
    target = service.upload(write_jsonl(tmp_path / "target.jsonl", target_rows))
    embed_dataset(SAMPLE, llama_dir, tmp_path / "local", max_length=64)
    local = score_difficulty(SAMPLE, llama_dir, tmp_path / "local")  # for ifd
    local_target = embed_dataset(tmp_path / "target.jsonl", llama_dir, tmp_path / "target", max_length=64).features
    for method, targeted in [
        ("kcenter", False),
        ("similarity", True),
        ("fisher", True),
        ("loss", False),
        ("ifd", False),
    ]:
        extra = {"target_dataset_id": target["id"]} if targeted else {}
        job = service.select(dataset_id=dataset["id"], budget={"tokens": 300}, method=method, max_length=64, **extra)
        done = service.wait(job["id"])
        assert done["status"] == "succeeded", done
        options = SelectionOptions(budget=Budget(tokens=300), method=method)
        expected = select_features(local, options, target=TargetSet(target["id"], local_target) if targeted else None)
        result = done["result"]
        assert result["method"] == method and result["selected"] == expected.selected, method
        assert result["n_selected_loss_tokens"] <= 300
        if targeted:  # the result names its target and what the picks did to its predictive variance
            assert expected.target is not None
            assert result["target"] == pytest.approx(expected.target.model_dump())
            assert result["target"]["dataset_id"] == target["id"] and result["target"]["n_examples"] == 5
            assert result["target"]["variance"] < result["target"]["variance_before"]
        else:
            assert result["target"] is None
    assert done["result"]["algorithm"] == "lazy"  # ifd: the request's, untouched


def test_requests_a_method_cannot_serve_are_a_422_naming_the_field(service, tmp_path):
    text = service.upload(SAMPLE)
    np.savez(tmp_path / "f.npz", features=np.ones((4, 8), np.float32), offsets=np.arange(5))
    features = service.upload(tmp_path / "f.npz")
    cases = [
        ({"dataset_id": text["id"], "method": "similarity"}, "/v1/selections", "body.target_dataset_id"),
        (
            {"dataset_id": text["id"], "method": "kcenter", "target_dataset_id": text["id"]},
            "/v1/selections",
            "body.target_dataset_id",
        ),
        (
            {"dataset_id": text["id"], "target_dataset_id": text["id"], "partitions": 2},
            "/v1/selections",
            "body.target_dataset_id",
        ),
        ({"dataset_id": text["id"], "method": "random", "partitions": 2}, "/v1/selections", "body.partitions"),
        ({"dataset_id": features["id"], "method": "loss"}, "/v1/selections", "body.method"),
        (
            {"dataset_id": features["id"], "method": "similarity", "target_dataset_id": text["id"]},
            "/v1/selections",
            "body.target_dataset_id",
        ),
        (
            {"dataset_id": text["id"], "selection": {"budget": {"examples": 5}, "method": "similarity"}},
            "/v1/finetunes",
            "body.selection",
        ),
        ({"dataset_id": text["id"], "methods": ["fisher", "kcenter"]}, "/v1/comparisons", "body.methods"),
        ({"dataset_id": text["id"], "methods": ["random", "similarity"]}, "/v1/comparisons", "body.target_dataset_id"),
        (
            {"dataset_id": text["id"], "methods": ["random", "kcenter"], "target_dataset_id": text["id"]},
            "/v1/comparisons",
            "body.target_dataset_id",
        ),
    ]
    for body, route, field in cases:
        budget = {} if route == "/v1/finetunes" else {"budget": {"examples": 5}}
        response = service.client.post(route, json={**budget, **body})
        assert response.status_code == 422, (body, response.text)
        assert field in [d["field"] for d in response.json()["error"]["details"]], (body, response.json())


@pytest.mark.parametrize("projection", ["principal", "gaussian"])
def test_a_target_is_compared_in_the_space_the_store_was_projected_into(tmp_path, projection):
    raw = random_set(n=40, dim=16)
    store = compress_store(raw, tmp_path / "store", Compression(rank=4, dim=6, projection=projection))
    matrix = projection_matrix(store)
    assert matrix is not None and matrix.shape == (16, 6)
    # the matrix is the one the store's own means went through (stored as float16)
    assert np.allclose(store.mean_rows(), raw.mean_rows() @ matrix.numpy(), atol=2e-2)
    target = random_set(n=3, dim=16, seed=5)
    expected = torch.from_numpy(target.mean_rows().astype(np.float32)) @ matrix
    assert torch.allclose(target_means(store, target), expected)
    assert projection_matrix(compress_store(raw, tmp_path / "whole", Compression(rank=4))) is None


@pytest.mark.parametrize("weighting", ["tokens", "examples", "mean"])
def test_a_targets_second_moment_is_that_of_the_rows_fisher_uses_in_the_stores_space(tmp_path, weighting):
    raw = random_set(n=40, dim=16)
    store = compress_store(raw, tmp_path / "store", Compression(rank=4, dim=6))
    matrix = projection_matrix(store)
    assert matrix is not None
    target = random_set(n=5, dim=16, seed=5)
    rows = torch.from_numpy(target.features).double()
    lengths = torch.from_numpy(target.lengths).double()
    if weighting == "mean":
        rows = torch.from_numpy(target.mean_rows()).double()
    owner = torch.arange(len(lengths)).repeat_interleave(lengths.long())
    weights = 1 / lengths[owner] if weighting == "examples" else torch.ones(len(rows))
    total = lengths.sum() if weighting == "tokens" else len(lengths)
    full = (rows * weights[:, None]).T @ rows / total
    projected = matrix.double().T @ full @ matrix.double()
    assert torch.allclose(target_second_moment(store, target, weighting), projected, atol=1e-5)
    with pytest.raises(ValueError, match="same model"):
        target_second_moment(store, random_set(n=3, dim=7), weighting)


@pytest.mark.parametrize("budget", [Budget(examples=5), Budget(tokens=20)])
def test_fisher_with_a_target_is_exact_greedy_on_its_variance_and_names_it(budget):
    features = random_set(n=30, dim=6)
    target = TargetSet("ds_target", random_set(n=4, seed=3))
    options = SelectionOptions(budget=budget, weighting="tokens", algorithm="stochastic")
    served = select_features(features, options, target=target)
    plain = select_features(features, options.model_copy(update={"algorithm": "exact"}))
    moment = target_second_moment(features, target.features, "tokens")
    blocks = FeatureBlocks.of(torch.from_numpy(features.features), torch.from_numpy(features.offsets))
    costs, limit = budget_costs(budget, torch.from_numpy(features.lengths))
    expected = exact_greedy(TargetedObjective(blocks, moment, 1.0), costs, limit, torch.arange(30)).order
    assert served.selected == [features.ids[i] for i in expected] and served.selected != plain.selected
    assert served.algorithm == "exact" and served.epsilon is None and plain.target is None
    assert served.target is not None and (served.target.dataset_id, served.target.n_examples) == ("ds_target", 4)
    assert served.target.variance == pytest.approx(
        predictive_variance(torch.eye(6, dtype=torch.float64) + sum_outer(blocks, expected), moment)
    )
    assert served.objective < plain.objective  # log det, which plain fisher maximises, is still reported
    similar = select_features(features, options.model_copy(update={"method": "similarity"}), target=target)
    assert similar.target is not None and similar.target.variance > served.target.variance


def sum_outer(blocks: FeatureBlocks, chosen: list[int]) -> torch.Tensor:
    return sum(
        (blocks.block(i).T @ blocks.block(i) for i in chosen), torch.zeros(blocks.dim, blocks.dim, dtype=torch.float64)
    )


def test_a_comparisons_fisher_runs_serve_its_target():
    features, target = random_set(n=30, dim=6), random_set(n=4, seed=3)
    options = ComparisonOptions(budget=ComparisonBudget(examples=5), random_seeds=1, weightings=["tokens"])
    runs = comparison_runs(features, options, [], target)
    plain = comparison_runs(features, options, [])
    blocks = FeatureBlocks.of(torch.from_numpy(features.features), torch.from_numpy(features.offsets))
    moment = target_second_moment(features, target, "tokens")
    lengths = torch.from_numpy(features.lengths)
    fisher = [r for r in runs if r.method == "fisher"]
    assert [r.budget.kind for r in fisher] == ["examples", "tokens"]
    for run in fisher:
        costs, limit = budget_costs(run.budget, lengths)
        expected = exact_greedy(TargetedObjective(blocks, moment, 1.0), costs, limit, torch.arange(30)).order
        assert run.indices == expected
    assert [r.indices for r in runs if r.method == "random"] == [r.indices for r in plain if r.method == "random"]
    assert fisher[0].indices != next(r.indices for r in plain if r.method == "fisher")

"""The selection methods end to end: each one through the pipeline equals its math on the store's inputs, runs as
a service job with the same picks, and requests it cannot serve are refused with a 422 naming the field."""

import numpy as np
import pytest
import torch

from fishersft.contract.compression import Compression
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.features.set import FeatureSet
from fishersft.features.store import compress_store, projection_matrix
from fishersft.pipeline import embed_dataset, select_features, target_means
from fishersft.selection.kcenter import kcenter_greedy
from fishersft.selection.selector import budget_costs
from fishersft.selection.similarity import similarity_order
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
    similar = select_features(features, SelectionOptions(budget=budget, method="similarity"), target=target)
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


def test_every_method_runs_as_a_service_job_with_the_pipelines_picks(service, llama_dir, tmp_path):
    service.start_worker()
    dataset = service.upload(SAMPLE)
    target_rows = [{"text": t} for t in sample_texts()[:5]]
    target = service.upload(write_jsonl(tmp_path / "target.jsonl", target_rows))
    local = embed_dataset(SAMPLE, llama_dir, tmp_path / "local", max_length=64).features
    local_target = embed_dataset(tmp_path / "target.jsonl", llama_dir, tmp_path / "target", max_length=64).features
    for method in ("kcenter", "similarity", "loss", "ifd"):
        extra = {"target_dataset_id": target["id"]} if method == "similarity" else {}
        job = service.select(dataset_id=dataset["id"], budget={"tokens": 300}, method=method, max_length=64, **extra)
        done = service.wait(job["id"])
        assert done["status"] == "succeeded", done
        options = SelectionOptions(budget=Budget(tokens=300), method=method)
        expected = select_features(local, options, target=local_target if method == "similarity" else None)
        assert done["result"]["method"] == method and done["result"]["selected"] == expected.selected, method
        assert done["result"]["n_selected_loss_tokens"] <= 300


def test_requests_a_method_cannot_serve_are_a_422_naming_the_field(service, tmp_path):
    text = service.upload(SAMPLE)
    np.savez(tmp_path / "f.npz", features=np.ones((4, 8), np.float32), offsets=np.arange(5))
    features = service.upload(tmp_path / "f.npz")
    cases = [
        ({"dataset_id": text["id"], "method": "similarity"}, "/v1/selections", "body.target_dataset_id"),
        ({"dataset_id": text["id"], "target_dataset_id": text["id"]}, "/v1/selections", "body.target_dataset_id"),
        ({"dataset_id": features["id"], "method": "loss"}, "/v1/selections", "body.method"),
        (
            {"dataset_id": features["id"], "method": "similarity", "target_dataset_id": text["id"]},
            "/v1/selections",
            "body.target_dataset_id",
        ),
        ({"dataset_id": text["id"], "method": "similarity"}, "/v1/finetunes", "body.method"),
        ({"dataset_id": text["id"], "methods": ["fisher", "kcenter"]}, "/v1/comparisons", "body.methods"),
        ({"dataset_id": text["id"], "methods": ["random", "similarity"]}, "/v1/comparisons", "body.target_dataset_id"),
        ({"dataset_id": text["id"], "target_dataset_id": text["id"]}, "/v1/comparisons", "body.target_dataset_id"),
    ]
    for body, route, field in cases:
        response = service.client.post(route, json={"budget": {"examples": 5}, **body})
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

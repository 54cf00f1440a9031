"""The service end to end: a real Redis server, real RQ workers in subprocesses, the API over TestClient."""

import os
import random
import signal
import time
from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from fishersft.contract.compression import Compression
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.features.files import load_features
from fishersft.features.store import compress_store
from fishersft.pipeline import embed_dataset, select_features
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from tests.conftest import SAMPLE, sample_texts, write_jsonl
from tests.service import WAIT_S


@pytest.fixture(scope="session")
def long_dataset(tmp_path_factory):
    """3,000 texts of 400 words: long enough to catch its job running (10 s to minutes of embedding for the tiny
    model, depending on the machine). Tests cancel, kill or abandon it; none waits for it to finish."""
    rng = random.Random(0)
    words = " ".join(sample_texts()).split()
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    return write_jsonl(path, [{"text": " ".join(rng.choice(words) for _ in range(400))} for _ in range(3000)])


def test_upload_select_poll_ids_equal_the_core_pipeline(service, llama_dir, tmp_path):
    service.start_worker()
    dataset = service.upload(SAMPLE, name="sample")
    assert dataset["format"] == "jsonl" and dataset["n_examples"] == 200 and dataset["name"] == "sample"
    assert dataset["labels"] == {"category": 5}
    job = service.select(dataset_id=dataset["id"], budget={"examples": 15}, max_length=64)
    assert job["status"] in ("queued", "running") and job["request"]["model"] == "tiny"
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["phase"] == "selecting" and done["progress"]["done"] == 15
    core = select_features(
        embed_dataset(SAMPLE, llama_dir, tmp_path / "core", max_length=64).features,
        SelectionOptions(budget=Budget(examples=15)),
    )
    assert done["result"]["selected"] == core.selected
    categories = Counter(i.split("-")[0] for i in core.selected)
    groups = {"field": "category", "covered": len(categories), "total": 5, "counts": dict(sorted(categories.items()))}
    assert done["result"]["groups"] == groups
    ids = service.client.get(f"/v1/selections/{job['id']}/ids")
    assert ids.headers["content-type"].startswith("text/plain")
    assert ids.text.splitlines() == [str(i) for i in core.selected]
    # a second selection reuses the cached features and the loaded model
    again = service.wait(service.select(dataset_id=dataset["id"], budget={"tokens": 200}, max_length=64)["id"])
    assert again["result"]["features_cached"] and again["result"]["n_selected_loss_tokens"] <= 200
    other = service.upload(write_jsonl(tmp_path / "other.jsonl", [{"text": t} for t in sample_texts()[:30]]))
    third = service.wait(service.select(dataset_id=other["id"], budget={"examples": 3})["id"])
    assert done["result"]["model_cached"] is False and again["result"]["model_cached"] is None
    assert not third["result"]["features_cached"] and third["result"]["model_cached"] is True


def features_npz(path, n, max_rows, seed):
    """n examples of 1 to max_rows random rows of 8 dimensions; returns the offsets."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, max_rows + 1, n))])
    np.savez(path, features=rng.standard_normal((offsets[-1], 8)).astype(np.float32), offsets=offsets)
    return offsets


def test_features_upload_and_random_method(service, tmp_path):
    service.start_worker()
    path = tmp_path / "f.npz"
    offsets = features_npz(path, 40, 5, seed=0)
    dataset = service.upload(path)
    assert dataset["format"] == "npz" and dataset["n_loss_tokens"] == offsets[-1]
    fisher = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 5})["id"])
    random_ = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 5}, method="random")["id"])
    assert fisher["result"]["objective"] > random_["result"]["objective"]
    assert (
        fisher["result"]["selected"]
        == select_features(load_features(path), SelectionOptions(budget=Budget(examples=5))).selected
    )


def test_compression_and_algorithm_options_reach_the_result(service, tmp_path):
    """An uploaded features file is compressed as asked (by default, rank 64 at every dimension for a small
    dataset), and the job's picks are the local pipeline's on the same compression and algorithm."""
    service.start_worker()
    path = tmp_path / "f.npz"
    features_npz(path, 60, 12, seed=1)
    dataset = service.upload(path)
    assert dataset["dim"] == 8
    auto = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 5})["id"])["result"]
    assert auto["compression"] == {"rank": 64, "dim": 8, "projection": "principal", "seed": 0, "source_dim": 8}
    assert auto["algorithm"] == "incremental" and auto["epsilon"] is None  # the mean weighting: one row each
    options = {"rank": 4, "dim": 6, "projection": "gaussian", "algorithm": "stochastic", "epsilon": 0.5}
    job = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 5}, **options)["id"])
    result = job["result"]
    assert result["compression"] == {"rank": 4, "dim": 6, "projection": "gaussian", "seed": 0, "source_dim": 8}
    assert result["dim"] == 6 and result["algorithm"] == "stochastic" and result["epsilon"] == 0.5
    local = compress_store(load_features(path), tmp_path / "local", Compression(rank=4, dim=6, projection="gaussian"))
    expected = select_features(local, SelectionOptions(budget=Budget(examples=5), algorithm="stochastic", epsilon=0.5))
    assert result["selected"] == expected.selected


def test_cancel_while_queued_and_while_running(service, long_dataset):
    dataset = service.upload(long_dataset)
    queued = service.select(dataset_id=dataset["id"], budget={"examples": 5})
    cancelled = service.client.post(f"/v1/selections/{queued['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    service.start_worker()
    job = service.select(dataset_id=dataset["id"], budget={"examples": 5})
    running = service.wait(job["id"], until=("running",))
    deadline = time.monotonic() + WAIT_S
    while not (running.get("progress") or {}).get("done"):  # cancel mid-embedding, after a batch or more
        assert running["status"] == "running" and time.monotonic() < deadline, running
        time.sleep(0.05)
        running = service.client.get(f"/v1/selections/{job['id']}").json()
    assert service.client.post(f"/v1/selections/{job['id']}/cancel").status_code == 200
    ended = service.wait(job["id"])
    assert ended["status"] == "cancelled" and ended["progress"] is None and ended["result"] is None
    assert service.client.post(f"/v1/selections/{job['id']}/cancel").json()["error"]["code"] == "already_ended"
    # the worker is free again
    small = service.upload(SAMPLE)
    assert service.wait(service.select(dataset_id=small["id"], budget={"examples": 2})["id"])["status"] == "succeeded"


def test_a_job_whose_worker_is_killed_runs_again_once_then_fails(service, long_dataset):
    """Killed mid-run, the job is queued again (attempt 2) and the next worker takes it; killed again, it fails
    with worker_lost. /readyz counts only live workers, and the service keeps answering."""
    worker = service.start_worker()
    dataset = service.upload(long_dataset)
    job = service.select(dataset_id=dataset["id"], budget={"examples": 5})
    service.wait(job["id"], until=("running",))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    again = service.wait(job["id"], until=("queued",))
    assert again["attempts"] == 2 and again["progress"] is None
    assert service.client.get("/readyz").json()["workers"] == 0  # the killed one is not counted
    worker = service.start_worker()
    service.wait(job["id"], until=("running",))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    ended = service.wait(job["id"])
    assert ended["status"] == "failed" and ended["error"]["code"] == "worker_lost" and ended["attempts"] == 2
    assert service.client.get("/healthz").status_code == 200
    assert service.client.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    service.start_worker()
    small = service.upload(SAMPLE)
    done = service.wait(service.select(dataset_id=small["id"], budget={"examples": 2})["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1


def test_redis_restart_mid_run_loses_no_dataset_or_result(service, redis_server, long_dataset):
    service.start_worker()
    sample = service.upload(SAMPLE)
    done = service.wait(service.select(dataset_id=sample["id"], budget={"examples": 4})["id"])
    long = service.upload(long_dataset)
    running = service.select(dataset_id=long["id"], budget={"examples": 5})
    service.wait(running["id"], until=("running",))
    service.stop_workers()
    redis_server.stop()  # no persistence: Redis comes back empty
    redis_server.start()
    listed = service.client.get("/v1/datasets").json()["data"]
    assert {d["id"] for d in listed} == {sample["id"], long["id"]}
    assert service.client.get(f"/v1/datasets/{sample['id']}").json() == sample
    kept = service.client.get(f"/v1/selections/{done['id']}").json()
    assert kept["status"] == "succeeded" and kept["result"] == done["result"]
    assert service.client.get(f"/v1/selections/{done['id']}/ids").text.splitlines() == [
        str(i) for i in done["result"]["selected"]
    ]


def test_bad_uploads_get_a_4xx_naming_the_problem(service, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, "{oops", {"prompt": "p"}, {"text": "ok"}])
    with open(bad, "rb") as f:
        response = service.client.post("/v1/datasets", files={"file": ("bad.jsonl", f)})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset"
    assert [d["line"] for d in error["details"]] == [2, 3] and "missing field" in error["details"][1]["message"]
    assert service.client.get("/v1/datasets").json()["data"] == []  # nothing stored
    assert not list((service.settings.data_dir / "blobs").iterdir())
    response = service.client.post("/v1/datasets", files={"file": ("data.csv", b"a,b\n")})
    assert response.status_code == 422 and response.json()["error"]["code"] == "unsupported_format"
    np.savez(tmp_path / "f.npz", features=np.ones((3, 2), np.float32), offsets=np.array([0, 3, 2]))
    with open(tmp_path / "f.npz", "rb") as f:
        response = service.client.post("/v1/datasets", files={"file": ("f.npz", f)})
    assert response.status_code == 422 and "offsets" in response.json()["error"]["message"]
    big = b'{"text": "' + b"x" * (9 << 20) + b'"}\n'
    response = service.client.post("/v1/datasets", files={"file": ("big.jsonl", big)})
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    response = service.client.post("/v1/datasets")
    assert response.status_code == 422 and response.json()["error"]["details"][0]["field"] == "body.file"


def test_bad_requests_get_a_4xx_naming_the_field(service):
    dataset = service.upload(SAMPLE)
    cases = [
        ({"dataset_id": dataset["id"], "budget": {"examples": 5, "tokens": 9}}, "body.budget"),
        ({"dataset_id": dataset["id"], "budget": {"examples": 0}}, "body.budget.examples"),
        ({"dataset_id": dataset["id"], "budget": {"examples": 5}, "method": "best"}, "body.method"),
        ({"dataset_id": dataset["id"], "budget": {"examples": 5}, "weighting": "words"}, "body.weighting"),
        ({"dataset_id": dataset["id"], "budget": {"examples": 5}, "group_by": "topic"}, "body.group_by"),
        ({"dataset_id": dataset["id"], "budget": {"examples": 5}, "lambda": -1}, "body.lambda"),
        ({"dataset_id": dataset["id"], "budget": {"examples": 5}, "model": "/etc"}, "body.model"),
        ({"dataset_id": dataset["id"], "budget": {"examples": 5}, "extra": 1}, "body.extra"),
    ]
    for body, field in cases:
        response = service.client.post("/v1/selections", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in [d["field"] for d in response.json()["error"]["details"]], (body, response.json())
    response = service.client.post("/v1/selections", json={"dataset_id": "ds_nope", "budget": {"examples": 5}})
    assert response.status_code == 404 and response.json()["error"]["details"][0]["field"] == "body.dataset_id"
    response = service.client.post("/v1/selections", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert service.client.get("/v1/selections/sel_nope").json()["error"]["code"] == "selection_not_found"
    assert service.client.get("/v1/datasets/ds_nope").status_code == 404
    assert service.client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    job = service.select(dataset_id=dataset["id"], budget={"examples": 5})
    response = service.client.get(f"/v1/selections/{job['id']}/ids")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_ready"


def test_warm_start_ids_not_in_the_dataset_are_a_422_naming_each(service, tmp_path):
    dataset = service.upload(SAMPLE)
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}, "warm_start_ids": ["code-000", "nope", 7]}
    response = service.client.post("/v1/selections", json=body)
    assert response.status_code == 422, response.text
    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert fields == ["body.warm_start_ids.1", "body.warm_start_ids.2"]
    assert service.client.post("/v1/selections", json={**body, "warm_start_ids": ["code-000"]}).status_code == 202
    rng = np.random.default_rng(0)
    path = tmp_path / "f.npz"
    np.savez(
        path, features=rng.standard_normal((10, 4)).astype(np.float16), offsets=np.arange(0, 11), ids=np.arange(10)
    )
    features = service.upload(path)
    on_features = {"dataset_id": features["id"], "budget": {"examples": 2}, "warm_start_ids": [3, 10]}
    response = service.client.post("/v1/selections", json=on_features)
    assert [d["field"] for d in response.json()["error"]["details"]] == ["body.warm_start_ids.1"]


def test_idempotency_listing_deletion_and_models(service):
    dataset = service.upload(SAMPLE)
    assert service.upload(SAMPLE)["id"] == dataset["id"]  # same bytes, same dataset
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}}
    first = service.client.post("/v1/selections", json=body, headers={"Idempotency-Key": "k1"})
    again = service.client.post("/v1/selections", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    assert again.headers["location"] == f"/v1/selections/{first.json()['id']}"
    other = service.client.post("/v1/selections", json={**body, "seed": 2}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    ids = [service.select(**body)["id"] for _ in range(4)]
    page = service.client.get("/v1/selections", params={"limit": 3}).json()
    assert page["object"] == "list"
    assert [s["id"] for s in page["data"]] == ids[::-1][:3] and page["next_after"] == ids[1]
    rest = service.client.get("/v1/selections", params={"limit": 3, "after": page["next_after"]}).json()
    assert [s["id"] for s in rest["data"]] == [ids[0], first.json()["id"]] and rest["next_after"] is None
    models = service.client.get("/v1/models").json()
    assert {"name": "tiny", "default": True, "dim": 64} in models
    assert {"name": "smollm2-135m-instruct", "default": False, "dim": 576} in models
    in_use = service.client.delete(f"/v1/datasets/{dataset['id']}")  # the queued selections use it
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "dataset_in_use"
    for job_id in [first.json()["id"], *ids]:
        assert service.client.post(f"/v1/selections/{job_id}/cancel").status_code == 200
    assert service.client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert service.client.get(f"/v1/datasets/{dataset['id']}").status_code == 404


def test_api_keys_health_and_readiness(service, redis_server, tmp_path):
    assert service.client.get("/healthz").json()["status"] == "ok"
    assert service.client.get("/readyz").status_code == 503  # no worker yet
    service.start_worker()
    assert service.client.get("/readyz").json() == {"status": "ok", "redis": True, "workers": 1}
    keyed = Settings(redis_url=redis_server.url, data_dir=tmp_path / "keyed", api_keys=frozenset({"s3cret"}))
    client = TestClient(create_app(keyed))
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_openapi_documents_every_field(service):
    spec = service.client.get("/openapi.json").json()
    undocumented = [
        f"{name}.{field}"
        for name, schema in spec["components"]["schemas"].items()
        if not name.startswith(("HTTPValidationError", "ValidationError", "Body_"))
        for field, prop in schema.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert undocumented == []
    assert service.client.get("/docs").status_code == 200


def test_progress_is_reported_while_embedding(service, long_dataset):
    """Watches a long job until it reports embedding progress, then cancels it: the check needs no assumption
    about how long the whole embedding takes on this machine."""
    service.start_worker()
    dataset = service.upload(long_dataset)
    job = service.select(dataset_id=dataset["id"], budget={"examples": 5})
    body = service.wait(job["id"], until=("running",))
    deadline = time.monotonic() + WAIT_S
    while not (body["progress"] and body["progress"]["done"] > 0):
        assert body["status"] == "running" and time.monotonic() < deadline, body
        time.sleep(0.1)
        body = service.client.get(f"/v1/selections/{job['id']}").json()
    assert body["progress"]["phase"] == "embedding" and body["progress"]["total"] == 3000
    assert 0 < body["progress"]["done"] <= 3000
    service.client.post(f"/v1/selections/{job['id']}/cancel")
    assert service.wait(job["id"])["status"] in ("cancelled", "succeeded")


def test_leftovers_of_crashed_writers_are_swept_once_old(tmp_path):
    store = ArtifactStore(tmp_path)
    old_copy, new_copy = store.temp_file(".jsonl"), store.temp_file(".jsonl")
    old_partial = store.root / "features" / "abc-tiny-64.1234.partial"
    old_partial.mkdir()
    (old_partial / "features.npy").write_bytes(b"x")
    done = store.root / "features" / "abc-tiny-64"
    done.mkdir()
    day_ago = time.time() - 86400
    for path in (old_copy, old_partial, done):
        os.utime(path, (day_ago, day_ago))
    assert sorted(store.sweep(older_than_s=3600)) == sorted([old_copy, old_partial])
    assert new_copy.exists() and done.exists() and not old_partial.exists()

"""What a hostile or unlucky client can do: every answer is the documented JSON error, never a plain 500."""

import json
import os
import threading
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer

from app.main import create_app
from app.routes import datasets
from fishersft.service.redis_server import RedisServer
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from tests.conftest import SAMPLE
from tests.service import WAIT_S


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize(
    "path",
    [
        "/v1/selections/sel_é",
        "/v1/selections/sel_a b/ids",
        "/v1/selections/sel_%00",
        "/v1/finetunes/ft_" + "0" * 300 + "/events",
        "/v1/comparisons/cmp_:x:/plot.png",
        "/v1/datasets/" + "d" * 300,
        "/v1/datasets/.ds_" + "0" * 24,
        "/v1/datasets/ds_" + "0" * 24 + ".json",
    ],
)
def test_ids_of_any_shape_are_404(service, path):
    error = assert_error(service.client.get(path), 404)
    assert error["code"].endswith("not_found") and len(error["message"]) < 200


def test_cancel_of_an_odd_id_is_404(service):
    assert_error(service.client.post("/v1/selections/sel_é/cancel"), 404, "selection_not_found")


def test_json_nested_100k_deep_is_a_4xx(service):
    deep = "[" * 100_000 + "]" * 100_000
    response = service.client.post("/v1/selections", content=deep, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and response.json()["error"]["code"]


def test_405_names_the_allowed_methods(service):
    response = service.client.put("/v1/datasets")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"  # every route on the path, not the first one's
    assert service.client.delete("/v1/selections").headers["allow"] == "GET, POST"


def test_a_chunked_upload_over_the_limit_is_413(service):
    def body():
        for _ in range(12):
            yield b"x" * (1 << 20)

    headers = {"content-type": "multipart/form-data; boundary=b"}
    assert_error(service.client.post("/v1/datasets", content=body(), headers=headers), 413, "too_large")


def test_concurrent_identical_uploads_make_one_dataset(service):
    results = []

    def upload():
        with open(SAMPLE, "rb") as f:
            results.append(service.client.post("/v1/datasets", files={"file": ("s.jsonl", f)}))

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [201] * 6
    assert len({(r.json()["id"], r.json()["created_at"]) for r in results}) == 1
    assert [d["id"] for d in service.client.get("/v1/datasets").json()["data"]] == [results[0].json()["id"]]


def test_a_redis_outage_answers_json_503(service, tmp_path):
    """A Redis of its own, stopped under the running API: job routes answer 503 with Retry-After; datasets,
    which live in the artifact store, still answer."""
    with RedisServer(tmp_path / "redis", persist=False) as server:
        settings = Settings(redis_url=server.url, data_dir=tmp_path / "data", models=service.settings.models)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        with open(SAMPLE, "rb") as f:
            dataset = client.post("/v1/datasets", files={"file": ("s.jsonl", f)}).json()
        assert client.get("/v1/selections").status_code == 200
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}}
    for response in (
        client.get("/v1/selections"),
        client.get("/v1/selections/sel_" + "0" * 24),
        client.post("/v1/selections", json=body),
        client.post("/v1/comparisons", json=body),
        client.post("/v1/selections/sel_" + "0" * 24 + "/cancel"),
    ):
        assert_error(response, 503, "unavailable")
        assert response.headers["retry-after"]
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    assert client.get("/readyz").status_code == 503


def test_jobs_travel_through_redis_as_json_and_workers_run_only_fishersft_jobs(service, tmp_path):
    """Job data and meta are JSON in Redis. A job planted in a queue by whoever can write to Redis, pickled or
    JSON, naming any other function, fails without running."""
    service.start_worker()
    dataset = service.upload(SAMPLE)
    job = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 3}, max_length=64)["id"])
    assert job["status"] == "succeeded", job
    record = service.redis.hgetall(f"rq:job:{job['id']}")
    function, _, _, kwargs = json.loads(zlib.decompress(record[b"data"]))
    assert function == "workers.selection.run_selection" and kwargs["request"]["dataset_id"] == dataset["id"]
    assert json.loads(record[b"meta"])["request"]["budget"]["examples"] == 3
    marker = tmp_path / "pwned"
    planted = [
        Queue(service.settings.queue, connection=service.redis).enqueue(os.system, f"touch {marker}"),  # pickle
        Queue(service.settings.queue, connection=service.redis, serializer=JSONSerializer).enqueue(
            "os.system", f"touch {marker}"
        ),
    ]
    deadline = time.monotonic() + WAIT_S
    for bad in planted:
        while bad.get_status(refresh=True) not in ("failed", "finished"):
            assert time.monotonic() < deadline, "the worker never took the planted job"
            time.sleep(0.1)
        assert bad.get_status() == "failed"
    assert not marker.exists()
    again = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 4}, max_length=64)["id"])
    assert again["status"] == "succeeded"  # the worker is still serving


def test_text_with_a_lone_surrogate_is_refused_at_upload_naming_the_line(service, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "fine", "response": "fine"}\n{"prompt": "a \\ud800 b", "response": "ok"}\n')
    with open(path, "rb") as f:
        response = service.client.post("/v1/datasets", files={"file": ("s.jsonl", f)})
    error = assert_error(response, 422, "invalid_dataset")
    assert error["details"] == [{"line": 2, "message": error["details"][0]["message"]}]
    assert "surrogate" in error["details"][0]["message"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ('"lambda": Infinity', "body.lambda"),
        ('"lambda": NaN', "body.lambda"),
        ('"lambda": 1e-320', "body.lambda"),
        ('"lambda": 1e300', "body.lambda"),
        ('"seed": 18446744073709551616', "body.seed"),
        ('"seed": -1', "body.seed"),
        ('"budget": {"examples": "10"}', "body.budget.examples"),
        ('"budget": {"examples": true}', "body.budget.examples"),
        ('"budget": {"examples": 10.5}', "body.budget.examples"),
        ('"max_length": "64"', "body.max_length"),
        ('"model": "\\ud800"', "body.model"),
        ('"group_by": "\\udfff"', "body.group_by"),
        ('"warm_start_ids": ["\\ud800"]', "body.warm_start_ids.0"),
        ('"warm_start_ids": [18446744073709551616]', "body.warm_start_ids.0"),
        ('"model": "' + "m" * 1001 + '"', "body.model"),
    ],
)
def test_request_values_the_worker_could_not_use_are_422_naming_the_field(service, patch, field):
    dataset = service.upload(SAMPLE)
    body = '{"dataset_id": "' + dataset["id"] + '", "budget": {"examples": 3}, ' + patch + "}"
    response = service.client.post("/v1/selections", content=body, headers={"content-type": "application/json"})
    error = assert_error(response, 422)
    assert field in [d["field"] for d in error["details"]], error


def test_header_and_form_values_are_capped(service):
    body = {"dataset_id": "ds_" + "0" * 24, "budget": {"examples": 3}}
    response = service.client.post("/v1/selections", json=body, headers={"Idempotency-Key": "k" * 201})
    assert "header.idempotency-key" in [d["field"] for d in assert_error(response, 422)["details"]]
    with open(SAMPLE, "rb") as f:
        response = service.client.post("/v1/datasets", files={"file": ("s.jsonl", f)}, data={"name": "n" * 1001})
    assert "body.name" in [d["field"] for d in assert_error(response, 422)["details"]]


def client_with(service, **changes) -> TestClient:
    """The service's API with some settings changed (same Redis, same store)."""
    return TestClient(create_app(service.settings.model_copy(update=changes)), raise_server_exceptions=False)


def upload(client: TestClient, path, name: str | None = None):
    with open(path, "rb") as f:
        return client.post("/v1/datasets", files={"file": (name or path.name, f)})


def test_an_npz_that_inflates_far_beyond_its_size_is_refused_unread(service, tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, features=np.zeros((40 << 20, 1), np.float16), offsets=np.array([0, 40 << 20]))
    assert path.stat().st_size < 1 << 20
    error = assert_error(upload(service.client, path), 422, "invalid_features")
    assert "times the file" in error["message"]


def test_a_line_over_the_line_limit_is_refused_naming_it(service, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "long.jsonl"
    path.write_text('{"text": "short"}\n{"text": "' + "x" * 10_000 + '"}\n')
    error = assert_error(upload(service.client, path), 422, "invalid_dataset")
    assert error["details"] == [{"line": 2, "message": "a line longer than 4,096 bytes"}]


def test_max_length_is_capped_by_the_model_context_and_the_service_limit(service):
    dataset = service.upload(SAMPLE)
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}}
    assert service.select(**body)["request"]["max_length"] == 512  # the tiny model's context, under 1024
    error = assert_error(service.client.post("/v1/selections", json={**body, "max_length": 513}), 422)
    assert error["details"][0]["field"] == "body.max_length" and "at most 512" in error["details"][0]["message"]
    limited = client_with(service, max_length_limit=100)
    error = assert_error(limited.post("/v1/selections", json={**body, "max_length": 101}), 422)
    assert "at most 100" in error["details"][0]["message"]
    assert limited.post("/v1/selections", json=body).json()["request"]["max_length"] == 100
    finetune = {"dataset_id": dataset["id"], "selection": {"budget": {"examples": 3}}, "training": {"max_length": 600}}
    assert assert_error(service.client.post("/v1/finetunes", json=finetune), 422)["details"][0]["field"] == (
        "body.training.max_length"
    )


def test_quotas_answer_507_and_429_with_the_json_error(service, tmp_path):
    full = client_with(service, max_datasets=1)
    assert upload(full, SAMPLE).status_code == 201
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "another dataset"}\n')
    assert_error(upload(full, other), 507, "insufficient_storage")
    assert upload(full, SAMPLE).status_code == 201  # the same bytes: the dataset it already holds
    assert_error(upload(client_with(service, min_free_bytes=1 << 60), other), 507, "insufficient_storage")
    busy = client_with(service, max_active_jobs=2)
    dataset = upload(busy, SAMPLE).json()
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}}
    assert [busy.post("/v1/selections", json=body).status_code for _ in range(2)] == [202, 202]  # no worker runs
    response = busy.post("/v1/comparisons", json={**body, "budget": {"examples": 3}})
    assert_error(response, 429, "too_many_jobs")
    assert int(response.headers["retry-after"]) > 0


def test_cached_features_are_evicted_least_recently_used_under_the_cap(tmp_path):
    store = ArtifactStore(tmp_path)
    stores = []
    for k in range(4):
        path = store.features_dir(f"{k:064x}", "m", 64, "r16")
        path.mkdir()
        (path / "features.npy").write_bytes(b"x" * 1000)
        os.utime(path, (1000 + k, 1000 + k))
        stores.append(path)
    store.use_features(stores[0])  # the oldest, used just now
    assert store.evict_features(3000, keep=stores[1]) == [stores[2]]
    assert [p.exists() for p in stores] == [True, True, False, True]
    assert store.evict_features(500, keep=stores[3]) == [stores[1], stores[0]]
    assert [p.exists() for p in stores] == [False, False, False, True]


def test_each_key_sees_only_its_own_datasets_and_jobs_and_an_admin_sees_all(service, tmp_path):
    keyed = client_with(service, api_keys=frozenset({"alice-key", "bob-key"}), admin_api_keys=frozenset({"root-key"}))
    alice, bob, root = ({"Authorization": f"Bearer {k}"} for k in ("alice-key", "bob-key", "root-key"))
    with open(SAMPLE, "rb") as f:
        dataset = keyed.post("/v1/datasets", files={"file": ("s.jsonl", f)}, headers=alice).json()
    path = f"/v1/datasets/{dataset['id']}"
    assert keyed.get(path, headers=alice).status_code == 200
    assert_error(keyed.get(path, headers=bob), 404, "dataset_not_found")
    assert keyed.get("/v1/datasets", headers=bob).json()["data"] == []
    assert keyed.get(path, headers=root).status_code == 200
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}}
    error = assert_error(keyed.post("/v1/selections", json=body, headers=bob), 404, "dataset_not_found")
    assert error["details"][0]["field"] == "body.dataset_id"
    job = keyed.post("/v1/selections", json=body, headers={**alice, "Idempotency-Key": "k1"}).json()
    for suffix in ("", "/ids"):
        assert_error(keyed.get(f"/v1/selections/{job['id']}{suffix}", headers=bob), 404, "selection_not_found")
    assert_error(keyed.post(f"/v1/selections/{job['id']}/cancel", headers=bob), 404, "selection_not_found")
    assert keyed.get("/v1/selections", headers=bob).json()["data"] == []
    assert [j["id"] for j in keyed.get("/v1/selections", headers=alice).json()["data"]] == [job["id"]]
    assert [j["id"] for j in keyed.get("/v1/selections", headers=root).json()["data"]] == [job["id"]]
    assert keyed.get(f"/v1/selections/{job['id']}", headers=root).status_code == 200
    finetune = {"selection_id": job["id"]}
    assert_error(keyed.post("/v1/finetunes", json=finetune, headers=bob), 404, "selection_not_found")
    # the same Idempotency-Key from another key is another request
    with open(SAMPLE, "rb") as f:
        assert keyed.post("/v1/datasets", files={"file": ("s.jsonl", f)}, headers=bob).status_code == 201
    assert keyed.get(path, headers=bob).status_code == 200  # bob uploaded the same bytes: his too now
    other = keyed.post("/v1/selections", json=body, headers={**bob, "Idempotency-Key": "k1"}).json()
    assert other["id"] != job["id"]
    # deleting gives up one key's claim, once no queued or running job of the key uses it; the dataset goes with
    # the last one
    assert_error(keyed.delete(path, headers=alice), 409, "dataset_in_use")
    for headers, queued in ((alice, job), (bob, other)):
        assert keyed.post(f"/v1/selections/{queued['id']}/cancel", headers=headers).status_code == 200
    assert keyed.delete(path, headers=alice).status_code == 204
    assert_error(keyed.get(path, headers=alice), 404)
    assert keyed.get(path, headers=bob).status_code == 200
    assert keyed.delete(path, headers=bob).status_code == 204
    assert_error(keyed.get(path, headers=root), 404)
    assert_error(keyed.get("/v1/datasets", headers={"Authorization": "Bearer nobody"}), 401, "unauthorized")
    assert keyed.get("/openapi.json").status_code == 200  # the contract stays public (README: Security)


def test_openapi_documents_the_error_answers_of_every_route(service):
    spec = service.client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path.startswith("/v1/"):
                assert {"401", "422"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method == "post" and path.count("/") == 2 and path != "/v1/datasets":
                assert {"400", "409", "422", "429", "503"} <= codes, (method, path)
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and path != "/readyz":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"
                    }
    assert {"413", "507"} <= set(spec["paths"]["/v1/datasets"]["post"]["responses"])


def test_cached_features_keep_their_truncation_count_and_token_budgets_end_with_full_progress(service):
    service.start_worker()
    dataset = service.upload(SAMPLE)
    first = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 3}, max_length=12)["id"])
    again = service.wait(service.select(dataset_id=dataset["id"], budget={"tokens": 50}, max_length=12)["id"])
    assert first["status"] == again["status"] == "succeeded"
    assert again["result"]["features_cached"] and first["result"]["truncated"] > 0
    assert again["result"]["truncated"] == first["result"]["truncated"]
    assert again["progress"]["phase"] == "selecting" and again["progress"]["done"] == again["progress"]["total"] == 50

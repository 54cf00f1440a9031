"""GET /metrics, scraped with Prometheus's own parser while a real worker runs jobs: the counts the worker and the
API keep in Redis, and the gauges read at the scrape."""

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from app.main import create_app
from fishersft.service import metrics
from tests.conftest import SAMPLE, service_settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_selection_run_by_a_worker_is_counted_timed_and_its_upload_and_tokens_too(service):
    before = scrape(service.client)
    dataset = service.upload(SAMPLE)
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}}

    queued = service.select(**body)  # no worker yet: it waits in the queue
    waiting = scrape(service.client)
    assert value(waiting, "fishersft_queue_depth", queue=service.settings.queue) == 1
    assert value(waiting, "fishersft_queue_depth", queue=service.settings.training_queue) == 0
    assert value(waiting, "fishersft_workers_live") == 0
    assert service.client.post(f"/v1/selections/{queued['id']}/cancel").json()["status"] == "cancelled"

    service.start_worker()
    job = service.wait(service.select(**body)["id"])
    assert job["status"] == "succeeded", job
    after = scrape(service.client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("fishersft_jobs_total", kind="selection", status="succeeded") == 1
    assert grew("fishersft_jobs_total", kind="selection", status="cancelled") == 1
    assert grew("fishersft_jobs_total", kind="selection", status="failed") == 0
    assert grew("fishersft_job_duration_seconds_count", kind="selection", status="succeeded") == 1
    assert value(after, "fishersft_job_duration_seconds_sum", kind="selection", status="succeeded") > 0
    buckets = {
        dict(labels)["le"]: count
        for (name, labels), count in after.items()
        if name == "fishersft_job_duration_seconds_bucket" and ("status", "succeeded") in labels
    }
    assert buckets["+Inf"] == 1 and sorted(buckets.values()) == [buckets[le] for le in sorted(buckets, key=float)]
    for phase in ("embedding", "selecting"):
        assert grew("fishersft_phase_duration_seconds_count", kind="selection", phase=phase) == 1
    assert grew("fishersft_tokens_embedded_total", model="tiny") == job["result"]["n_loss_tokens"] > 0
    assert grew("fishersft_uploaded_bytes_total") == SAMPLE.stat().st_size == dataset["bytes"]
    assert value(after, "fishersft_queue_depth", queue=service.settings.queue) == 0
    assert value(after, "fishersft_workers_live") == 1

    again = service.wait(service.select(**body, seed=1)["id"])  # the features are cached now: none embedded
    assert again["status"] == "succeeded"
    cached = scrape(service.client)
    assert value(cached, "fishersft_jobs_total", kind="selection", status="succeeded") == 2
    assert value(cached, "fishersft_tokens_embedded_total", model="tiny") == value(
        after, "fishersft_tokens_embedded_total", model="tiny"
    )


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(None, 401), ("Bearer wrong", 401), ("Bearer user-key", 401), ("Basic metrics-secret", 401)],
)
def test_with_a_metrics_token_only_that_token_reads_metrics(tmp_path, redis_server, llama_dir, authorization, status):
    settings = service_settings(
        tmp_path, redis_server, llama_dir, metrics_token="metrics-secret", api_keys=frozenset({"user-key"})
    )
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": authorization} if authorization else {}
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == status and refused.json()["error"]["code"] == "unauthorized"
        assert "metrics token" in refused.json()["error"]["message"]
        samples = scrape(client, Authorization="Bearer metrics-secret")
        assert value(samples, "fishersft_workers_live") == 0


def test_without_a_metrics_token_metrics_are_open_even_with_api_keys(tmp_path, redis_server, llama_dir):
    settings = service_settings(tmp_path, redis_server, llama_dir, api_keys=frozenset({"user-key"}))
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/datasets").status_code == 401
        samples = scrape(client)
        assert ("fishersft_queue_depth", frozenset({("queue", settings.queue)})) in samples


def test_observations_from_several_processes_add_up_and_every_api_process_reads_them_all(
    tmp_path, redis_server, llama_dir
):
    settings = service_settings(tmp_path, redis_server, llama_dir)
    labels = ("selection", "embedding")
    for seconds in (0.1, 0.2, 1e6):  # each through its own connection, as from separate workers
        metrics.observe(Redis.from_url(settings.redis_url), metrics.PHASE_DURATION, labels, seconds)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        samples = scrape(first)
        assert scrape(second) == samples
    name = "fishersft_phase_duration_seconds"

    def bucket(le: str) -> float:
        return value(samples, f"{name}_bucket", kind="selection", phase="embedding", le=le)

    assert (bucket("0.1"), bucket("0.5"), bucket("86400.0"), bucket("+Inf")) == (1, 2, 2, 3)  # bounds inclusive
    assert value(samples, f"{name}_count", kind="selection", phase="embedding") == 3
    assert value(samples, f"{name}_sum", kind="selection", phase="embedding") == pytest.approx(1e6 + 0.3)

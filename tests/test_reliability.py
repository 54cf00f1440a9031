"""What a hostile or unlucky day finds (issue 30): racing retries, two keys uploading the same bytes, a dataset
deleted under a job, jobs that fail without saying so. Through the real API, Redis and workers."""

import gzip
import json
import random
import re
import string
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job

from app.main import create_app
from fishersft.data.formats import GZ_BYTES_PER_LINE, GZ_MAX_INFLATION
from fishersft.service.events import MAX_EVENTS, append_event, new_event
from fishersft.service.protocol import JOB_SERIALIZER
from fishersft.service.store import ArtifactStore
from tests.conftest import SAMPLE, service_settings
from tests.service import Service


def race(count: int, request) -> list:
    """`request()` from `count` threads released together; their answers."""
    barrier, answers = threading.Barrier(count), []

    def run() -> None:
        barrier.wait()
        answers.append(request())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_racing_requests_with_one_idempotency_key_create_exactly_one_job(service):
    """30 clients released together, three rounds (one key each): one job per key, however they interleave. On
    the old check-then-act code 2-3 jobs were created per round."""
    dataset = service.upload(SAMPLE)
    body = {"dataset_id": dataset["id"], "budget": {"examples": 5}}
    for round_ in range(3):
        headers = {"Idempotency-Key": f"retry-storm-{round_}"}
        answers = race(30, lambda h=headers: service.client.post("/v1/selections", json=body, headers=h))
        assert {a.status_code for a in answers} == {202}, [a.text for a in answers if a.status_code != 202]
        assert len({a.json()["id"] for a in answers}) == 1
    listed = service.client.get("/v1/selections").json()["data"]
    assert len(listed) == 3
    queue = Queue(service.settings.queue, connection=service.redis, serializer=JOB_SERIALIZER)
    assert sorted(queue.job_ids) == sorted(job["id"] for job in listed)
    again = service.client.post("/v1/selections", json=body, headers={"Idempotency-Key": "retry-storm-0"})
    assert again.status_code == 202 and again.json()["id"] == listed[-1]["id"]
    other = service.client.post(
        "/v1/selections", json={**body, "budget": {"examples": 6}}, headers={"Idempotency-Key": "retry-storm-0"}
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


@pytest.fixture
def two_keys(tmp_path, redis_server, llama_dir):
    settings = service_settings(tmp_path, redis_server, llama_dir, api_keys=frozenset({"key-a", "key-b"}))
    with TestClient(create_app(settings)) as client:
        svc = Service(settings, client)
        yield svc
        svc.stop_workers()


def test_a_key_uploading_bytes_another_key_holds_sees_its_own_name_and_time(two_keys):
    a, b = ({"Authorization": f"Bearer key-{k}"} for k in "ab")
    client = two_keys.client

    def upload(headers: dict, name: str) -> dict:
        with open(SAMPLE, "rb") as f:
            response = client.post(
                "/v1/datasets", files={"file": ("mine.jsonl", f)}, data={"name": name}, headers=headers
            )
        assert response.status_code == 201, response.text
        return response.json()

    first = upload(a, "A's secret project")
    time.sleep(0.01)  # a later upload time, on any clock
    second = upload(b, "B's copy")
    assert second["id"] == first["id"]
    assert second["name"] == "B's copy" and second["created_at"] > first["created_at"]
    assert client.get(f"/v1/datasets/{first['id']}", headers=b).json() == second
    assert client.get("/v1/datasets", headers=b).json()["data"] == [second]
    assert client.get(f"/v1/datasets/{first['id']}", headers=a).json() == first
    assert upload(a, "renamed") == first  # a key's first upload stays its claim


def test_a_dataset_a_queued_job_uses_cannot_be_deleted_until_the_job_ends(service):
    """409 naming the job (the old code answered 204, and the job later failed with the server's data path)."""
    dataset = service.upload(SAMPLE)
    job = service.select(dataset_id=dataset["id"], budget={"examples": 5})
    refused = service.client.delete(f"/v1/datasets/{dataset['id']}")
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "dataset_in_use" and error["details"] == [
        {"field": "dataset_id", "message": f"used by {job['id']}"}
    ]
    assert service.client.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    service.client.post(f"/v1/selections/{job['id']}/cancel")
    events = service.client.get(f"/v1/selections/{job['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["cancelled"]  # a job cancelled while queued says so too
    assert service.client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204


def test_a_dataset_a_queued_finetune_of_its_selection_uses_cannot_be_deleted(service):
    """A finetune names the selection, not the dataset it trains on: the delete is refused all the same."""
    service.start_worker(service.settings.queue)  # selections only: the finetune stays queued
    dataset = service.upload(SAMPLE)
    selection = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=64)["id"])
    assert selection["status"] == "succeeded", selection
    finetune = service.client.post("/v1/finetunes", json={"selection_id": selection["id"]})
    assert finetune.status_code == 202, finetune.text
    refused = service.client.delete(f"/v1/datasets/{dataset['id']}")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["details"] == [
        {"field": "dataset_id", "message": f"used by {finetune.json()['id']}"}
    ]


def test_a_job_that_fails_on_an_internal_error_ends_its_events_with_failed_and_names_no_server_path(service):
    """The dataset's file goes missing behind the API's back: the job fails `internal_error`, its last event is
    `failed`, and no answer shows the artifact store's path."""
    dataset = service.upload(SAMPLE)
    job = service.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=64)
    ArtifactStore(service.settings.data_dir).blob(dataset["sha256"]).unlink()
    service.start_worker()
    failed = service.wait(job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal_error", failed
    events = service.client.get(f"/v1/selections/{job['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["started", "failed"]
    assert events[-1]["message"] == failed["error"]["message"] and events[-1]["level"] == "error"
    data_dir = str(service.settings.data_dir)
    answers = [service.client.get(f"/v1/selections/{job['id']}").text, str(events)]
    assert not any(data_dir in answer or "/tmp" in answer for answer in answers)


def gzip_upload(service: Service, path: Path, data: bytes):
    path.write_bytes(gzip.compress(data, 9))
    with open(path, "rb") as f:
        return service.client.post("/v1/datasets", files={"file": (path.name, f)})


def test_a_jsonl_gz_that_inflates_or_holds_many_lines_for_its_size_is_refused_before_they_are_read(service, tmp_path):
    """4 MiB of newlines (4 KB compressed, within the 8 MiB upload limit) were read a line at a time into a 422
    "the dataset is empty"; so were blank lines between incompressible ones, and one long line of one letter was
    read whole. Each is now a 413 naming its limit, and nothing is stored."""
    lines_limit = f"lines (blank ones too): at most one per {GZ_BYTES_PER_LINE} bytes"
    rng = random.Random(0)
    padded = json.dumps({"text": "".join(rng.choices(string.ascii_letters, k=1000))}).encode() + b"\n" * 5000
    for name, data, limit in [
        ("newlines", b"\n" * (4 << 20), lines_limit),
        ("padded", padded * 300, lines_limit),
        (
            "repeated",
            b'{"text": "' + b"a" * (4 << 20) + b'"}\n',
            f"inflates to more than {GZ_MAX_INFLATION} times its size",
        ),
    ]:
        refused = gzip_upload(service, tmp_path / f"{name}.jsonl.gz", data)
        assert refused.status_code == 413, refused.text
        assert limit in refused.json()["error"]["message"], refused.text
    assert service.client.get("/v1/datasets").json()["data"] == []
    assert [p.name for p in (service.settings.data_dir / "blobs").iterdir()] == []


def test_a_jsonl_gz_keeps_the_line_numbers_of_its_blank_lines(service, tmp_path):
    rows = [json.dumps({"text": t}).encode() for t in ("one", "two", "three")]
    data = b"\n\n".join(rows) + b"\n  \n\r\n" + b'{"text": 3}'  # no final newline, a bad last line
    refused = gzip_upload(service, tmp_path / "numbered.jsonl.gz", data)
    assert refused.status_code == 422, refused.text
    [detail] = refused.json()["error"]["details"]
    assert detail["line"] == 8 and "text" in detail["message"]
    accepted = gzip_upload(service, tmp_path / "ok.jsonl.gz", b"\n\n".join(rows))
    assert accepted.status_code == 201 and accepted.json()["n_examples"] == 3


def test_a_jobs_events_page_like_every_list_with_a_cursor_that_counts_the_dropped_ones(service):
    """1,010 events on a queued job: the first 10 are dropped (a job keeps 1,000), the rest come in pages of
    `limit`, and `after` is the number of events read so far, so a poller can ask for only newer ones. The old
    endpoint answered one page of everything and ignored `limit` and `after`."""
    dataset = service.upload(SAMPLE)
    job_id = service.select(dataset_id=dataset["id"], budget={"examples": 5})["id"]
    record = Job.fetch(job_id, service.redis, serializer=JOB_SERIALIZER)
    for step in range(1, MAX_EVENTS + 11):
        append_event(record, new_event("step", f"step {step}", step=step))
    url = f"/v1/selections/{job_id}/events"
    pages, cursors, after = [], [], None
    while True:
        page = service.client.get(url, params={"limit": 300} | ({"after": after} if after else {})).json()
        pages.append([e["data"]["step"] for e in page["data"]])
        cursors.append(after := page["next_after"])
        if after is None:
            break
    assert [len(p) for p in pages] == [300, 300, 300, 100] and [s for p in pages for s in p] == list(range(11, 1011))
    assert cursors == ["310", "610", "910", None]
    newer = service.client.get(url, params={"after": 1005}).json()
    assert [e["data"]["step"] for e in newer["data"]] == [1006, 1007, 1008, 1009, 1010]
    assert newer["next_after"] is None
    assert service.client.get(url, params={"after": 5000}).json()["data"] == []
    refused = service.client.get(url, params={"after": "x"})
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "query.after"


ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_asset_from_the_service_itself(service, page):
    """Every script, stylesheet, icon and spec the page names is served by the service (the pages loaded Swagger
    UI and ReDoc from a public CDN: blank without the internet)."""
    html = service.client.get(page).text
    assert "http://" not in html and "https://" not in html, html
    assets = re.findall(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'""", html)
    paths = {a or b for a, b in assets}
    assert len(paths) >= 3 and all(p.startswith("/") and not p.startswith("//") for p in paths), paths
    for path in paths:
        response = service.client.get(path)
        assert response.status_code == 200 and len(response.content) > 100, path
        assert response.headers["content-type"].startswith(ASSET_TYPES[Path(path).suffix]), (path, response.headers)


def test_every_reference_in_the_openapi_document_resolves(service):
    """ReDoc renders nothing but "Invalid reference token" for a $ref to no component (finetunes' budget named
    `Budget`, a component the document calls `Budget-Input`)."""
    document = service.client.get("/openapi.json").json()
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs and refs <= set(document["components"]["schemas"]), refs - set(document["components"]["schemas"])

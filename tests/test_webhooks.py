"""Webhooks end to end: a loopback receiver that checks the signature as docs/service.md shows, a real worker, and the
API refusing hosts it may not POST to."""

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rq.job import Job, JobStatus

from app.main import create_app
from fishersft.contract.jobs import Selection, WebhookPayload, kind_of
from fishersft.errors import InputError
from fishersft.service.protocol import JOB_SERIALIZER
from fishersft.service.settings import Settings
from fishersft.service.webhooks import post, signature
from tests.conftest import SAMPLE, sample_texts, service_settings, write_jsonl
from tests.service import WAIT_S, Service

SECRET = "test-webhook-secret"


def documented_verify() -> Callable[[str, str, bytes], bool]:
    """The receiver's check, run from the snippet in docs/service.md itself: the docs show what the service signs."""
    text = (Path(__file__).parents[1] / "docs" / "service.md").read_text()
    snippet = re.search(r"```python\n(import hashlib.*?)```", text, re.S)
    assert snippet is not None, "the webhook section of docs/service.md shows a receiver's check"
    namespace: dict = {}
    exec(snippet[1], namespace)
    return namespace["verify"]


verify = documented_verify()


class Receiver:
    """A loopback HTTP server that records each POST (signature checked, attempt number) and answers the statuses
    of `answers` in turn, then 200; `before_answer(n)` runs before the n-th POST is answered."""

    def __init__(self, answers: list[int], before_answer: Callable[[int], None] | None = None) -> None:
        self.answers, self.received = list(answers), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = verify(SECRET, self.headers["Fishersft-Signature"], body)
                attempt = int(self.headers["Fishersft-Attempt"])
                receiver.received.append(
                    {"valid": valid, "body": json.loads(body), "path": self.path, "attempt": attempt}
                )
                if before_answer is not None:
                    before_answer(len(receiver.received))
                self.send_response(receiver.answers.pop(0) if receiver.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int) -> list[dict]:
        deadline = time.monotonic() + WAIT_S
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} webhook(s) received, expected {count}"
            time.sleep(0.1)
        return self.received


@pytest.fixture
def hooked(tmp_path, redis_server, llama_dir):
    """A service that POSTs webhooks to 127.0.0.1, retrying after half a second (twice); it embeds datasets above
    1,024 examples in shards."""
    settings = service_settings(
        tmp_path,
        redis_server,
        llama_dir,
        webhook_secret=SECRET,
        webhook_hosts=frozenset({"127.0.0.1"}),
        webhook_retry_s=(0.5, 0.5),
        shard_examples=1024,
    )
    with TestClient(create_app(settings)) as client:
        svc = Service(settings, client)
        yield svc
        svc.stop_workers()


def webhook_events(service: Service, job_id: str, attempts: int) -> list[dict]:
    """The job's webhook events, once `attempts` of them are recorded."""
    kind = kind_of(job_id)
    assert kind is not None, job_id
    resource = kind.resource
    deadline = time.monotonic() + WAIT_S
    while True:
        events = service.client.get(f"/v1/{resource}/{job_id}/events").json()["data"]
        found = [e for e in events if e["type"].startswith("webhook.")]
        if len(found) >= attempts:
            return found
        assert time.monotonic() < deadline, f"webhook events: {found}"
        time.sleep(0.1)


def test_a_selection_posts_its_signed_body_once_it_succeeds_retrying_a_500(hooked, tmp_path):
    """Both attempts carry the same id, each its number; the worker logs no error on the way (it logged an
    ERROR traceback for each delivery, reading back the status of the delivery job RQ had already deleted)."""
    receiver = Receiver([500])
    log = tmp_path / "worker.log"
    hooked.start_worker(log=log)
    dataset = hooked.upload(SAMPLE)
    job = hooked.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=64, webhook_url=receiver.url)
    assert job["request"]["webhook_url"] == receiver.url
    done = hooked.wait(job["id"])
    assert done["status"] == "succeeded", done
    first, second = receiver.wait(2)
    assert first["valid"] and second["valid"] and first["path"] == "/hook"
    payload = {"id": f"{job['id']}.job.succeeded", "type": "job.succeeded", "job": done}
    assert first["body"] == second["body"] == payload and [first["attempt"], second["attempt"]] == [1, 2]
    assert hooked.client.get(f"/v1/selections/{job['id']}").json() == done  # delivery changed nothing
    failed, delivered = webhook_events(hooked, job["id"], 2)
    assert failed["type"] == "webhook.failed" and failed["level"] == "warning"
    assert failed["data"] == {"attempt": 1, "status_code": 500, "error": "answered 500", "retry_in_s": 0.5}
    assert delivered["type"] == "webhook.delivered" and delivered["data"] == {"attempt": 2, "status_code": 200}
    time.sleep(2)  # delivered: nothing more is sent
    assert len(receiver.received) == 2
    hooked.stop_workers()
    assert " ERROR " not in log.read_text() and "Traceback" not in log.read_text(), log.read_text()


def test_a_cancelled_job_posts_job_cancelled_and_delivery_gives_up_after_its_retries(hooked):
    receiver = Receiver([500, 503, 502])
    dataset = hooked.upload(SAMPLE)
    job = hooked.select(dataset_id=dataset["id"], budget={"examples": 5}, webhook_url=receiver.url)
    cancelled = hooked.client.post(f"/v1/selections/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    hooked.start_worker()  # no worker was there: the job was cancelled while queued
    received = receiver.wait(3)
    assert all(r["valid"] for r in received)
    assert all(
        r["body"] == {"id": f"{job['id']}.job.cancelled", "type": "job.cancelled", "job": cancelled} for r in received
    )
    events = webhook_events(hooked, job["id"], 3)
    assert [e["data"]["status_code"] for e in events] == [500, 503, 502]
    assert [e["level"] for e in events] == ["warning", "warning", "error"]
    assert events[-1]["data"]["retry_in_s"] is None and events[-1]["message"].endswith("giving up")


def test_a_selection_the_monitor_fails_posts_job_failed(hooked, tmp_path):
    """No worker runs while shard 1 of three is failed by hand, as a worker would: the API's monitor fails the
    selection, and the first worker to start delivers its webhook."""
    receiver = Receiver([])
    rows = [{"text": t} for t in (sample_texts() * 13)[:2600]]
    dataset = hooked.upload(write_jsonl(tmp_path / "three.jsonl", rows))
    job = hooked.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=64, webhook_url=receiver.url)
    shard = Job.fetch(f"{job['id']}-shard-1", hooked.redis, serializer=JOB_SERIALIZER)
    shard.meta["error"] = {"code": "invalid_input", "message": "boom"}
    shard.save_meta()
    shard.set_status(JobStatus.FAILED)
    deadline = time.monotonic() + WAIT_S
    while Job.fetch(job["id"], hooked.redis, serializer=JOB_SERIALIZER).get_status() != JobStatus.FAILED:
        assert time.monotonic() < deadline, "the monitor did not fail the selection"
        time.sleep(0.1)
    hooked.start_worker()
    [received] = receiver.wait(1)
    failed = hooked.client.get(f"/v1/selections/{job['id']}").json()
    assert failed["error"] == {"code": "invalid_input", "message": "shard 1: boom"}
    assert received["valid"] and received["body"] == {
        "id": f"{job['id']}.job.failed",
        "type": "job.failed",
        "job": failed,
    }
    [delivered] = webhook_events(hooked, job["id"], 1)
    assert delivered["type"] == "webhook.delivered" and delivered["data"]["attempt"] == 1


def test_the_receivers_check_refuses_a_tampered_body_or_another_secret():
    body = b'{"type": "job.failed"}'
    header = signature(SECRET, int(time.time()), body)
    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, body + b" ")
    assert not verify("another secret", header, body)
    assert not verify(SECRET, signature(SECRET, int(time.time()) - 3600, body), body)  # an old replay


@pytest.mark.parametrize("resource", ["selections", "finetunes", "comparisons"])
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://169.254.169.254/latest/meta-data", "is not one this service sends webhooks to"),
        ("http://localhost:8000/hook", "is not one this service sends webhooks to"),
        ("ftp://127.0.0.1/hook", "an absolute http:// or https:// URL with a host"),
        ("http://user:secret@127.0.0.1/hook", "credentials in the URL are not sent"),
        ("http://127.0.0.1/x\r\nX-Injected: 1", "a URL holds no spaces or control characters"),
        ("http://127.0.\t0.1/hook", "a URL holds no spaces or control characters"),
        ("http://127.0.0.1/hook\x00", "a URL holds no spaces or control characters"),
    ],
)
def test_a_webhook_url_the_service_may_not_post_to_is_a_422_naming_the_field(hooked, resource, url, message):
    dataset = hooked.upload(SAMPLE)
    budget = {"budget": {"examples": 5}}
    body = {"dataset_id": dataset["id"], **({"selection": budget} if resource == "finetunes" else budget)}
    response = hooked.client.post(f"/v1/{resource}", json={**body, "webhook_url": url})
    assert response.status_code == 422, response.text
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == "body.webhook_url" and message in response.text


def test_a_service_without_webhook_hosts_refuses_every_webhook(service):
    dataset = service.upload(SAMPLE)
    body = {"dataset_id": dataset["id"], "budget": {"examples": 5}, "webhook_url": "http://127.0.0.1/hook"}
    error = service.client.post("/v1/selections", json=body).json()["error"]
    assert error["message"] == "this service sends no webhooks: FISHERSFT_WEBHOOK_HOSTS is empty"
    assert (
        error["details"][0]["field"] == "body.webhook_url"
        and "FISHERSFT_WEBHOOK_HOSTS" in error["details"][0]["message"]
    )


def test_webhook_hosts_need_a_secret_and_the_default_retries_span_a_minute(monkeypatch):
    monkeypatch.setenv("FISHERSFT_WEBHOOK_HOSTS", "hooks.example.com")
    with pytest.raises(InputError, match=r"FISHERSFT_WEBHOOK_HOSTS: .*set FISHERSFT_WEBHOOK_SECRET"):
        Settings.from_env()
    monkeypatch.setenv("FISHERSFT_WEBHOOK_SECRET", "s")
    retries = Settings.from_env().webhook_retry_s
    assert len(retries) + 1 >= 3 and sum(retries) >= 60  # attempts, and the time between the first and the last


def test_an_attempt_the_http_client_refuses_is_a_failed_attempt_not_an_exception(hooked):
    """A URL the client will not send to (one stored before the API refused control characters) fails the attempt
    with its reason: it was an uncaught exception, with no event and no retry."""
    dataset = hooked.upload(SAMPLE)
    job = hooked.select(dataset_id=dataset["id"], budget={"examples": 5})
    payload = WebhookPayload(id=f"{job['id']}.job.succeeded", type="job.succeeded", job=Selection.model_validate(job))
    outcome = post("http://127.0.0.1/x\r\nX-Injected: 1", payload, SECRET, attempt=1)
    assert outcome.status_code is None and outcome.error is not None and "InvalidURL" in outcome.error


def test_a_worker_killed_while_posting_loses_that_attempt_only_and_the_next_one_is_made(hooked):
    """The receiver kills the worker while it waits for the answer to attempt 1: the attempt is lost with it, and
    attempt 2 (filed in Redis when attempt 1 started) is made by the next worker, once; each attempt is POSTed
    once, all with the same id."""
    worker: list[subprocess.Popen] = []
    receiver = Receiver([], before_answer=lambda n: n == 1 and worker[0].send_signal(signal.SIGKILL))
    worker.append(hooked.start_worker())
    dataset = hooked.upload(SAMPLE)
    job = hooked.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=64, webhook_url=receiver.url)
    receiver.wait(1)
    worker[0].wait()
    hooked.start_worker()
    first, second = receiver.wait(2)
    assert [first["attempt"], second["attempt"]] == [1, 2] and first["body"] == second["body"]
    assert first["body"]["id"] == f"{job['id']}.job.succeeded" and first["valid"] and second["valid"]
    [delivered] = webhook_events(hooked, job["id"], 1)
    assert delivered["type"] == "webhook.delivered" and delivered["data"]["attempt"] == 2
    time.sleep(2)  # delivered: nothing more is sent
    assert len(receiver.received) == 2

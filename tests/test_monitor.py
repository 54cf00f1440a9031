"""The job monitor settles lost jobs and failed stages with nobody reading them: these tests never GET a job
while they wait, they read its state from Redis and RQ directly."""

import random
import signal
import time

import pytest
from fastapi.testclient import TestClient
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from app.main import create_app
from fishersft.service.monitor import LOCK_KEY, Monitor, settle
from fishersft.service.protocol import JOB_SERIALIZER, Plan
from tests.conftest import sample_texts, service_settings, write_jsonl
from tests.service import WAIT_S, Service


@pytest.fixture
def unread(tmp_path, redis_server, llama_dir):
    """The service with its API not serving (no lifespan, so no monitor in the API): only workers' monitors act."""
    settings = service_settings(tmp_path, redis_server, llama_dir, shard_examples=1024)
    svc = Service(settings, TestClient(create_app(settings)))
    yield svc
    svc.stop_workers()


@pytest.fixture(scope="module")
def long_texts(tmp_path_factory):
    """3,000 texts of 400 words: a job on them runs long enough to be killed while running."""
    rng = random.Random(0)
    words = " ".join(sample_texts()).split()
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    return write_jsonl(path, [{"text": " ".join(rng.choice(words) for _ in range(400))} for _ in range(3000)])


def fetch(service, job_id: str) -> Job:
    return Job.fetch(job_id, service.redis, serializer=JOB_SERIALIZER)


def wait_for(service, job_id: str, ready, what: str) -> Job:
    """Poll the job's record in Redis (never the API) until `ready(job)`."""
    deadline = time.monotonic() + WAIT_S
    while not ready(job := fetch(service, job_id)):
        assert time.monotonic() < deadline, f"{what}: still {job.get_status()} {job.meta}"
        time.sleep(0.1)
    return job


def test_a_lost_job_is_queued_again_then_failed_with_nobody_reading(unread, long_texts):
    """A worker on the training queue only stays up: its monitor notices the selection's worker was killed and
    queues the job again (attempt 2), which it cannot take itself; killed again, the job fails `worker_lost`."""
    service = unread
    service.start_worker(service.settings.training_queue)
    dataset = service.upload(long_texts)
    job_id = service.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=128)["id"]
    for attempt in (1, 2):
        worker = service.start_worker()
        wait_for(service, job_id, lambda j: j.get_status() == JobStatus.STARTED, f"attempt {attempt} not running")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        if attempt == 1:
            queued = lambda j: j.get_status() == JobStatus.QUEUED and j.meta.get("attempts") == 2  # noqa: E731
            job = wait_for(service, job_id, queued, "not queued again")
            assert "progress" not in job.meta
            assert [e["data"] for e in job.meta["events"] if e["type"] == "retried"] == [{"attempt": 2}]
    job = wait_for(service, job_id, lambda j: j.get_status() == JobStatus.FAILED, "not failed")
    assert job.meta["error"]["code"] == "worker_lost" and job.meta["attempts"] == 2
    assert job_id in FailedJobRegistry(service.settings.queue, connection=service.redis, serializer=JOB_SERIALIZER)
    body = service.client.get(f"/v1/selections/{job_id}").json()
    assert body["status"] == "failed" and body["error"]["code"] == "worker_lost" and body["attempts"] == 2
    events = service.client.get(f"/v1/selections/{job_id}/events").json()["data"]
    assert [e["type"] for e in events] == ["started", "retried", "started", "failed"]  # it ends with its state
    assert events[-1]["level"] == "error" and events[-1]["message"] == body["error"]["message"]


def test_a_failed_stage_fails_its_selection_and_stops_the_others_with_nobody_reading(unread, tmp_path):
    """No worker runs: shard 1 of three is failed by hand, as a worker would. Reading the selection shows it
    failed but changes nothing; one monitor pass fails it and cancels the other shards."""
    service = unread
    rows = [{"text": t} for t in (sample_texts() * 13)[:2600]]
    dataset = service.upload(write_jsonl(tmp_path / "three.jsonl", rows))
    job_id = service.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=64)["id"]
    job = fetch(service, job_id)
    shards = Plan.of(job.meta["plan"]).shard_ids(job_id)
    assert len(shards) == 3
    failed = fetch(service, shards[1])
    failed.meta["error"] = {"code": "invalid_input", "message": "boom"}
    failed.save_meta()
    failed.set_status(JobStatus.FAILED)
    read = service.client.get(f"/v1/selections/{job_id}").json()
    assert read["status"] == "failed" and read["error"] == {"code": "invalid_input", "message": "shard 1: boom"}
    assert fetch(service, job_id).get_status() == JobStatus.DEFERRED  # reading wrote nothing
    assert [fetch(service, s).get_status() for s in shards] == [JobStatus.QUEUED, JobStatus.FAILED, JobStatus.QUEUED]
    settle(service.redis, service.settings)
    job = fetch(service, job_id)
    assert job.get_status() == JobStatus.FAILED and job.meta["error"]["message"] == "shard 1: boom"
    assert [fetch(service, s).get_status() for s in shards] == [
        JobStatus.CANCELED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    ]
    assert service.client.get(f"/v1/selections/{job_id}").json()["error"]["message"] == "shard 1: boom"


def test_one_monitor_acts_at_a_time_and_hands_over_when_stopped(unread):
    first, second = Monitor(unread.redis, unread.settings), Monitor(unread.redis, unread.settings)
    assert first.interval == 2.5 and first.lead() and first.lead()  # renewed
    assert not second.lead()
    assert 0 < unread.redis.pttl(LOCK_KEY) <= 10_000
    first.stop()
    assert second.lead()
    second.stop()
    assert not unread.redis.exists(LOCK_KEY)

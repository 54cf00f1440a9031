"""One selection over many RQ workers: sharded embedding and GreeDi partitions, with three real workers in
subprocesses, a real Redis and the tiny model. Shards are 1,024 examples (the embedder's chunk, the smallest a
shard may be)."""

import random
import signal
import time

import pytest
from fastapi.testclient import TestClient
from rq import Worker
from rq.job import Job, JobStatus

from app.main import create_app
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.errors import InputError
from fishersft.features.files import load_features
from fishersft.pipeline import embed_dataset, select_features
from fishersft.service.protocol import JOB_SERIALIZER, Plan
from fishersft.service.settings import Settings
from tests.conftest import sample_texts, service_settings, write_jsonl
from tests.service import WAIT_S, Service
from tests.test_service import features_npz

SHARD = 1024


@pytest.fixture
def sharded(tmp_path, redis_server, llama_dir):
    settings = service_settings(tmp_path, redis_server, llama_dir, shard_examples=SHARD)
    with TestClient(create_app(settings)) as client:  # the app's lifespan runs: its job monitor too
        svc = Service(settings, client)
        yield svc
        svc.stop_workers()


def texts(path, n, words, seed=0):
    rng = random.Random(seed)
    vocabulary = " ".join(sample_texts()).split()
    rows = [{"id": f"t{i}", "text": " ".join(rng.choice(vocabulary) for _ in range(words))} for i in range(n)]
    return write_jsonl(path, rows)


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    """2,600 short texts: shards of 1,024, 1,024 and 552 examples."""
    return texts(tmp_path_factory.mktemp("three") / "three.jsonl", 2600, 12)


@pytest.fixture(scope="module")
def slow_shards(tmp_path_factory):
    """3,000 texts of 300 words: shards that run long enough to be caught running (seconds to minutes)."""
    return texts(tmp_path_factory.mktemp("slow") / "slow.jsonl", 3000, 300, seed=1)


def stages(service, job_id):
    meta = Job.fetch(job_id, service.redis, serializer=JOB_SERIALIZER).meta
    ids = [stage.id for stage in Plan.of(meta["plan"]).stages(job_id, meta["request"])]
    return Job.fetch_many(ids, service.redis, serializer=JOB_SERIALIZER)


def wait_for_stage(service, job_id, ready, what):
    """Poll the selection (it must stay queued or running) until `ready(stage jobs)` returns something."""
    deadline = time.monotonic() + WAIT_S
    while True:
        body = service.client.get(f"/v1/selections/{job_id}").json()
        assert body["status"] in ("queued", "running"), body
        found = ready(stages(service, job_id))
        if found:
            return found
        assert time.monotonic() < deadline, f"no {what}: {body}"
        time.sleep(0.05)


def test_a_sharded_selection_equals_one_worker_exactly_and_spreads_over_workers(
    sharded, three_shards, llama_dir, tmp_path
):
    for _ in range(3):
        sharded.start_worker()
    dataset = sharded.upload(three_shards)
    job = sharded.select(dataset_id=dataset["id"], budget={"examples": 20}, max_length=64)
    seen = []
    deadline = time.monotonic() + WAIT_S
    while (body := sharded.client.get(f"/v1/selections/{job['id']}").json())["status"] in ("queued", "running"):
        seen.append(body["progress"])
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
    assert body["status"] == "succeeded", body
    result = body["result"]
    shards = result["shards"]
    assert [(s["start"], s["examples"]) for s in shards] == [(0, 1024), (1024, 1024), (2048, 552)]
    assert len({s["worker"] for s in shards}) > 1, shards
    assert not any(s["cached"] for s in shards) and all(s["attempts"] == 1 for s in shards)
    embedding = [p for p in seen if p and p["phase"] == "embedding"]
    assert embedding and all(p["total"] == 2600 for p in embedding)
    assert [p["done"] for p in embedding] == sorted(p["done"] for p in embedding)
    # one worker, one pass over the file: the same store byte for byte, the same picks, order and objective
    single = embed_dataset(three_shards, llama_dir, tmp_path / "single", max_length=64).features
    (store,) = [p for p in (sharded.settings.data_dir / "features").iterdir()]
    for name in ("features.npy", "offsets.npy", "lengths.npy", "means.npy", "ids.json", "meta.json"):
        assert (store / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    expected = select_features(single, SelectionOptions(budget=Budget(examples=20)))
    assert result["selected"] == expected.selected
    assert result["objective"] == expected.objective and result["gains"] == expected.gains
    # the assembled store is cached: the next selection runs on one worker, no shards
    again = sharded.wait(sharded.select(dataset_id=dataset["id"], budget={"tokens": 300}, max_length=64)["id"])
    assert again["result"]["features_cached"] and again["result"]["shards"] is None


def test_a_shard_whose_worker_is_killed_is_run_again_and_the_selection_succeeds(sharded, slow_shards):
    workers = [sharded.start_worker() for _ in range(3)]
    dataset = sharded.upload(slow_shards)
    job = sharded.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=128)

    def running_shard(jobs):
        return next((j for j in jobs if j.get_status() == JobStatus.STARTED and j.meta.get("progress")), None)

    shard = wait_for_stage(sharded, job["id"], running_shard, "shard running")
    name = shard.worker_name
    pid = next(w.pid for w in Worker.all(connection=sharded.redis) if w.name == name)
    (victim,) = [w for w in workers if w.pid == pid]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = sharded.wait(job["id"])
    assert done["status"] == "succeeded", done
    killed = [s for s in done["result"]["shards"] if s["start"] == shard.kwargs["request"]["start"]]
    assert killed[0]["attempts"] == 2 and killed[0]["worker"] != name
    assert sum(s["attempts"] for s in done["result"]["shards"]) == 4  # only that shard ran twice
    events = Job.fetch(shard.id, sharded.redis, serializer=JOB_SERIALIZER).meta["events"]
    assert any(e["type"] == "retried" for e in events)


def test_cancel_stops_every_shard_and_finished_shards_are_reused(sharded, slow_shards):
    for _ in range(2):
        sharded.start_worker()
    dataset = sharded.upload(slow_shards)
    job = sharded.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=128)

    def one_done_one_running(jobs):
        statuses = [j.get_status() for j in jobs]
        return JobStatus.FINISHED in statuses and JobStatus.STARTED in statuses and statuses

    wait_for_stage(sharded, job["id"], one_done_one_running, "finished shard beside a running one")
    finished = {
        j.kwargs["request"]["start"] for j in stages(sharded, job["id"]) if j.get_status() == JobStatus.FINISHED
    }
    cancelled = sharded.client.post(f"/v1/selections/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled", cancelled
    deadline = time.monotonic() + WAIT_S
    while any(
        j.get_status() in (JobStatus.STARTED, JobStatus.QUEUED, JobStatus.DEFERRED) for j in stages(sharded, job["id"])
    ):
        assert time.monotonic() < deadline, [j.get_status() for j in stages(sharded, job["id"])]
        time.sleep(0.1)
    # every shard ended: stopped (cancelled while queued, or at its next batch: failed, marked cancelled), or
    # finished: those done before the cancel, and a running one whose last batch was already under way
    ended = {j.kwargs["request"]["start"]: j for j in stages(sharded, job["id"])}
    stopped = {s for s, j in ended.items() if j.get_status() == JobStatus.CANCELED or j.meta.get("cancelled")}
    done = {s for s, j in ended.items() if j.get_status() == JobStatus.FINISHED}
    assert stopped and stopped | done == set(ended) and finished <= done, {s: j.get_status() for s, j in ended.items()}
    assert sharded.client.get(f"/v1/selections/{job['id']}").json()["status"] == "cancelled"
    # a new selection of the same dataset embeds only the shards that had not finished
    again = sharded.wait(sharded.select(dataset_id=dataset["id"], budget={"examples": 5}, max_length=128)["id"])
    assert again["status"] == "succeeded", again
    reused = {s["start"] for s in again["result"]["shards"] if s["cached"]}
    assert reused == done


def test_greedi_with_one_partition_equals_centralized_greedy_and_more_partitions_run_in_parallel(sharded, tmp_path):
    for _ in range(3):
        sharded.start_worker()
    path = tmp_path / "f.npz"
    features_npz(path, 600, 12, seed=2)
    dataset = sharded.upload(path)
    budget = {"examples": 15}
    central = sharded.wait(sharded.select(dataset_id=dataset["id"], budget=budget)["id"])["result"]
    one = sharded.wait(sharded.select(dataset_id=dataset["id"], budget=budget, partitions=1)["id"])["result"]
    assert one["selected"] == central["selected"] and one["objective"] == central["objective"]
    assert one["partitions"]["m"] == 1 and one["partitions"]["answer"] == "merge"
    job = sharded.select(dataset_id=dataset["id"], budget=budget, partitions=4)
    four = sharded.wait(job["id"])["result"]
    rounds = four["partitions"]["rounds"]
    assert [r["candidates"] for r in rounds] == [150] * 4 and all(r["picks"] == 15 for r in rounds)
    assert len({r["worker"] for r in rounds}) > 1 and four["partitions"]["union"] == 60
    assert len(four["selected"]) == 15 and four["objective"] >= max(r["objective"] for r in rounds)
    local = select_features(load_features(path), SelectionOptions(budget=Budget(examples=15)))
    assert four["objective"] >= 0.9 * local.objective
    # the random method has no greedy to partition: partitions are refused, naming the field (as the CLI does)
    random_ = {"dataset_id": dataset["id"], "budget": budget, "method": "random", "partitions": 4}
    refused = sharded.client.post("/v1/selections", json=random_)
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "body.partitions"


def test_shards_are_whole_chunks_of_the_embedder(monkeypatch):
    monkeypatch.setenv("FISHERSFT_SHARD_EXAMPLES", "1000")
    with pytest.raises(InputError) as error:
        Settings.from_env()
    assert "FISHERSFT_SHARD_EXAMPLES: Value error, must be a multiple of 1,024" in str(error.value)

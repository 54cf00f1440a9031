"""fishersft.client against a running service (the app over real HTTP, real RQ workers, a tiny Llama), and the
CLI's remote commands that go through it."""

import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn

from app.main import create_app
from fishersft.client import ApiError, Client, ClientError, kind_of
from fishersft.contract.datasets import DatasetRecord
from fishersft.contract.jobs import Finetune, Selection
from fishersft.contract.selection import Budget, SelectionCreate
from fishersft.contract.training import EvalRequest, FinetuneCreate, LoraConfig, TrainingConfig
from fishersft.errors import InputError
from fishersft.service.redis_server import free_port
from fishersft.service.store import ArtifactStore
from tests.conftest import SAMPLE
from tests.service import ROOT, WAIT_S


@pytest.fixture
def served(service):
    """The test service's app on a free port (uvicorn in a thread): what a script or the CLI reaches over HTTP."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service.settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def fishersft(*args: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fishersft.cli", *map(str, args)]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # LoRA training
def test_upload_select_wait_download_and_finetune(service, served, tmp_path):
    service.start_worker()
    with Client(served) as client:
        dataset = client.upload_dataset(SAMPLE)
        assert isinstance(dataset, DatasetRecord) and dataset.n_examples == 200 and dataset.id.startswith("ds_")
        assert [d.id for d in client.list_datasets()] == [dataset.id]
        job = client.create_selection(SelectionCreate(dataset_id=dataset.id, budget=Budget(examples=5), max_length=64))
        assert isinstance(job, Selection) and job.request.model == "tiny"  # the service filled in its default
        seen: list[Selection] = []
        done = client.wait(job, on_progress=seen.append)
        assert done.status == "succeeded" and done.result is not None and len(done.result.selected) == 5
        assert seen[-1] == done and kind_of(done.id) is Selection
        assert done == client.get(Selection, job.id)
        as_served = httpx.get(f"{served}/v1/selections/{job.id}").json()
        assert done.model_dump(mode="json", by_alias=True) == as_served  # nothing lost or added on the way
        ids = client.download(done, tmp_path / "subset.txt")
        assert ids.read_text().split() == [str(i) for i in done.result.selected]

        body = FinetuneCreate(
            selection_id=done.id,
            lora=LoraConfig(target_modules=["q_proj", "v_proj"]),
            training=TrainingConfig(max_steps=2),
            eval=EvalRequest(holdout_fraction=0.1),
        )
        finetune = client.wait(client.create_finetune(body))
        assert isinstance(finetune, Finetune) and finetune.status == "succeeded", finetune.error
        assert finetune.result is not None and finetune.result.steps == 2
        events = client.events(finetune)
        assert events[0].type == "started" and events[-1].type == "succeeded"
        adapter = client.download(finetune, tmp_path / "adapter.tar.gz")
        with tarfile.open(adapter) as archive:
            assert "adapter_config.json" in archive.getnames()
        with pytest.raises(ApiError) as ended:
            client.cancel(finetune)
        assert ended.value.status == 409 and ended.value.code == "already_ended"


def test_a_failed_job_is_returned_by_wait_and_fails_the_cli(service, served, tmp_path):
    """The job fails in the worker: its dataset goes from the store after the CLI requested it, before a worker
    ran (behind the API's back: the API refuses to delete a dataset a queued job uses)."""
    with Client(served) as client:
        dataset = client.upload_dataset(SAMPLE)
        cli = fishersft("select", dataset.id, "--server", served, "--budget", 3, "--max-length", 64, "--wait")
        deadline = time.monotonic() + WAIT_S
        while not (listed := service.client.get("/v1/selections").json()["data"]):
            assert cli.poll() is None, cli.communicate()
            assert time.monotonic() < deadline, "the CLI requested no selection"
            time.sleep(0.1)
        store = ArtifactStore(service.settings.data_dir)
        record = store.dataset(dataset.id)
        assert record is not None
        store.delete_dataset(record)
        service.start_worker()
        stdout, stderr = cli.communicate(timeout=WAIT_S)
        assert cli.returncode == 2, stderr
        job_id = listed[0]["id"]
        assert f"error: {job_id} failed:" in stderr and "(dataset_not_found)" in stderr and not stdout

        failed = client.wait(client.get(Selection, job_id))
        assert failed.status == "failed" and failed.error is not None and failed.error.code == "dataset_not_found"
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(ApiError) as not_ready:
            client.download(failed, out / "subset.txt")
        assert not_ready.value.status == 409 and list(out.iterdir()) == []  # no file, whole or partial

    waited = fishersft("jobs", "wait", job_id, "--server", served)
    _, stderr = waited.communicate(timeout=WAIT_S)
    assert waited.returncode == 2 and "dataset_not_found" in stderr, stderr


def test_an_invalid_request_raises_api_error_naming_the_param(service, served):
    with Client(served) as client:
        dataset = client.upload_dataset(SAMPLE)
        with pytest.raises(ApiError) as unknown_label:
            client.create_selection(SelectionCreate(dataset_id=dataset.id, budget=Budget(examples=3), group_by="nope"))
        error = unknown_label.value
        assert (error.status, error.code, error.param) == (422, "invalid_request", "body.group_by")
        assert error.message == f"the rows of dataset {dataset.id!r} have no string field 'nope'"
        assert str(error).startswith(f"{error.message} (invalid_request, HTTP 422)\n  body.group_by: name a field")
        missing = SelectionCreate(dataset_id="ds_0123456789abcdef0123", budget=Budget(examples=3))
        with pytest.raises(ApiError) as not_found:
            client.create_selection(missing)
        assert (not_found.value.status, not_found.value.code, not_found.value.param) == (
            404,
            "dataset_not_found",
            "body.dataset_id",
        )
        with pytest.raises(ApiError) as no_job:
            client.get(Selection, "sel_nope")
        assert (no_job.value.status, no_job.value.code, no_job.value.param) == (404, "selection_not_found", None)
    with Client(served, token="no-keys-are-configured") as client:  # an open service ignores a key
        assert client.get_dataset(dataset.id) == dataset


EVENT = {"created_at": "2026-01-01T00:00:00Z", "level": "info", "type": "started", "message": "started"}


def a_finetune() -> Finetune:
    now = datetime.now(UTC)
    request = FinetuneCreate(selection_id="sel_x")
    return Finetune(
        id="ft_x",
        status="running",
        created_at=now,
        started_at=now,
        finished_at=None,
        progress=None,
        error=None,
        result=None,
        request=request,
    )


def test_events_read_a_page_and_refuse_what_is_not_one():
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/finetunes/ft_x/events"
        body = {"object": "list", "data": [EVENT], "next_after": None} if request.url.host == "service" else [EVENT]
        return httpx.Response(200, json=body)

    with Client("http://service", transport=httpx.MockTransport(answer)) as client:
        (event,) = client.events(a_finetune())
    assert event.type == "started" and event.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    with Client("http://old", transport=httpx.MockTransport(answer)) as client, pytest.raises(ClientError):
        client.events(a_finetune())


def test_errors_that_are_not_the_service_s_shape():
    def proxy(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/datasets/ds_down":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(502, text="<html>bad gateway</html>")

    with Client("http://service", token="k", transport=httpx.MockTransport(proxy)) as client:
        with pytest.raises(ApiError) as gateway:
            client.get(Finetune, "ft_x")
        assert (gateway.value.status, gateway.value.code, gateway.value.param) == (502, "http_502", None)
        with pytest.raises(ClientError, match="cannot reach the service at http://service"):
            client.get_dataset("ds_down")
    with pytest.raises(InputError, match="not a job id"):
        kind_of("job_1")


def test_the_cli_prints_the_service_s_error(service, served):
    missing = fishersft("jobs", "get", "ft_nope", "--server", served)
    _, stderr = missing.communicate(timeout=WAIT_S)
    assert missing.returncode == 2 and "error: no finetune 'ft_nope' (finetune_not_found, HTTP 404)" in stderr
    listed = fishersft("datasets", "list", "--server", served)
    assert json.loads(listed.communicate(timeout=WAIT_S)[0]) == []

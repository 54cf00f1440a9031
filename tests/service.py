"""Helpers to run the service in tests: the app through TestClient, real RQ workers in subprocesses."""

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.testclient import TestClient
from redis import Redis
from rq import Worker

from fishersft.contract.jobs import kind_of
from fishersft.service.settings import Settings

ROOT = Path(__file__).parents[1]
WAIT_S = 600
"""Deadline for any awaited state: generous, since CI machines are shared and can be many times slower."""


@dataclass
class Service:
    settings: Settings
    client: TestClient
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def redis(self) -> Redis:
        return Redis.from_url(self.settings.redis_url)

    def start_worker(self, *queues: str, log: Path | None = None) -> subprocess.Popen:
        """A worker on `queues` (default: both), once it has registered; its output goes to `log` if given."""
        before = Worker.count(connection=self.redis)
        env = {**os.environ, **self.settings.to_env(), "PYTHONPATH": str(ROOT)}
        with open(log, "ab") if log is not None else contextlib.nullcontext(subprocess.DEVNULL) as output:
            worker = subprocess.Popen(
                [sys.executable, "-m", "workers", *queues], env=env, cwd=ROOT, stdout=output, stderr=output
            )
        self.workers.append(worker)
        deadline = time.monotonic() + WAIT_S
        while Worker.count(connection=self.redis) <= before:
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker did not register"
            time.sleep(0.1)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
        self.workers.clear()

    def upload(self, path: Path, **form: str) -> dict:
        with open(path, "rb") as f:
            response = self.client.post("/v1/datasets", files={"file": (path.name, f)}, data=form)
        assert response.status_code == 201, response.text
        return response.json()

    def select(self, **body) -> dict:
        response = self.client.post("/v1/selections", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    def wait(self, job_id: str, until: tuple[str, ...] = ("succeeded", "failed", "cancelled"), timeout: float = WAIT_S):
        kind = kind_of(job_id)
        assert kind is not None, job_id
        resource = kind.resource
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/v1/{resource}/{job_id}").json()
            if job["status"] in until:
                return job
            assert time.monotonic() < deadline, f"job still {job['status']}: {job}"
            time.sleep(0.1)

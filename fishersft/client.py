"""A small HTTP client for a running fishersft service (the CLI's `datasets`, `jobs` and `select --server`)."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from fishersft.errors import InputError

FINAL = ("succeeded", "failed", "cancelled")
RESOURCES = {"sel": "selections", "ft": "finetunes", "cmp": "comparisons"}
"""Job id prefix to its resource."""


class ServiceError(InputError):
    """The service answered with an error body."""


class ServiceClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def wait_ready(self, timeout: float = 120, alive: Callable[[], bool] = lambda: True) -> None:
        """Wait until GET /readyz answers 200 (Redis reachable, a worker registered); give up after `timeout`
        seconds or as soon as `alive()` (the server process is still running, say) turns false."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not alive() or time.monotonic() > deadline:
                raise ServiceError(f"the service at {self.http.base_url} did not become ready")
            time.sleep(0.2)

    def upload(self, path: Path, name: str | None = None) -> dict[str, Any]:
        with open(path, "rb") as f:
            return self._call("POST", "/v1/datasets", files={"file": (path.name, f)}, data={"name": name or path.name})

    def datasets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/datasets")["data"]

    def create_selection(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.create("selections", body)

    def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/<resource>: a selection, finetune or comparison job."""
        return self._call("POST", f"/v1/{resource}", json=body)

    def job(self, job_id: str) -> dict[str, Any]:
        """Any job by id (its prefix names its resource)."""
        resource = RESOURCES.get(job_id.split("_")[0], "selections")
        return self._call("GET", f"/v1/{resource}/{job_id}")

    def download(self, path: str, out: Path) -> Path:
        """GET a file (an adapter archive, a plot) to `out`."""
        try:
            with self.http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    self._raise(response, "GET", path)
                with open(out, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
        except httpx.HTTPError as e:
            raise ServiceError(f"cannot reach the service at {self.http.base_url}: {e}") from None
        return out

    def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None, poll_s: float = 0.3) -> dict:
        """Poll until the job ends; `on_progress(job)` after each poll."""
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in FINAL:
                return job
            time.sleep(poll_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ServiceError(f"cannot reach the service at {self.http.base_url}: {e}") from None
        if response.is_success:
            return response.json()
        self._raise(response, method, path)

    @staticmethod
    def _raise(response: httpx.Response, method: str, path: str) -> None:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise ServiceError(f"{method} {path}: HTTP {response.status_code}") from None
        details = [d if isinstance(d, str) else ", ".join(f"{k}: {v}" for k, v in d.items()) for d in error["details"]]
        raise ServiceError(f"{error['message']} ({error['code']}, HTTP {response.status_code})", details)

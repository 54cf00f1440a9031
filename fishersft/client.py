"""A typed client of a running fishersft service, used by the CLI's remote commands and by scripts (CI jobs).

It takes and returns the contract's models (fishersft.contract): requests are SelectionCreate, FinetuneCreate and
ComparisonCreate, jobs come back as Selection, Finetune and Comparison, datasets as DatasetRecord. Every error
the service answers is raised as one ApiError carrying the service's error shape."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from fishersft.contract.comparison import ComparisonCreate
from fishersft.contract.datasets import DatasetRecord
from fishersft.contract.errors import ErrorBody, ErrorDetail, ErrorInfo
from fishersft.contract.jobs import JOB_KINDS, Comparison, Event, Finetune, Selection, kind_for
from fishersft.contract.pages import Page
from fishersft.contract.selection import SelectionCreate
from fishersft.contract.training import FinetuneCreate
from fishersft.errors import InputError

AnyJob = Selection | Finetune | Comparison
JobT = TypeVar("JobT", bound=AnyJob)
M = TypeVar("M", bound=BaseModel)
FINAL = ("succeeded", "failed", "cancelled")
POLL_FIRST_S, POLL_GROWTH, POLL_MAX_S = 0.2, 1.5, 5.0
"""`wait` polls after 0.2 s, then 1.5 times later each time, at most every 5 s."""


def kind_of(job_id: str) -> type[AnyJob]:
    """The kind of a job from its id's prefix (`sel_`, `ft_`, `cmp_`); whether such a job exists is the
    service's answer."""
    prefix = job_id.partition("_")[0]
    kind = next((k for k in JOB_KINDS if k.prefix == prefix), None)
    if kind is None:
        prefixes = [f"{k.prefix}_" for k in JOB_KINDS]
        raise InputError(f"{job_id!r} is not a job id: one starts with {', '.join(prefixes[:-1])} or {prefixes[-1]}")
    return cast(type[AnyJob], kind.body)


class ClientError(InputError):
    """The service could not be reached, did not answer as the contract says, or a job outlasted `wait`."""


class ApiError(ClientError):
    """The service answered an error: its HTTP status and its error body (code, message, details)."""

    def __init__(self, status: int, error: ErrorInfo) -> None:
        super().__init__(error.message, [_detail_line(d) for d in error.details])
        self.status, self.code, self.error = status, error.code, error

    def __str__(self) -> str:
        return "\n".join([f"{self.message} ({self.code}, HTTP {self.status})", *(f"  {d}" for d in self.details)])

    @property
    def param(self) -> str | None:
        """The first request field the error names (`body.budget.examples`), if it names one."""
        return next((d.field for d in self.error.details if d.field), None)


def _detail_line(detail: ErrorDetail) -> str:
    where = detail.field if detail.field else f"line {detail.line}" if detail.line else ""
    return f"{where}: {detail.message}" if where else detail.message


EVENTS = TypeAdapter(Page[Event])
"""GET .../events answers a page `{"object": "list", "data": [...]}`, as every list."""


class Client:
    """`Client(base_url, token)`: `token` is an API key, sent as `Authorization: Bearer`. `transport` replaces the
    network (an app in process, a mock). Use it as a context manager, or `close()` it."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

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
                raise ClientError(f"the service at {self.http.base_url} did not become ready")
            time.sleep(0.2)

    # datasets

    def upload_dataset(self, path: Path, name: str | None = None) -> DatasetRecord:
        """Upload a JSONL dataset or a features file (.npz, .safetensors); the same bytes give the same id."""
        with open(path, "rb") as f:
            files = {"file": (path.name, f)}
            response = self._request("POST", "/v1/datasets", files=files, data={"name": name or path.name})
        return self._parse(DatasetRecord, response)

    def list_datasets(self) -> list[DatasetRecord]:
        """Every dataset the caller may use, newest first (all pages)."""
        records: list[DatasetRecord] = []
        after: str | None = None
        while True:
            params = {"limit": 1000, **({"after": after} if after else {})}
            page = self._parse(Page[DatasetRecord], self._request("GET", "/v1/datasets", params=params))
            records += page.data
            if page.next_after is None:
                return records
            after = page.next_after

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        return self._parse(DatasetRecord, self._request("GET", f"/v1/datasets/{dataset_id}"))

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # jobs

    def create_selection(self, body: SelectionCreate, idempotency_key: str | None = None) -> Selection:
        return self._create(Selection, body, idempotency_key)

    def create_finetune(self, body: FinetuneCreate, idempotency_key: str | None = None) -> Finetune:
        return self._create(Finetune, body, idempotency_key)

    def create_comparison(self, body: ComparisonCreate, idempotency_key: str | None = None) -> Comparison:
        return self._create(Comparison, body, idempotency_key)

    def get(self, kind: type[JobT], job_id: str) -> JobT:
        """A job as it is now: `client.get(Selection, "sel_...")` (`kind_of(job_id)` names the kind of an id)."""
        return self._parse(kind, self._request("GET", f"/v1/{kind_for(kind).resource}/{job_id}"))

    def wait(self, job: JobT, timeout: float | None = None, on_progress: Callable[[JobT], None] | None = None) -> JobT:
        """Poll until the job has ended (succeeded, failed or cancelled) and return it as it ended: a failed job is
        returned, not raised. `on_progress(job)` after each read; ClientError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_FIRST_S
        while True:
            job = self.get(type(job), job.id)
            if on_progress is not None:
                on_progress(job)
            if job.status in FINAL:
                return job
            if deadline is not None and time.monotonic() + pause > deadline:
                raise ClientError(f"{job.id} is still {job.status} after {timeout} s")
            time.sleep(pause)
            pause = min(pause * POLL_GROWTH, POLL_MAX_S)

    def events(self, job: AnyJob) -> list[Event]:
        """The job's events, oldest first (started; finetunes: selected, evaluated, step, saved; how it ended; each
        webhook attempt), every page."""
        events: list[Event] = []
        after: str | None = None
        while True:
            params = {"limit": 1000} | ({"after": after} if after is not None else {})
            response = self._request("GET", f"/v1/{kind_for(type(job)).resource}/{job.id}/events", params=params)
            try:
                page = EVENTS.validate_json(response.content)
            except ValidationError as e:
                raise ClientError(f"{response.request.url}: not the events the contract describes: {e}") from None
            events += page.data
            if page.next_after is None:
                return events
            after = page.next_after

    def cancel(self, job: JobT) -> JobT:
        """Cancel a queued job at once, a running one at its next batch, pick or step; ApiError 409 if it ended."""
        return self._parse(type(job), self._request("POST", f"/v1/{kind_for(type(job)).resource}/{job.id}/cancel"))

    def download(self, job: AnyJob, out: Path) -> Path:
        """A succeeded job's artifact to `out`: a selection's ids (one a line), a finetune's adapter (.tar.gz), a
        comparison's plot (PNG). Written beside `out` and renamed into place: `out` is whole or absent."""
        kind = kind_for(type(job))
        path = f"/v1/{kind.resource}/{job.id}/{kind.artifact}"
        partial = out.with_name(out.name + ".part")
        try:
            with self.http.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    raise _api_error(response)
                with open(partial, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
            partial.replace(out)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach the service at {self.http.base_url}: {e}") from None
        finally:
            partial.unlink(missing_ok=True)
        return out

    # plumbing

    def _create(self, kind: type[JobT], body: BaseModel, idempotency_key: str | None) -> JobT:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        json = body.model_dump(mode="json", by_alias=True, exclude_none=True)  # left out: the service's default
        return self._parse(kind, self._request("POST", f"/v1/{kind_for(kind).resource}", json=json, headers=headers))

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach the service at {self.http.base_url}: {e}") from None
        if not response.is_success:
            raise _api_error(response)
        return response

    @staticmethod
    def _parse(model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as e:
            raise ClientError(f"{response.request.url}: not the {model.__name__} the contract describes: {e}") from None


def _api_error(response: httpx.Response) -> ApiError:
    """The service's error body as an ApiError; a body of another shape (a proxy's page) by its status alone."""
    try:
        error = ErrorBody.model_validate_json(response.content).error
    except ValidationError:
        error = ErrorInfo(code=f"http_{response.status_code}", message=response.reason_phrase or "error", details=[])
    return ApiError(response.status_code, error)

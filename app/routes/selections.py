"""/v1/selections: request a selection (a job), read it, its ids, list, cancel."""

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import PlainTextResponse
from redis import Redis

from app import deps
from app.errors import ApiError
from app.jobs import KEEP_S, SelectionJobs
from app.schemas import Page, Selection, SelectionCreate
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

router = APIRouter(prefix="/v1/selections", tags=["selections"])


@router.post("", status_code=202, response_model=Selection, summary="Request a selection")
def create_selection(
    body: SelectionCreate,
    response: Response,
    jobs: Annotated[SelectionJobs, Depends(deps.jobs)],
    store: Annotated[ArtifactStore, Depends(deps.store)],
    settings: Annotated[Settings, Depends(deps.settings)],
    redis: Annotated[Redis, Depends(deps.redis)],
    idempotency_key: Annotated[
        str | None, Header(description="Same key and body: the same job is returned, none is created.")
    ] = None,
) -> Selection:
    """Queues a job that embeds the dataset with the model (features are cached per dataset, model and
    max_length) and selects under the budget. Poll GET /v1/selections/{id}."""
    dataset = store.dataset(body.dataset_id)
    if dataset is None:
        raise ApiError(
            422,
            "invalid_request",
            f"no dataset {body.dataset_id!r}",
            [{"field": "body.dataset_id", "message": "upload it first with POST /v1/datasets"}],
        )
    if dataset["format"] == "jsonl":
        body.model = body.model or settings.default_model
        if body.model not in settings.model_names():
            raise ApiError(
                422,
                "invalid_request",
                f"unknown model {body.model!r}",
                [{"field": "body.model", "message": f"one of: {', '.join(settings.model_names())}"}],
            )
    selection = _idempotent(redis, jobs, idempotency_key, body) if idempotency_key else jobs.create(body)
    response.headers["Location"] = f"/v1/selections/{selection.id}"
    return selection


def _idempotent(redis: Redis, jobs: SelectionJobs, key: str, body: SelectionCreate) -> Selection:
    fingerprint = hashlib.sha256(json.dumps(body.model_dump(by_alias=True), sort_keys=True).encode()).hexdigest()
    redis_key = f"fishersft:idempotency:selections:{key}"
    seen = redis.get(redis_key)
    if seen is None:
        selection = jobs.create(body)
        if redis.set(redis_key, json.dumps([fingerprint, selection.id]), nx=True, ex=KEEP_S):
            return selection
        seen = redis.get(redis_key)  # a concurrent request with the same key won
    first_fingerprint, job_id = json.loads(seen)
    if first_fingerprint != fingerprint:
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
    selection = jobs.get(job_id)
    if selection is None:
        raise ApiError(409, "idempotency_key_reused", "the job created with this Idempotency-Key no longer exists")
    return selection


@router.get("", response_model=Page[Selection], summary="List selections, newest first")
def list_selections(
    jobs: Annotated[SelectionJobs, Depends(deps.jobs)],
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
    after: Annotated[str | None, Query(description="The `next_after` of the previous page.")] = None,
) -> Page[Selection]:
    data, next_after = jobs.list(limit, after)
    return Page(data=data, next_after=next_after)


@router.get("/{selection_id}", response_model=Selection, summary="Read a selection: status, progress, result")
def get_selection(selection_id: str, jobs: Annotated[SelectionJobs, Depends(deps.jobs)]) -> Selection:
    return _found(jobs.get(selection_id), selection_id)


@router.get("/{selection_id}/ids", response_class=PlainTextResponse, summary="The selected ids, one a line")
def get_selection_ids(selection_id: str, jobs: Annotated[SelectionJobs, Depends(deps.jobs)]) -> str:
    """For scripts: `curl .../ids > subset.txt`. 409 until the selection has succeeded."""
    selection = _found(jobs.get(selection_id), selection_id)
    if selection.result is None:
        raise ApiError(409, "not_ready", f"selection {selection_id} is {selection.status}, not succeeded")
    return "".join(f"{i}\n" for i in selection.result.selected)


@router.post("/{selection_id}/cancel", response_model=Selection, summary="Cancel a queued or running selection")
def cancel_selection(selection_id: str, jobs: Annotated[SelectionJobs, Depends(deps.jobs)]) -> Selection:
    """A queued job is cancelled at once; a running one stops at its next batch or pick (status turns
    `cancelled` then). 409 when it has already ended."""
    before = _found(jobs.get(selection_id), selection_id)
    if before.status in ("succeeded", "failed", "cancelled"):
        raise ApiError(409, "already_ended", f"selection {selection_id} has already ended: {before.status}")
    return _found(jobs.cancel(selection_id), selection_id)


def _found(selection: Selection | None, selection_id: str) -> Selection:
    if selection is None:
        raise ApiError(404, "selection_not_found", f"no selection {selection_id!r}")
    return selection

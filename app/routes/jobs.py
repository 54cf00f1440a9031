"""What every job resource shares (selections, finetunes, comparisons): creation with Idempotency-Key and a
Location header, listing, reading, cancelling. Each resource adds its own POST body and checks."""

import hashlib
import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel
from redis import Redis

from app import deps
from app.checks import allowed_webhook
from app.errors import ApiError, documented, shown
from app.jobs import Jobs
from fishersft.contract.jobs import Event, JobBody, JobKind
from fishersft.contract.pages import Page
from fishersft.contract.webhooks import WebhookOptions
from fishersft.service.protocol import KEEP_S, Plan

BUSY_RETRY_AFTER_S = 30
CLAIM_WAIT_S = 30
"""How long a request with an Idempotency-Key waits for the job of a concurrent request with the same key to be
created (a few Redis writes)."""
CLAIM_POLL_S = 0.02

IdempotencyKey = Annotated[
    str | None,
    Header(
        description="Same key and body: the same job is returned, none is created. At most 200 printable ASCII "
        "characters.",
        max_length=200,
        pattern=r"^[!-~]+$",
    ),
]


def create_job(
    jobs: Jobs,
    redis: Redis,
    body: BaseModel,
    idempotency_key: str | None,
    response: Response,
    plan: Plan | None = None,
) -> JobBody:
    """Enqueue `body` (once per Idempotency-Key and body), after the stage jobs of its `plan`, and point Location
    at the job; 422 for a webhook_url the service may not POST to; 429 when the service already holds its limit
    of queued and running jobs."""
    if isinstance(body, WebhookOptions) and body.webhook_url is not None:
        allowed_webhook(jobs.settings, body.webhook_url, "body.webhook_url")
    if jobs.active() >= jobs.settings.max_active_jobs:
        raise ApiError(
            429,
            "too_many_jobs",
            f"{jobs.settings.max_active_jobs:,} jobs are queued or running, the service's limit; retry later",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
        )
    job = _idempotent(redis, jobs, idempotency_key, body, plan) if idempotency_key else jobs.create(body, plan)
    response.headers["Location"] = f"/v1/{jobs.kind.resource}/{job.id}"
    return job


def _idempotent(redis: Redis, jobs: Jobs, key: str, body: BaseModel, plan: Plan | None) -> JobBody:
    """The job of this Idempotency-Key: the key is claimed (SET NX) for a job id before that job is created, so
    however many requests race, one creates the job and the others answer it once it exists."""
    fingerprint = hashlib.sha256(json.dumps(body.model_dump(by_alias=True), sort_keys=True).encode()).hexdigest()
    redis_key = f"fishersft:idempotency:{jobs.kind.resource}:{jobs.caller.owner or ''}:{key}"  # keys are per caller
    job_id = jobs.new_id()
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        # a claim whose request died before creating its job expires after CLAIM_WAIT_S; a created job's lasts
        if redis.set(redis_key, json.dumps([fingerprint, job_id]), nx=True, ex=CLAIM_WAIT_S):
            try:
                job = jobs.create(body, plan, job_id)
            except BaseException:
                redis.delete(redis_key)
                raise
            redis.expire(redis_key, KEEP_S)
            return job
        seen = redis.get(redis_key)
        if seen is None:  # the claim was just released or expired: claim it
            continue
        first_fingerprint, first_id = json.loads(seen)
        if first_fingerprint != fingerprint:
            raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with a different body")
        # read whether the job was created before looking it up: the other way round, a job created between the
        # two reads would look gone
        created = redis.ttl(redis_key) > CLAIM_WAIT_S  # its expiry was set to KEEP_S once the job existed
        existing = jobs.get(first_id)
        if existing is not None:
            return existing
        if created or time.monotonic() > deadline:
            raise ApiError(409, "idempotency_key_reused", "the job created with this Idempotency-Key no longer exists")
        time.sleep(CLAIM_POLL_S)  # the request that claimed the key is creating its job


def found(job: JobBody | None, kind: JobKind, job_id: str) -> JobBody:
    if job is None:
        singular = kind.resource.removesuffix("s")
        raise ApiError(404, f"{singular}_not_found", f"no {singular} {shown(job_id)}")
    return job


def job_router(kind: JobKind) -> APIRouter:
    """GET list, GET one and POST cancel for one kind of job."""
    router = APIRouter(prefix=f"/v1/{kind.resource}", tags=[kind.resource])
    singular = kind.resource.removesuffix("s")
    KindJobs = Annotated[Jobs, Depends(deps.jobs(kind))]

    page = Page[kind.body]  # type: ignore[name-defined]  # a response model made per job kind, at run time

    @router.get("", response_model=page, summary=f"List {kind.resource}, newest first")
    def list_jobs(
        jobs: KindJobs,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
        after: Annotated[str | None, Query(description="The `next_after` of the previous page.")] = None,
    ) -> Page:
        data, next_after = jobs.list(limit, after)
        return Page(data=data, next_after=next_after)

    @router.get(
        "/{job_id}",
        response_model=kind.body,
        summary=f"Read a {singular}: status, progress, result",
        responses=documented(404),
    )
    def get_job(job_id: str, jobs: KindJobs) -> JobBody:
        return found(jobs.get(job_id), kind, job_id)

    @router.get(
        "/{job_id}/events",
        response_model=Page[Event],
        summary=f"A {singular}'s events, oldest first",
        responses=documented(404),
    )
    def get_events(
        job_id: str,
        jobs: KindJobs,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
        after: Annotated[
            str | None,
            Query(
                description="The `next_after` of the previous page: the number of the job's events read so far "
                "(a poller may pass the count it has read, to get only newer ones).",
                pattern=r"^[0-9]{1,9}$",
            ),
        ] = None,
    ) -> Page[Event]:
        """started, then what the job reports on its way (finetunes: selected, evaluated, step with the sampled
        training loss, saved), succeeded / failed / cancelled, and each webhook attempt (webhook.delivered,
        webhook.failed with the status code). Paged like every list; a job keeps its last 1,000 events."""
        found(jobs.get(job_id), kind, job_id)
        events, dropped = jobs.events(job_id) or ([], 0)
        start = max(0, int(after or 0) - dropped)
        page = events[start : start + limit]
        more = start + limit < len(events)
        return Page(data=page, next_after=str(dropped + start + len(page)) if more else None)

    @router.post(
        "/{job_id}/cancel",
        response_model=kind.body,
        summary=f"Cancel a queued or running {singular}",
        responses=documented(404, 409),
    )
    def cancel_job(job_id: str, jobs: KindJobs) -> JobBody:
        """A queued job is cancelled at once; a running one stops at its next batch, pick or step (status turns
        `cancelled` then). 409 when it has already ended."""
        before = found(jobs.get(job_id), kind, job_id)
        if before.status in ("succeeded", "failed", "cancelled"):
            raise ApiError(409, "already_ended", f"{singular} {job_id} has already ended: {before.status}")
        return found(jobs.cancel(job_id), kind, job_id)

    return router

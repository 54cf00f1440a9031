"""Jobs on RQ (selections, finetunes, comparisons): enqueue, read back as the API's job body, cancel, list.

RQ's statuses map to the API's: queued (also deferred, scheduled), running (started), succeeded (finished),
failed, cancelled (canceled, stopped, or failed after a cancellation request). Reading never writes: a job
whose worker was lost is queued again, then failed (`worker_lost`), by the monitor (fishersft.service.monitor).

A selection spread over workers (protocol.Plan) waits, deferred in RQ, for its stage jobs (shards, GreeDi
partitions): it reads as running once one started, with their progress summed, and as failed with the first
stage's error once one failed (the monitor then fails it and stops the others); cancelling it cancels them all.
"""

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from app.caller import OPEN, Caller
from fishersft.contract.comparison import ComparisonResult
from fishersft.contract.jobs import Comparison, Event, Finetune, JobBody, JobError, Progress, Selection
from fishersft.contract.jobs import JobStatus as State
from fishersft.contract.selection import SelectionResult
from fishersft.contract.training import FinetuneResult
from fishersft.service.monitor import failed_stage, job_error, stage_jobs, stop
from fishersft.service.protocol import (
    ID_HEX,
    JOB_SERIALIZER,
    KEEP_S,
    RUN_COMPARISON,
    RUN_FEATURES,
    RUN_FINETUNE,
    RUN_PARTITION,
    RUN_SELECTION,
    RUN_SHARD,
    Plan,
    Stage,
    is_id,
)
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

STATUS: dict[JobStatus, State] = {
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.CREATED: "queued",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "cancelled",
    JobStatus.CANCELED: "cancelled",
}


@dataclass(frozen=True)
class JobKind:
    resource: str
    """URL segment and Redis namespace: selections, finetunes, comparisons."""
    prefix: str
    """Of job ids: sel_, ft_, cmp_."""
    function: str
    """The worker function RQ runs."""
    body: type[JobBody]
    result: type[BaseModel]
    training: bool
    """Goes to the training queue (GPU workers) rather than the selection queue."""

    @property
    def index(self) -> str:
        """Sorted set of the kind's job ids, scored by creation time: the list endpoint's order and cursor."""
        return f"fishersft:{self.resource}"


SELECTIONS = JobKind("selections", "sel", RUN_SELECTION, Selection, SelectionResult, False)
FINETUNES = JobKind("finetunes", "ft", RUN_FINETUNE, Finetune, FinetuneResult, True)
COMPARISONS = JobKind("comparisons", "cmp", RUN_COMPARISON, Comparison, ComparisonResult, True)


class Jobs:
    """The jobs of one kind that `caller` may see (its own; all for an admin or an open service)."""

    def __init__(
        self, kind: JobKind, redis: Redis, settings: Settings, store: ArtifactStore, caller: Caller = OPEN
    ) -> None:
        self.kind, self.redis, self.settings, self.store, self.caller = kind, redis, settings, store, caller
        name = settings.training_queue if kind.training else settings.queue
        self.queue = Queue(name, connection=redis, serializer=JOB_SERIALIZER)

    def active(self) -> int:
        """Queued and running jobs on both queues (all kinds)."""
        names = (self.settings.queue, self.settings.training_queue)
        queues = [Queue(n, connection=self.redis, serializer=JOB_SERIALIZER) for n in names]
        return sum(q.count + StartedJobRegistry(queue=q).count for q in queues)

    def create(self, request: BaseModel, plan: Plan | None = None) -> JobBody:
        """Enqueue a job, after the stage jobs of its `plan` (see protocol.Plan) that it waits for."""
        job_id = f"{self.kind.prefix}_{uuid.uuid4().hex[:ID_HEX]}"
        payload = request.model_dump(by_alias=True)
        lasting = {"job_timeout": self.settings.job_timeout_s, "result_ttl": KEEP_S, "failure_ttl": KEEP_S}
        meta: dict[str, Any] = {"request": payload, "owner": self.caller.owner}
        kwargs: dict[str, Any] = {"request": payload}
        if plan is not None and plan != Plan():
            for stage in plan.stages(job_id, payload):
                self.queue.enqueue(
                    stage.function,
                    kwargs=stage.kwargs,
                    job_id=stage.id,
                    depends_on=list(stage.after) or None,
                    meta={"owner": self.caller.owner, "stage_of": job_id},
                    **lasting,
                )
            meta["plan"] = kwargs["plan"] = plan.as_dict()
        job = self.queue.enqueue(
            self.kind.function,
            kwargs=kwargs,
            job_id=job_id,
            depends_on=(plan.waits_for(job_id) if plan else None) or None,
            meta=meta,
            **lasting,
        )
        now = time.time()
        self.redis.zadd(self.kind.index, {job_id: now})
        if self.caller.owner is not None:
            self.redis.zadd(self._owner_index(self.caller.owner), {job_id: now})
        return self.view(job)

    def get(self, job_id: str) -> JobBody | None:
        job = self._fetch(job_id)
        if job is not None:
            return self.view(job)
        return self._from_store(job_id) if is_id(job_id, self.kind.prefix) else None

    def _fetch(self, job_id: str) -> Job | None:
        """The job in Redis, if it exists and the caller may see it."""
        if not is_id(job_id, self.kind.prefix):
            return None
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=JOB_SERIALIZER)
        except NoSuchJobError:
            return None
        owner = job.meta.get("owner")
        return job if self.caller.sees({owner} if isinstance(owner, str) else set()) else None

    def _owner_index(self, owner: str) -> str:
        return f"{self.kind.index}:owner:{owner}"

    def view(self, job: Job) -> JobBody:
        """The API body of a job as last read from Redis (status, timestamps and meta are read together). A job
        waiting for its stage jobs reads as running once one started, with their progress summed, and as failed
        once one failed. It writes nothing."""
        status = job.get_status(refresh=False)
        meta = job.meta
        progress, started_at, error = meta.get("progress"), job.started_at, None
        if status in (JobStatus.DEFERRED, JobStatus.QUEUED) and "plan" in meta:  # queued: its stages are done
            status, progress, started_at, error = self._waiting(job, Plan.of(meta["plan"]))
        state: State = (
            "cancelled" if status == JobStatus.FAILED and meta.get("cancelled") else STATUS.get(status, "queued")
        )
        result = self.store.result(job.id) if state == "succeeded" else None
        progress = progress if state in ("running", "succeeded") else None
        return self.kind.body(
            id=job.id,
            status=state,
            created_at=_utc(job.created_at),
            started_at=_utc(started_at),
            finished_at=_utc(job.ended_at),
            progress=Progress(**progress) if progress else None,
            error=(error or job_error(job)) if state == "failed" else None,
            result=self.kind.result.model_validate(result.result) if result else None,
            request=meta["request"],
            attempts=meta.get("attempts", 1),
        )

    def events(self, job_id: str) -> list[Event] | None:
        """The job's events, oldest first: from its saved result once it succeeded, else from Redis; None when the
        caller may not see the job or it does not exist."""
        saved = self.store.result(job_id) if is_id(job_id, self.kind.prefix) else None
        if saved is not None:
            return saved.events if self.caller.sees({saved.owner}) else None
        job = self._fetch(job_id)
        return [Event(**e) for e in job.meta.get("events", [])] if job else None

    def cancel(self, job_id: str) -> JobBody | None:
        """Cancel a queued job now and ask a running one to stop at its next batch or pick; the same for every
        stage job it waits for."""
        job = self._fetch(job_id)
        if job is None:
            return self.get(job_id)
        stages = stage_jobs(job) if "plan" in job.meta else []
        for each in [job, *(stage for _, stage in stages if stage is not None)]:
            stop(self.redis, each)
        return self.get(job_id)

    def _waiting(
        self, job: Job, plan: Plan
    ) -> tuple[JobStatus, dict[str, Any] | None, datetime | None, JobError | None]:
        """A job waiting for its stages (or, once they are done, for a worker), and its error: failed once one
        failed (the monitor fails the job itself and stops the others), running once one started (progress: the
        shards' examples embedded, then the features job's, then the partitions' budget spent, summed), else
        still queued."""
        found = [(stage, each) for stage, each in stage_jobs(job) if each is not None]
        failed = failed_stage(found)
        if failed is not None:
            error = job_error(failed[1])
            return (
                JobStatus.FAILED,
                None,
                None,
                JobError(code=error.code, message=f"{failed[0].name}: {error.message}"),
            )
        stages = [(stage, each, each.get_status(refresh=False)) for stage, each in found]
        started = [at for _, each, _ in stages if (at := _utc(each.started_at)) is not None]
        if not started:
            return job.get_status(refresh=False), None, None, None
        return JobStatus.STARTED, _stage_progress(plan, stages), min(started), None

    def list(self, limit: int, after: str | None) -> tuple[list[JobBody], str | None]:
        owner = self.caller.owner
        index = self._owner_index(owner) if owner is not None and not self.caller.admin else self.kind.index
        top = "+inf"
        if after is not None:
            score = self.redis.zscore(index, after)
            top = f"({score}" if score is not None else "-inf"
        found = self.redis.zrevrangebyscore(index, top, "-inf", start=0, num=limit + 1)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in found]
        page = [s for s in (self.get(i) for i in ids[:limit]) if s is not None]
        return page, ids[limit - 1] if len(ids) > limit else None

    def _from_store(self, job_id: str) -> JobBody | None:
        """A job Redis no longer knows (expired or lost), from its saved result."""
        saved = self.store.result(job_id)
        if saved is None or not self.caller.sees({saved.owner}):
            return None
        return self.kind.body(
            id=job_id,
            status="succeeded",
            created_at=saved.created_at,
            started_at=saved.started_at,
            finished_at=saved.finished_at,
            progress=None,
            error=None,
            result=self.kind.result.model_validate(saved.result),
            request=saved.request,
            attempts=saved.attempts,
        )


def _stage_progress(plan: Plan, stages: list[tuple[Stage, Job, JobStatus]]) -> dict[str, Any] | None:
    """Progress of the first group of stages not yet done: shards (examples embedded), the features job, then
    the partitions (budget spent in each, summed)."""
    groups = [[s for s in stages if s[0].function == function] for function in (RUN_SHARD, RUN_FEATURES, RUN_PARTITION)]
    current = next((g for g in groups if g and any(status != JobStatus.FINISHED for _, _, status in g)), None)
    if current is None:
        return None
    if current[0][0].function == RUN_SHARD:
        done = 0
        for stage, each, status in current:
            start, stop = stage.kwargs["request"]["start"], stage.kwargs["request"]["stop"]
            reported = (each.meta.get("progress") or {}).get("done", 0) if status == JobStatus.STARTED else 0
            done += stop - start if status == JobStatus.FINISHED else reported
        return {"phase": "embedding", "done": done, "total": plan.shards[-1][1]}
    reports = [each.meta.get("progress") for _, each, _ in current]
    known = [r for r in reports if r]
    if not known:
        return None
    if len(current) == 1:
        return known[0]
    return {"phase": "selecting", "done": sum(r["done"] for r in known), "total": known[0]["total"] * len(current)}


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)

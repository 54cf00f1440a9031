"""Jobs on RQ (selections, finetunes, comparisons): enqueue, read back as the API's job body (the shared
fishersft.service.job_body: statuses, stages), cancel, list. Reading never writes: a job whose worker was lost is
queued again, then failed (`worker_lost`), by the monitor (fishersft.service.monitor). Cancelling a selection
that waits for its stage jobs cancels them all.
"""

import time
import uuid
from typing import Any, cast

from pydantic import BaseModel
from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from app.caller import OPEN, Caller
from fishersft.contract.jobs import ID_HEX, Event, JobBody, JobKind, is_id
from fishersft.service.events import DROPPED
from fishersft.service.job_body import job_body
from fishersft.service.monitor import QUEUED, stage_jobs, stop
from fishersft.service.protocol import JOB_SERIALIZER, KEEP_S, Plan
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore


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

    def new_id(self) -> str:
        return f"{self.kind.prefix}_{uuid.uuid4().hex[:ID_HEX]}"

    def create(self, request: BaseModel, plan: Plan | None = None, job_id: str | None = None) -> JobBody:
        """Enqueue a job (with `job_id`, else a new one), after the stage jobs of its `plan` (see protocol.Plan)
        that it waits for."""
        job_id = job_id or self.new_id()
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
        for dataset_id in self._datasets_used(payload):  # before the job exists: a delete never misses it
            self.redis.sadd(dataset_jobs_key(dataset_id), job_id)
            self.redis.expire(dataset_jobs_key(dataset_id), KEEP_S)
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

    def _datasets_used(self, payload: dict[str, Any]) -> set[str]:
        """The datasets a request names, and those of the selections it names (a finetune of a selection trains
        on the selection's dataset)."""
        used = ids_named(payload, "ds")
        for selection_id in ids_named(payload, "sel"):
            saved = self.store.result(selection_id)
            try:
                job = Job.fetch(selection_id, connection=self.redis, serializer=JOB_SERIALIZER)
                used |= ids_named(job.meta.get("request"), "ds")
            except NoSuchJobError:
                pass
            if saved is not None:
                used |= ids_named(saved.request, "ds")
        return used

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
        """The API body of a job as last read from Redis (fishersft.service.job_body); it writes nothing."""
        return job_body(self.kind, job, self.store)

    def events(self, job_id: str) -> tuple[list[Event], int] | None:
        """The job's events, oldest first, and how many older ones were dropped: from its saved result once it
        succeeded, else from Redis; None when the caller may not see the job or it does not exist."""
        saved = self.store.result(job_id) if is_id(job_id, self.kind.prefix) else None
        if saved is not None:
            return (saved.events, saved.events_dropped) if self.caller.sees({saved.owner}) else None
        job = self._fetch(job_id)
        return ([Event(**e) for e in job.meta.get("events", [])], job.meta.get(DROPPED, 0)) if job else None

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


def dataset_jobs_key(dataset_id: str) -> str:
    """Set of the ids of the jobs whose request names the dataset."""
    return f"fishersft:dataset-jobs:{dataset_id}"


def ids_named(value: object, prefix: str) -> set[str]:
    """The ids with `prefix` (`ds`, `sel`) a request names, in any field (dataset_id, target_dataset_id,
    eval.dataset_id, selection_id, ...)."""
    if isinstance(value, str):
        return {value} if is_id(value, prefix) else set()
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*(ids_named(v, prefix) for v in value))
    return set()


def jobs_using(redis: Redis, dataset_id: str, caller: Caller) -> list[str]:
    """The queued or running jobs the caller may see whose request names the dataset (ended ones are forgotten on
    the way). Another key's job never shows: that key holds the dataset too, so deleting does not remove it."""
    key = dataset_jobs_key(dataset_id)
    ids = sorted(i.decode() for i in cast(set[bytes], redis.smembers(key)))
    using = []
    for job_id, job in zip(ids, Job.fetch_many(ids, connection=redis, serializer=JOB_SERIALIZER), strict=True):
        if job is None or job.get_status(refresh=False) not in (*QUEUED, JobStatus.STARTED):
            redis.srem(key, job_id)
        elif caller.sees({owner} if isinstance(owner := job.meta.get("owner"), str) else set()):
            using.append(job_id)
    return using

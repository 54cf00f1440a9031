"""The life of a job in a worker, whatever its kind: validate its request into the contract's model, keep an
alive key fresh, report progress and events in job meta, stop when cancellation is asked, turn input errors into
readable failures, and save the result (with the job's times and events) to the artifact store.

Workers are non-forking (see workers.__main__), so a model loaded by one job is reused by the next, and CUDA is
never touched before a fork.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel
from redis import Redis
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from fishersft.contract.jobs import Event, JobError, SavedJob
from fishersft.errors import InputError
from fishersft.service import metrics
from fishersft.service.events import DROPPED, append_event, new_event
from fishersft.service.protocol import JOB_SERIALIZER, JobCancelled, JobInputError, alive_key, cancel_key
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from workers.feature_cache import FeatureCache

PROGRESS_INTERVAL_S = 0.5


class JobProgress:
    """The pipeline's progress callback for a job: progress into job meta (at most every 0.5 s and at every
    phase change), events, and a stop at the next batch, pick or step once the API asked for cancellation."""

    def __init__(self, job: Job, kind: str) -> None:
        self.job, self.kind = job, kind
        self.saved_at = self.phase_started = 0.0
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.job.connection.exists(cancel_key(self.job.id)):
            raise JobCancelled("cancelled on request")
        now = time.monotonic()
        if phase != self.phase:
            self.finish_phase()
            self.phase_started = now
        if phase != self.phase or done == total or now - self.saved_at >= PROGRESS_INTERVAL_S:
            self.job.meta["progress"] = {"phase": phase, "done": done, "total": total}
            self.job.save_meta()
            self.phase, self.saved_at = phase, now

    def finish_phase(self) -> None:
        """Time the phase the job was in (fishersft_phase_duration_seconds), if any."""
        if self.phase:
            seconds = time.monotonic() - self.phase_started
            metrics.observe(self.job.connection, metrics.PHASE_DURATION, (self.kind, self.phase), seconds)

    def event(self, type_: str, message: str, level: str = "info", **data: Any) -> None:
        """Append an event (GET .../events) and save it with the job's meta."""
        append_event(self.job, new_event(type_, message, level, **data))

    @property
    def events(self) -> list[Event]:
        """The job's events, an earlier attempt's too."""
        return [Event.model_validate(e) for e in self.job.meta.get("events", [])]


@dataclass
class JobContext:
    """What a job's work is given besides its request."""

    job: Job
    settings: Settings
    store: ArtifactStore
    progress: JobProgress
    features: FeatureCache


Request = TypeVar("Request", bound=BaseModel)
Work = Callable[[Request, JobContext], BaseModel]


def run_job(work: Work[Request], model: type[Request], request: dict[str, Any], save: bool = True) -> dict[str, Any]:
    """Run `work(request as a `model`, context)` as the current RQ job; its result as JSON, also saved to the
    artifact store with `save` (a stage job's result stays in RQ for the job that waits for it)."""
    job = get_current_job()
    assert job is not None, "run_job runs inside an RQ job"
    settings = Settings.from_env()
    store = ArtifactStore(settings.data_dir)
    kind, started = metrics.job_kind(job.func_name), time.monotonic()
    progress = JobProgress(job, kind)
    context = JobContext(job, settings, store, progress, FeatureCache(store, settings, job.connection))

    def ended(status: str) -> None:
        progress.finish_phase()
        metrics.job_ended(job.connection, job.id, kind, status, time.monotonic() - started)

    with _alive(job.connection, job.id, settings.alive_ttl_s):
        progress.event("started", f"started on {job.worker_name or 'a worker'}")
        try:
            result = work(model.model_validate(request), context).model_dump(mode="json", by_alias=True)
        except JobCancelled:
            job.meta["cancelled"] = True
            progress.event("cancelled", "cancelled on request")
            ended("cancelled")
            raise
        except (InputError, JobInputError) as e:
            job.meta["error"] = {"code": getattr(e, "code", "invalid_input"), "message": str(e)}
            progress.event("failed", str(e), level="error")
            ended("failed")
            raise
        except Exception as e:  # a bug, or the job's timeout: RQ fails it, its traceback goes to the worker's log
            job.meta["error"] = internal_error(e, settings.job_timeout_s).model_dump()
            progress.event("failed", job.meta["error"]["message"], level="error")
            ended("failed")
            raise
    progress.event("succeeded", "succeeded")
    if save:
        now = datetime.now(UTC)
        saved = SavedJob(
            request=request,
            result=result,
            created_at=job.created_at or now,
            started_at=job.started_at or now,
            finished_at=now,
            events=progress.events,
            events_dropped=job.meta.get(DROPPED, 0),
            owner=job.meta.get("owner"),
            attempts=job.meta.get("attempts", 1),
        )
        store.put_result(job.id, saved)
    ended("succeeded")
    return result


def internal_error(e: Exception, timeout_s: int) -> JobError:
    """What a client is told of an unexpected exception: its kind, never its message (which may name server paths
    or internals; the worker's log has the traceback)."""
    if isinstance(e, JobTimeoutException):
        return JobError(code="timed_out", message=f"the job ran longer than the service's job timeout, {timeout_s} s")
    return JobError(code="internal_error", message=f"the job failed on an internal error ({type(e).__name__})")


Result = TypeVar("Result", bound=BaseModel)


def stage_results(ids: list[str], job: Job, model: type[Result]) -> list[tuple[Result, int]]:
    """The results of stage jobs this job waited for (RQ keeps them) as `model`s, each with its attempts."""
    stages = Job.fetch_many(ids, job.connection, serializer=JOB_SERIALIZER)
    found = [stage for stage in stages if stage is not None]
    if len(found) != len(ids):
        raise JobInputError("stage_lost", "a stage job of this selection expired before it was read")
    return [(model.model_validate(stage.return_value()), stage.meta.get("attempts", 1)) for stage in found]


@contextmanager
def _alive(redis: Redis, job_id: str, ttl: int) -> Iterator[None]:
    """Keep the job's alive key fresh from a thread while the job runs: if the worker dies, the key expires."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            redis.set(alive_key(job_id), 1, ex=ttl)
            if stop.wait(ttl / 4):
                break

    thread = threading.Thread(target=beat, daemon=True)
    redis.set(alive_key(job_id), 1, ex=ttl)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        # the key is left to expire: RQ marks the job finished only after this returns, and the monitor seeing
        # it still started without its key would take the worker for lost and run the job again

"""The monitor: settles jobs whose worker was lost, and selections whose stage job failed, with nobody reading
them. Reading a job (app.jobs) never writes; this is the only place that does so for jobs a worker left behind.

Every few seconds (a quarter of FISHERSFT_ALIVE_TTL_S, at least 0.5 s) it scans the started registries of both
queues: a running job whose worker stopped refreshing its alive key is queued again once (attempts 2, a
`retried` event), then failed with `worker_lost`. It scans the deferred selections with a plan (protocol.Plan):
one whose stage job failed (not on request) is failed with `<stage name>: <message>` and its other stages are
stopped. A lost job is thus settled within FISHERSFT_ALIVE_TTL_S plus a few seconds. A job it fails (and one
`stop` cancels while queued) gets its webhook (fishersft.service.webhooks), and each pass queues the webhook
deliveries due to be tried again.

Where it runs: in every worker process and in the API process, as a daemon thread (`Monitor.start`). Workers
exist whenever jobs can run, so one is running while the API is down; the API's covers the moment the last
worker dies (nothing else would notice its job) and is what clients read. Only one acts at a time: the one that
holds `fishersft:monitor` in Redis (SET NX with an expiry it renews each pass; when its process dies the key
expires within FISHERSFT_ALIVE_TTL_S, about when the dead worker's alive keys do, and another takes over).

What RQ offers, and why it is not enough here (rq 3.0):
- `StartedJobRegistry.cleanup` (run by `clean_registries`, by `registry.count` and by a worker's maintenance
  every 10 minutes, under `Queue.acquire_maintenance_lock`) retries or fails "abandoned" jobs, those whose
  execution entry expired. A forking Worker refreshes that entry while its work horse runs; our SimpleWorker
  runs the job in its own main thread and sets the entry once, to the job timeout plus 60 s (a day by
  default), so RQ would notice a killed worker a day late. Shortening it would let every `count` anywhere
  retry or fail our jobs RQ's way, without attempts, events or the `worker_lost` code.
- `Retry(max=1)` (`job.retries_left`) is what that cleanup retries with, but the worker also spends it on a job
  that raised, so an input error would run twice.
- Worker heartbeats: a busy SimpleWorker does not beat (its main thread runs the job), so they say nothing
  about a running job.
So the worker's alive key (workers.jobs, TTL FISHERSFT_ALIVE_TTL_S) stays the sign of life of a running job.
Of RQ we use the registries (started, deferred, failed), `remove_executions`, `enqueue_job` to queue a job
again and `Job.cancel` to stop queued stages; RQ's own `clean_registries` keeps running in the workers as is.
"""

import contextlib
import logging
import threading
import uuid
from datetime import UTC, datetime

from redis import Redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry, FailedJobRegistry, StartedJobRegistry

from fishersft.contract.jobs import JobError
from fishersft.service import metrics
from fishersft.service.events import append_event, new_event
from fishersft.service.protocol import JOB_SERIALIZER, KEEP_S, WORKER_TTL_S, Plan, Stage, alive_key, cancel_key
from fishersft.service.settings import Settings
from fishersft.service.webhooks import enqueue_due, notify

MAX_ATTEMPTS = 2
"""A job whose worker is lost is run again once, then failed (`worker_lost`)."""
LOCK_KEY = "fishersft:monitor"
"""Held (with an expiry) by the one monitor that acts."""
QUEUED = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED)
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

log = logging.getLogger(__name__)


class Monitor:
    """A daemon thread that settles lost jobs and failed stages (`settle`) every `interval` seconds, while it
    holds the monitor lock."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self.interval = max(0.5, settings.alive_ttl_s / 4)
        self.lock_ms = int(1000 * max(settings.alive_ttl_s, 3 * self.interval))
        self.token = uuid.uuid4().hex
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> "Monitor":
        self.thread = threading.Thread(target=self._run, name="fishersft-monitor", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and hand the lock over at once."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        with contextlib.suppress(Exception):  # Redis gone: the key expires by itself
            self.redis.eval(_RELEASE, 1, LOCK_KEY, self.token)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.lead():
                    settle(self.redis, self.settings)
            except Exception:  # Redis away for a moment, a job record half written: try again next pass
                log.exception("the job monitor's pass failed")
            self.stopping.wait(self.interval)

    def lead(self) -> bool:
        """Take the monitor lock, or renew it when this monitor holds it; whether it does."""
        if self.redis.set(LOCK_KEY, self.token, nx=True, px=self.lock_ms):
            return True
        return bool(self.redis.eval(_RENEW, 1, LOCK_KEY, self.token, self.lock_ms))


def settle(redis: Redis, settings: Settings) -> None:
    """One pass: queue again (or fail) running jobs whose worker was lost, fail the selections waiting for a
    stage job that failed, then queue the webhook deliveries due to be tried again."""
    queues = [
        Queue(name, connection=redis, serializer=JOB_SERIALIZER) for name in (settings.queue, settings.training_queue)
    ]
    for queue in queues:
        for job in _fetch(redis, StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)):
            settle_lost(redis, job, settings.alive_ttl_s)
    for queue in queues:
        for job in _fetch(redis, DeferredJobRegistry(queue=queue).get_job_ids(cleanup=False)):
            if "plan" in job.meta and job.get_status(refresh=False) in QUEUED:
                settle_stages(redis, job)
    enqueue_due(redis)


def settle_lost(redis: Redis, job: Job, alive_ttl_s: float) -> None:
    """Queue the job again, or fail it (`worker_lost`) after MAX_ATTEMPTS, when its worker was lost."""
    if job.get_status(refresh=False) != JobStatus.STARTED or not worker_lost(redis, job, alive_ttl_s):
        return
    if job.meta.get("attempts", 1) < MAX_ATTEMPTS:
        _retry(redis, job)
    else:
        message = f"the worker running this job stopped (killed or crashed) before it ended, {MAX_ATTEMPTS} times"
        _fail(redis, job, "worker_lost", message)


def settle_stages(redis: Redis, job: Job) -> None:
    """Fail a selection waiting for its stages once one failed (`<stage name>: <message>`), stopping the rest."""
    stages = [(stage, each) for stage, each in stage_jobs(job) if each is not None]
    failed = failed_stage(stages)
    if failed is None:
        return
    stage, each = failed
    for _, other in stages:
        stop(redis, other)
    error = job_error(each)
    _fail(redis, job, error.code, f"{stage.name}: {error.message}")


def live_workers(redis: Redis) -> int:
    """Workers alive: idle ones with a fresh heartbeat, busy ones whose job is alive. The registrations of dead
    ones (killed, say) are removed on the way."""
    now = datetime.now(UTC)
    alive = 0
    for worker in Worker.all(connection=redis, serializer=JOB_SERIALIZER):
        job_id = worker.get_current_job_id()
        beat = worker.last_heartbeat
        fresh = beat is not None and (now - beat.replace(tzinfo=beat.tzinfo or UTC)).total_seconds() < WORKER_TTL_S
        if (job_id is not None and redis.exists(alive_key(job_id))) or (job_id is None and fresh):
            alive += 1
        elif not fresh:
            worker.register_death()
    return alive


def worker_lost(redis: Redis, job: Job, alive_ttl_s: float) -> bool:
    """No alive key, and started longer ago than its TTL (a job just started may not have set it yet)."""
    started = job.started_at
    if started is None:
        return False
    started = started if started.tzinfo else started.replace(tzinfo=UTC)
    if (datetime.now(UTC) - started).total_seconds() < alive_ttl_s:
        return False
    return not redis.exists(alive_key(job.id))


def stage_jobs(job: Job) -> list[tuple[Stage, Job | None]]:
    """The stage jobs of a selection with a plan, each beside its Stage (None: no longer in Redis)."""
    stages = Plan.of(job.meta["plan"]).stages(job.id, job.meta["request"])
    found = Job.fetch_many([s.id for s in stages], connection=job.connection, serializer=JOB_SERIALIZER)
    return list(zip(stages, found, strict=True))


def failed_stage(stages: list[tuple[Stage, Job]]) -> tuple[Stage, Job] | None:
    """The first stage that failed other than on request."""
    return next(
        (
            (stage, each)
            for stage, each in stages
            if each.get_status(refresh=False) == JobStatus.FAILED and not each.meta.get("cancelled")
        ),
        None,
    )


def job_error(job: Job) -> JobError:
    """A failed job's error: the one it recorded, else the last line of its exception."""
    if "error" in job.meta:
        return JobError.model_validate(job.meta["error"])
    latest = job.latest_result()
    text = (latest.exc_string or "").strip() if latest else ""
    return JobError(code="internal_error", message=text.splitlines()[-1] if text else "the job failed")


def stop(redis: Redis, job: Job) -> None:
    """Cancel a queued job now; ask a running one to stop at its next batch or pick."""
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        redis.set(cancel_key(job.id), 1, ex=KEEP_S)
    elif status in QUEUED:
        append_event(job, new_event("cancelled", "cancelled on request while queued"))
        job.cancel()
        notify(redis, job)
        metrics.job_ended(redis, job.id, metrics.job_kind(job.func_name), "cancelled")


def _fetch(redis: Redis, ids: list[str]) -> list[Job]:
    """The jobs still in Redis, once each (a job can have several executions in the started registry)."""
    found = Job.fetch_many(list(dict.fromkeys(ids)), connection=redis, serializer=JOB_SERIALIZER)
    return [j for j in found if j is not None]


def _retry(redis: Redis, job: Job) -> None:
    """Queue a job whose worker was lost again, once per attempt even if two monitors noticed (jobs are
    idempotent: a selection or a training run started over gives the same result)."""
    attempt = job.meta.get("attempts", 1) + 1
    if not redis.set(f"fishersft:retry:{job.id}:{attempt}", 1, nx=True, ex=KEEP_S):
        return
    job.meta["attempts"] = attempt
    job.meta.pop("progress", None)
    message = f"its worker was lost; queued again (attempt {attempt} of {MAX_ATTEMPTS})"
    append_event(job, new_event("retried", message, "warning", attempt=attempt))
    queue = Queue(job.origin, connection=redis, serializer=JOB_SERIALIZER)
    with redis.pipeline() as pipe:
        StartedJobRegistry(queue=queue).remove_executions(job, pipeline=pipe)
        pipe.execute()
    queue.enqueue_job(job)


def _fail(redis: Redis, job: Job, code: str, message: str) -> None:
    job.meta["error"] = {"code": code, "message": message}
    append_event(job, new_event("failed", message, "error", code=code))
    queue = Queue(job.origin, connection=redis, serializer=JOB_SERIALIZER)
    with redis.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        StartedJobRegistry(queue=queue).remove_executions(job, pipeline=pipe)
        DeferredJobRegistry(queue=queue).remove(job, pipeline=pipe)
        FailedJobRegistry(queue=queue).add(job, ttl=KEEP_S, exc_string=message, pipeline=pipe)
        pipe.execute()
    notify(redis, job)
    metrics.job_ended(redis, job.id, metrics.job_kind(job.func_name), "failed")

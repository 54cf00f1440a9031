"""Reading an RQ job into the body every job resource answers (GET /v1/<kind>/{id}): shared by the API and the
webhook delivery (workers.webhooks), so that a webhook's `job` is exactly what GET answers.

RQ's statuses map to the API's: queued (also deferred, scheduled), running (started), succeeded (finished),
failed, cancelled (canceled, stopped, or failed after a cancellation request).

A selection spread over workers (protocol.Plan) waits, deferred in RQ, for its stage jobs (shards, GreeDi
partitions): it reads as running once one started, with their progress summed, and as failed with the first
stage's error once one failed (the monitor then fails it and stops the others).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rq.job import Job, JobStatus

from fishersft.contract.comparison import ComparisonResult
from fishersft.contract.jobs import Comparison, Finetune, JobBody, JobError, Progress, Selection
from fishersft.contract.jobs import JobStatus as State
from fishersft.contract.selection import SelectionResult
from fishersft.contract.training import FinetuneResult
from fishersft.service.monitor import failed_stage, job_error, stage_jobs
from fishersft.service.protocol import (
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
KINDS = {kind.prefix: kind for kind in (SELECTIONS, FINETUNES, COMPARISONS)}
"""By id prefix."""


def kind_of(job_id: str) -> JobKind | None:
    """The kind of a job resource's id (`sel_...`); None for any other job (a stage, a delivery)."""
    kind = KINDS.get(job_id.partition("_")[0])
    return kind if kind is not None and is_id(job_id, kind.prefix) else None


def job_body(kind: JobKind, job: Job, store: ArtifactStore) -> JobBody:
    """The API body of a job as last read from Redis (status, timestamps and meta are read together). A job
    waiting for its stage jobs reads as running once one started, with their progress summed, and as failed
    once one failed. It writes nothing."""
    status = job.get_status(refresh=False)
    meta = job.meta
    progress, started_at, error = meta.get("progress"), job.started_at, None
    if status in (JobStatus.DEFERRED, JobStatus.QUEUED) and "plan" in meta:  # queued: its stages are done
        status, progress, started_at, error = _waiting(job, Plan.of(meta["plan"]))
    state: State = "cancelled" if status == JobStatus.FAILED and meta.get("cancelled") else STATUS.get(status, "queued")
    result = store.result(job.id) if state == "succeeded" else None
    progress = progress if state in ("running", "succeeded") else None
    return kind.body(
        id=job.id,
        status=state,
        created_at=utc(job.created_at),
        started_at=utc(started_at),
        finished_at=utc(job.ended_at),
        progress=Progress(**progress) if progress else None,
        error=(error or job_error(job)) if state == "failed" else None,
        result=kind.result.model_validate(result.result) if result else None,
        request=meta["request"],
        attempts=meta.get("attempts", 1),
    )


def _waiting(job: Job, plan: Plan) -> tuple[JobStatus, dict[str, Any] | None, datetime | None, JobError | None]:
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
    started = [at for _, each, _ in stages if (at := utc(each.started_at)) is not None]
    if not started:
        return job.get_status(refresh=False), None, None, None
    return JobStatus.STARTED, _stage_progress(plan, stages), min(started), None


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


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)

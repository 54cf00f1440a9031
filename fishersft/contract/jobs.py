"""What every job resource answers (shared CONVENTIONS), its events, and the resources' bodies."""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, SerializeAsAny

from fishersft.contract.comparison import ComparisonCreate, ComparisonResult
from fishersft.contract.selection import SelectionCreate, SelectionResult
from fishersft.contract.training import FinetuneCreate, FinetuneResult

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Phase = Literal["embedding", "scoring", "deduplicating", "selecting", "evaluating", "training"]


class Progress(BaseModel):
    phase: Phase = Field(
        description="embedding counts examples; scoring counts examples too (the IFD pass, method ifd only); "
        "deduplicating counts the pool's examples compared (near-duplicate removal, `dedup`, only); "
        "selecting counts the budget spent (examples or tokens); "
        "evaluating counts held-out evaluations; training counts optimizer steps (over all runs of a comparison)."
    )
    done: int = Field(description="Units done.")
    total: int = Field(description="Units in all.")


class JobError(BaseModel):
    code: str = Field(description="Machine-readable reason, snake_case.")
    message: str = Field(description="What went wrong, for people.")


class Event(BaseModel):
    created_at: datetime = Field(description="When it happened (UTC).")
    level: Literal["info", "warning", "error"] = Field(description="Severity.")
    type: str = Field(
        description="started, selected, evaluated, step, saved, succeeded, failed or cancelled; then, with a "
        "webhook_url, webhook.delivered or webhook.failed for each attempt to deliver the webhook."
    )
    message: str = Field(description="For people.")
    data: dict[str, Any] = Field(default_factory=dict, description="For machines: step, loss, ...")


RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)


class JobBody(BaseModel, Generic[RequestT, ResultT]):
    """What every job resource answers: status, times, progress, error, result."""

    id: str = Field(description="Job id.")
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled.")
    created_at: datetime | None = Field(description="When it was requested (UTC).")
    started_at: datetime | None = Field(description="When a worker started it.")
    finished_at: datetime | None = Field(description="When it ended, whatever the outcome.")
    progress: Progress | None = Field(description="Last reported progress while running.")
    error: JobError | None = Field(description="Why it failed; null unless failed.")
    result: ResultT | None = Field(description="The outcome; null until succeeded.")
    request: RequestT = Field(description="What was asked.")
    attempts: int = Field(
        1, description="Runs started: a job whose worker was lost (killed, crashed) is queued again once."
    )


class Selection(JobBody[SelectionCreate, SelectionResult]):
    pass


class Finetune(JobBody[FinetuneCreate, FinetuneResult]):
    pass


class Comparison(JobBody[ComparisonCreate, ComparisonResult]):
    pass


ID_HEX = 24
"""Hex digits after an id's prefix: `ds_` + the upload's SHA-256, `sel_`/`ft_`/`cmp_` + a random UUID."""


def is_id(value: str, prefix: str) -> bool:
    """Whether `value` has the shape of an id with this prefix; anything else names nothing (a 404)."""
    return re.fullmatch(rf"{prefix}_[0-9a-f]{{{ID_HEX}}}", value) is not None


@dataclass(frozen=True)
class JobKind:
    """A kind of job resource: the one table the API's routes, the service's RQ glue, the metrics, the client and
    the tests read."""

    name: str
    """Singular, the metrics' `kind` label: selection, finetune, comparison."""
    resource: str
    """URL segment under /v1 and Redis namespace: selections, finetunes, comparisons."""
    prefix: str
    """Of job ids: sel, ft, cmp (`sel_...`)."""
    body: type[JobBody[Any, Any]]
    result: type[BaseModel]
    function: str
    """The worker function RQ runs."""
    artifact: str
    """What GET /v1/<resource>/{id}/<artifact> serves once the job succeeded."""
    training: bool
    """Goes to the training queue (GPU workers) rather than the selection queue."""

    @property
    def index(self) -> str:
        """Sorted set of the kind's job ids, scored by creation time: the list endpoint's order and cursor."""
        return f"fishersft:{self.resource}"


SELECTIONS = JobKind(
    "selection", "selections", "sel", Selection, SelectionResult, "workers.selection.run_selection", "ids", False
)
FINETUNES = JobKind(
    "finetune", "finetunes", "ft", Finetune, FinetuneResult, "workers.finetune.run_finetune", "adapter", True
)
COMPARISONS = JobKind(
    "comparison",
    "comparisons",
    "cmp",
    Comparison,
    ComparisonResult,
    "workers.finetune.run_comparison",
    "plot.png",
    True,
)
JOB_KINDS: tuple[JobKind, ...] = (SELECTIONS, FINETUNES, COMPARISONS)


def kind_of(job_id: str) -> JobKind | None:
    """The kind of a job resource's id (`sel_...`); None for any other id (a stage, a delivery)."""
    return next((kind for kind in JOB_KINDS if is_id(job_id, kind.prefix)), None)


def kind_for(body: type[JobBody[Any, Any]]) -> JobKind:
    """The kind whose job body `body` is."""
    return next(kind for kind in JOB_KINDS if kind.body is body)


class SavedJob(BaseModel):
    """A job's record in the artifact store once it succeeded: its request and result as JSON, its times and
    events, whose it is and how many runs it took. Redis may forget the job; this stays."""

    request: dict[str, Any]
    result: dict[str, Any]
    created_at: datetime
    started_at: datetime
    finished_at: datetime
    events: list[Event] = Field(default_factory=list)
    events_dropped: int = 0
    """How many of its oldest events were dropped to keep the last 1,000 (they count in the events' cursor)."""
    owner: str | None = None
    attempts: int = 1


WebhookType = Literal["job.succeeded", "job.failed", "job.cancelled"]
WEBHOOK_TYPES: dict[JobStatus, WebhookType] = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
"""The webhook's type for each terminal status."""


class WebhookPayload(BaseModel):
    """What a webhook POSTs when a job ends (docs/service.md, Webhooks)."""

    id: str = Field(
        description="`<job id>.<type>`: the same on every attempt to deliver this webhook; a receiver that has "
        "already handled this id ignores the delivery."
    )
    type: WebhookType = Field(description="How the job ended.")
    job: SerializeAsAny[JobBody[Any, Any]] = Field(
        description="The job's body, exactly as GET /v1/<kind>/{id} answers it."
    )

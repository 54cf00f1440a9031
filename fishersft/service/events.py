"""A job's events (GET .../events): appended to its RQ meta by whoever acts on the job (the worker running it,
the monitor settling it, the API cancelling it while queued, a webhook delivery)."""

from datetime import UTC, datetime
from typing import Any

from rq.job import Job

from fishersft.contract.jobs import Event

MAX_EVENTS = 1000
"""A job keeps its latest MAX_EVENTS events."""


def new_event(type_: str, message: str, level: str = "info", **data: Any) -> Event:
    return Event.model_validate(
        {"created_at": datetime.now(UTC), "level": level, "type": type_, "message": message, "data": data}
    )


DROPPED = "events_dropped"
"""Job meta: how many of its oldest events were dropped to keep MAX_EVENTS (the events' page cursor counts them)."""


def append_event(job: Job, event: Event) -> None:
    """Append `event` to the job's events and save its meta."""
    events = [*job.meta.get("events", []), event.model_dump(mode="json")]
    dropped = max(0, len(events) - MAX_EVENTS)
    job.meta["events"] = events[dropped:]
    if dropped:
        job.meta[DROPPED] = job.meta.get(DROPPED, 0) + dropped
    job.save_meta()

"""The webhook delivery job (fishersft.service.webhooks): one attempt to POST a job's webhook, made at most once
(its number is claimed first), recorded as an event of that job (`webhook.delivered` or `webhook.failed`, with the
status code), and filed to be tried again after the next of FISHERSFT_WEBHOOK_RETRY_S when it failed. A failed
attempt never raises: the job it reports on has ended, and nothing about delivery changes it."""

import logging
from typing import Any

from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from fishersft.contract.jobs import WEBHOOK_TYPES, WebhookPayload, kind_of
from fishersft.contract.webhooks import WebhookOptions
from fishersft.service.events import append_event, new_event
from fishersft.service.job_body import job_body
from fishersft.service.protocol import JOB_SERIALIZER
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.service.webhooks import (
    Attempt,
    allowed_host,
    delivery_id,
    drop_attempt,
    post,
    settle_attempt,
    start_attempt,
)

log = logging.getLogger(__name__)


def deliver_webhook(job_id: str, attempt: int) -> None:
    current = get_current_job()
    assert current is not None, "deliver_webhook runs inside an RQ job"
    redis, settings = current.connection, Settings.from_env()
    store = ArtifactStore(settings.data_dir)
    kind = kind_of(job_id)
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        log.warning("webhook of %s not sent: the job is no longer in Redis", job_id)
        drop_attempt(redis, job_id, attempt)
        return
    assert kind is not None, f"{job_id} is not a job resource's id"
    body = job_body(kind, job, store)
    assert isinstance(body.request, WebhookOptions) and body.request.webhook_url, "notify checked the request"
    url = body.request.webhook_url
    type_ = WEBHOOK_TYPES.get(body.status)
    if type_ is None:  # notify runs once the end is recorded: not seen
        log.warning("webhook of %s not sent: it is %s", job_id, body.status)
        drop_attempt(redis, job_id, attempt)
        return
    retries = settings.webhook_retry_s
    if not start_attempt(redis, job_id, attempt, last=attempt > len(retries)):
        log.info("attempt %d of the webhook of %s was made already", attempt, job_id)
        drop_attempt(redis, job_id, attempt)
        return
    if settings.webhook_secret is None or not allowed_host(url, settings.webhook_hosts):
        outcome = Attempt(None, "its host is not in this worker's FISHERSFT_WEBHOOK_HOSTS (or no secret is set)")
        retry_s = None
    else:
        payload = WebhookPayload(id=delivery_id(job_id, type_), type=type_, job=body)
        outcome = post(url, payload, settings.webhook_secret.get_secret_value(), attempt)
        retry_s = retries[attempt - 1] if not outcome.delivered and attempt <= len(retries) else None
    _record(job, store, attempt, outcome, retry_s)
    settle_attempt(redis, job_id, attempt, retry_s)


def _record(job: Job, store: ArtifactStore, attempt: int, outcome: Attempt, retry_s: float | None) -> None:
    """The attempt as an event of the job: in its Redis meta and, once it succeeded, in its saved record (where
    GET .../events reads a succeeded job's events)."""
    data: dict[str, Any] = {"attempt": attempt, "status_code": outcome.status_code}
    if outcome.delivered:
        message = f"webhook delivered (attempt {attempt}): {outcome.status_code}"
        event = new_event("webhook.delivered", message, **data)
    else:
        then = f"retrying in {retry_s:g} s" if retry_s is not None else "giving up"
        message = f"webhook not delivered (attempt {attempt}): {outcome.error}; {then}"
        level = "warning" if retry_s is not None else "error"
        event = new_event("webhook.failed", message, level, **data, error=outcome.error, retry_in_s=retry_s)
    append_event(job, event)
    saved = store.result(job.id)
    if saved is not None:
        store.put_result(job.id, saved.model_copy(update={"events": [*saved.events, event]}))

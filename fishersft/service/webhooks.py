"""Webhooks: when a job with a `webhook_url` ends (succeeded, failed, cancelled), the service POSTs
`{"type": "job.<status>", "job": <its GET body>}` there, signed with FISHERSFT_WEBHOOK_SECRET.

- `notify` is called wherever a job reaches a terminal state (the worker once RQ recorded it, the API's cancel
  of a queued job, the monitor failing a lost job or a selection whose stage failed); it queues one delivery
  job (workers.webhooks) on WEBHOOK_QUEUE, once per job, and returns: delivery never delays or fails the job.
- A delivery that gets no 2xx answer (or none within TIMEOUT_S) is tried again after each of
  FISHERSFT_WEBHOOK_RETRY_S: the attempt is filed in a Redis sorted set by due time, and the monitor's pass
  (`enqueue_due`) queues it when due. RQ's own retry intervals would need RQ's scheduler, a process forked from
  the worker (which may hold CUDA).
- The delivery's state lives in that set, not in a worker: an attempt queued is filed LEASE_S ahead as well (a
  worker that dies before making it leaves it due again), and an attempt starts (`start_attempt`) by claiming its
  number once and filing the next attempt LEASE_S ahead, atomically, so a worker that dies while posting leaves
  the next attempt due; `settle_attempt` then drops it (delivered, or no retry left) or files it at its retry
  time. So each attempt is POSTed at most once, and one lost with its worker is followed by the next.
- Every attempt carries the same payload `id` (`<job id>.<type>`), the key a receiver deduplicates on, and its
  number in the ATTEMPT_HEADER.
- Against SSRF, only hosts in FISHERSFT_WEBHOOK_HOSTS are accepted (checked when the job is requested, and again
  before each attempt) and redirects are never followed.
"""

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httpx
from redis import Redis
from rq import Queue
from rq.job import Job

from fishersft.contract.jobs import WebhookPayload
from fishersft.service.protocol import JOB_SERIALIZER, KEEP_S, RUN_WEBHOOK, WEBHOOK_QUEUE

SIGNATURE_HEADER = "Fishersft-Signature"
ATTEMPT_HEADER = "Fishersft-Attempt"
TIMEOUT_S = 10.0
"""An attempt that gets no answer within this long failed (and is retried)."""
LEASE_S = 3 * TIMEOUT_S
"""How long after it was queued or started an attempt not settled is taken for lost with its worker (the
delivery job's timeout)."""
DUE_KEY = "fishersft:webhooks:due"
"""Sorted set of delivery attempts to queue, `[job id, attempt]` as JSON, scored by the time they are due."""
_START = """
if redis.call('set', KEYS[1], 1, 'NX', 'EX', ARGV[1]) then
  redis.call('zrem', KEYS[2], ARGV[2])
  if ARGV[3] ~= '' then redis.call('zadd', KEYS[2], ARGV[4], ARGV[3]) end
  return 1
end
return 0
"""

log = logging.getLogger(__name__)


def allowed_host(url: str, hosts: frozenset[str]) -> bool:
    """Whether the URL's host is one of `hosts` (lower-case names; any port)."""
    host = urlsplit(url).hostname
    return host is not None and host.lower() in hosts


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The Fishersft-Signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Attempt:
    """One POST's outcome: the status code answered (None without an answer) and, unless 2xx, why it failed."""

    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


def delivery_id(job_id: str, type_: str) -> str:
    """The payload's `id`: the same on every attempt to deliver the job's webhook."""
    return f"{job_id}.{type_}"


def post(url: str, payload: WebhookPayload, secret: str, attempt: int) -> Attempt:
    """POST the payload, signed now; redirects are not followed (a 3xx is a failed attempt). It never raises:
    whatever stops the attempt is its error."""
    body = payload.model_dump_json(by_alias=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fishersft-webhooks",
        SIGNATURE_HEADER: signature(secret, int(time.time()), body),
        ATTEMPT_HEADER: str(attempt),
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S, follow_redirects=False)
    except Exception as e:  # httpx.HTTPError, and InvalidURL or anything else the client raises on this URL
        return Attempt(None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    if response.is_success:
        return Attempt(response.status_code, None)
    return Attempt(response.status_code, f"answered {response.status_code}")


def notify(redis: Redis, job: Job) -> None:
    """Queue the first delivery of the job's webhook, if its request has one, once per job."""
    url = (job.meta.get("request") or {}).get("webhook_url")  # stage and delivery jobs carry no request in meta
    if url and redis.set(f"fishersft:webhook:{job.id}", 1, nx=True, ex=KEEP_S):
        _enqueue(redis, job.id, 1)


def start_attempt(redis: Redis, job_id: str, attempt: int, last: bool) -> bool:
    """Claim attempt `attempt` of the job's delivery: False if it was made (or started) already. Atomically with
    the claim, its own entry in DUE_KEY goes and, unless it is the `last`, the next attempt is filed LEASE_S ahead:
    if this worker dies before `settle_attempt`, that one is made then."""
    following = "" if last else _member(job_id, attempt + 1)
    claimed = redis.eval(
        _START,
        2,
        f"fishersft:webhook:{job_id}:attempt:{attempt}",
        DUE_KEY,
        KEEP_S,
        _member(job_id, attempt),
        following,
        time.time() + LEASE_S,
    )
    return bool(claimed)


def settle_attempt(redis: Redis, job_id: str, attempt: int, retry_s: float | None) -> None:
    """After attempt `attempt`: the next is made in `retry_s` seconds, or (None: delivered, or given up) never."""
    following = _member(job_id, attempt + 1)
    if retry_s is None:
        redis.zrem(DUE_KEY, following)
    else:
        redis.zadd(DUE_KEY, {following: time.time() + retry_s})


def drop_attempt(redis: Redis, job_id: str, attempt: int) -> None:
    """Forget an attempt that will not be made (its job is gone from Redis)."""
    redis.zrem(DUE_KEY, _member(job_id, attempt))


def enqueue_due(redis: Redis) -> None:
    """Queue the deliveries due by now (the monitor's pass; each is taken by the one monitor that removes it)."""
    for member in cast(list[bytes], redis.zrangebyscore(DUE_KEY, "-inf", time.time())):
        if redis.zrem(DUE_KEY, member):
            job_id, attempt = json.loads(member)
            _enqueue(redis, job_id, attempt)


def _member(job_id: str, attempt: int) -> str:
    return json.dumps([job_id, attempt])


def _enqueue(redis: Redis, job_id: str, attempt: int) -> None:
    """Queue the attempt, filed LEASE_S ahead too: queued again then, if its worker died before starting it."""
    redis.zadd(DUE_KEY, {_member(job_id, attempt): time.time() + LEASE_S})
    queue = Queue(WEBHOOK_QUEUE, connection=redis, serializer=JOB_SERIALIZER)
    queue.enqueue(
        RUN_WEBHOOK,
        kwargs={"job_id": job_id, "attempt": attempt},
        job_id=f"{job_id}-webhook-{attempt}",
        job_timeout=int(LEASE_S),
        result_ttl=0,
        failure_ttl=KEEP_S,
    )
    log.debug("queued webhook delivery %d of %s", attempt, job_id)

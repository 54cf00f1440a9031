"""The service's counters and histograms, kept in Redis: every API process and worker adds to the same counts,
and whichever API process is scraped reads them all (app.metrics turns them into Prometheus families).

Each metric is one Redis hash, `fishersft:metrics:<name>`. A counter's fields are its label values (as a JSON
list); a histogram's are its label values, `|` and a suffix: a bucket's index (the count of observations in that
bucket alone, cumulated when read) or `sum`. Recording never fails the request or job it counts: with
Redis away the count is lost and a warning logged.
"""

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from fishersft.contract.jobs import JOB_KINDS
from fishersft.service.protocol import (
    KEEP_S,
    RUN_FEATURES,
    RUN_PARTITION,
    RUN_SHARD,
)

log = logging.getLogger(__name__)

PREFIX = "fishersft:metrics"
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
"""Seconds, from a cached selection on a tiny dataset to a day-long job (the default job timeout)."""


@dataclass(frozen=True)
class Counter:
    name: str
    """Without `_total`: Prometheus's text format adds it."""
    help: str
    labels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{PREFIX}:{self.name}"


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = DURATION_BUCKETS

    @property
    def key(self) -> str:
        return f"{PREFIX}:{self.name}"


JOBS = Counter(
    "fishersft_jobs",
    "Jobs that ended, by kind (selection, finetune, comparison, and a selection's stages: shard, features, "
    "partition) and status (succeeded, failed, cancelled).",
    ("kind", "status"),
)
JOB_DURATION = Histogram(
    "fishersft_job_duration_seconds",
    "Seconds a job ran in a worker, start to end, by kind and status (a job whose worker was lost is not timed).",
    ("kind", "status"),
)
PHASE_DURATION = Histogram(
    "fishersft_phase_duration_seconds",
    "Seconds a job spent in a progress phase (embedding, scoring, selecting, evaluating, training) each time it "
    "entered it.",
    ("kind", "phase"),
)
TOKENS_EMBEDDED = Counter(
    "fishersft_tokens_embedded",
    "Loss tokens whose pre-logit features a worker computed, by model (features from the cache are not counted).",
    ("model",),
)
BYTES_UPLOADED = Counter("fishersft_uploaded_bytes", "Bytes of datasets uploaded and accepted (201).")
COUNTERS = (JOBS, TOKENS_EMBEDDED, BYTES_UPLOADED)
HISTOGRAMS = (JOB_DURATION, PHASE_DURATION)

KIND_OF_FUNCTION = {
    **{kind.function: kind.name for kind in JOB_KINDS},
    RUN_SHARD: "shard",
    RUN_FEATURES: "features",
    RUN_PARTITION: "partition",
}
"""The `kind` label of a job, by the function RQ runs."""


def job_kind(function: str | None) -> str:
    return KIND_OF_FUNCTION.get(function or "", "other")


def count(redis: Redis, counter: Counter, labels: Sequence[str] = (), amount: int = 1) -> None:
    with _recording(redis, counter.name) as pipe:
        pipe.hincrby(counter.key, _field(counter.labels, labels), amount)


def observe(redis: Redis, histogram: Histogram, labels: Sequence[str], value: float) -> None:
    with _recording(redis, histogram.name) as pipe:
        _observe(pipe, histogram, labels, value)


def job_ended(redis: Redis, job_id: str, kind: str, status: str, seconds: float | None = None) -> None:
    """Count a job's end (and time it, when `seconds` is known), once per job id: the monitor and a worker, or
    two cancellations, may both see the same end."""
    try:
        if not redis.set(f"{PREFIX}:ended:{job_id}", status, nx=True, ex=KEEP_S):
            return
    except RedisError as e:
        log.warning("metrics: could not count the end of %s: %s", job_id, e)
        return
    with _recording(redis, JOBS.name) as pipe:
        pipe.hincrby(JOBS.key, _field(JOBS.labels, (kind, status)), 1)
        if seconds is not None:
            _observe(pipe, JOB_DURATION, (kind, status), seconds)


@dataclass
class HistogramValue:
    buckets: list[int] = field(default_factory=list)
    """Observations in each bucket alone (not cumulated), the last one +Inf's."""
    sum: float = 0.0


def read_counter(redis: Redis, counter: Counter) -> dict[tuple[str, ...], int]:
    """Each label set's count."""
    return {tuple(json.loads(name)): int(value) for name, value in redis.hgetall(counter.key).items()}


def read_histogram(redis: Redis, histogram: Histogram) -> dict[tuple[str, ...], HistogramValue]:
    """Each label set's buckets and sum."""
    found: dict[tuple[str, ...], HistogramValue] = {}
    for name, value in redis.hgetall(histogram.key).items():
        labels, _, suffix = (name.decode() if isinstance(name, bytes) else name).rpartition("|")
        entry = found.setdefault(tuple(json.loads(labels)), HistogramValue([0] * (len(histogram.buckets) + 1)))
        if suffix == "sum":
            entry.sum = float(value)
        else:
            entry.buckets[int(suffix)] = int(value)
    return found


def _field(names: tuple[str, ...], values: Sequence[str]) -> str:
    assert len(names) == len(values), f"labels {names} given {values}"
    return json.dumps(list(values))


def _observe(pipe: Pipeline, histogram: Histogram, labels: Sequence[str], value: float) -> None:
    prefix = _field(histogram.labels, labels)
    bucket = next((k for k, bound in enumerate(histogram.buckets) if value <= bound), len(histogram.buckets))
    pipe.hincrby(histogram.key, f"{prefix}|{bucket}", 1)
    pipe.hincrbyfloat(histogram.key, f"{prefix}|sum", value)


@contextmanager
def _recording(redis: Redis, name: str) -> Iterator[Pipeline]:
    """A transaction of metric updates, sent at the end of the block; a Redis error is logged, not raised."""
    pipe = redis.pipeline()
    yield pipe
    try:
        pipe.execute()
    except RedisError as e:
        log.warning("metrics: could not record %s: %s", name, e)

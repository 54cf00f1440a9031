"""What the API and the workers agree on in Redis, beside RQ's own job records, and the shapes of ids."""

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from rq.serializers import JSONSerializer

from fishersft.contract.compression import Compression
from fishersft.contract.jobs import JOB_KINDS

JOB_SERIALIZER = JSONSerializer
"""RQ's job data, meta and results go through JSON, never pickle: whoever can write to Redis must not be able to
run code in the API or the workers. Job arguments, meta and results are JSON-shaped already."""

RUN_SHARD = "workers.stages.run_shard"
RUN_FEATURES = "workers.stages.run_features"
RUN_PARTITION = "workers.stages.run_partition"
RUN_WEBHOOK = "workers.webhooks.deliver_webhook"
JOB_FUNCTIONS = frozenset({*(kind.function for kind in JOB_KINDS), RUN_SHARD, RUN_FEATURES, RUN_PARTITION, RUN_WEBHOOK})
"""The only functions a worker runs: a job naming anything else fails unrun."""

WEBHOOK_QUEUE = "fishersft-webhooks"
"""Webhook deliveries (fishersft.service.webhooks): every worker takes them, before its other queues."""

KEEP_S = 30 * 24 * 3600
"""How long finished jobs (and the keys kept beside them) stay in Redis; results stay in the artifact store."""

WORKER_TTL_S = 30
"""An idle worker heartbeats every WORKER_TTL_S - 15 seconds (RQ's dequeue timeout); one silent for longer than
WORKER_TTL_S is dead. A busy worker is alive while its job refreshes the job's alive key."""


def alive_key(job_id: str) -> str:
    """Refreshed by a running job (Settings.alive_ttl_s); when it expires, the job's worker is gone."""
    return f"fishersft:alive:{job_id}"


def cancel_key(job_id: str) -> str:
    """Set by the API to ask a running job to stop at its next batch or pick."""
    return f"fishersft:cancel:{job_id}"


class JobCancelled(Exception):
    """Raised inside a job that was asked to stop."""


class JobInputError(Exception):
    """A job whose input turned out to be unusable; `code` and the message go to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Stage:
    """A job a selection waits for: it runs `function(**kwargs)` once the stages `after` have succeeded."""

    id: str
    function: str
    kwargs: dict[str, Any]
    after: tuple[str, ...]
    name: str
    """How errors and events call it: `shard 3`, `features`, `partition 1`."""


@dataclass(frozen=True)
class Plan:
    """How one selection spreads over workers, decided when it is created. Its stage jobs carry its id with a
    suffix (`-shard-3`: never an id the API answers to), so the selection's record alone finds them:

    - `shards`: example ranges [start, stop) embedded by one job each into parts of the features store (a JSONL
      dataset above FISHERSFT_SHARD_EXAMPLES whose features are not cached); `compression` is theirs;
    - `partitions` (GreeDi's m): a `features` job makes the features store, then one job per partition runs
      greedy over its candidates; the selection itself runs the merge round.

    An empty plan is a selection on one worker from start to end."""

    shards: list[tuple[int, int]] = field(default_factory=list)
    compression: Compression | None = None
    partitions: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """As JSON (job arguments and meta)."""
        compression = None if self.compression is None else self.compression.model_dump()
        return {"shards": [list(s) for s in self.shards], "compression": compression, "partitions": self.partitions}

    @classmethod
    def of(cls, value: dict[str, Any] | None) -> "Plan":
        value = value or {}
        shards = [(int(a), int(b)) for a, b in value.get("shards", [])]
        compression = value.get("compression")
        return cls(shards, None if compression is None else Compression(**compression), value.get("partitions"))

    def shard_ids(self, job_id: str) -> list[str]:
        return [f"{job_id}-shard-{k}" for k in range(len(self.shards))]

    def partition_ids(self, job_id: str) -> list[str]:
        return [f"{job_id}-partition-{p}" for p in range(self.partitions or 0)]

    def features_id(self, job_id: str) -> str:
        return f"{job_id}-features"

    def stages(self, job_id: str, request: dict[str, Any]) -> list[Stage]:
        """The stage jobs in an order that enqueues each after those it waits for; the selection waits for the
        last group (partitions, else shards)."""
        shard_ids = self.shard_ids(job_id)
        stages = []
        if self.shards:
            assert self.compression is not None, "shards are embedded at the plan's compression"
            for k, (a, b) in enumerate(self.shards):
                shard = ShardRequest(
                    dataset_id=request["dataset_id"],
                    model=request["model"],
                    max_length=request["max_length"],
                    compression=self.compression,
                    start=a,
                    stop=b,
                )
                stages.append(Stage(shard_ids[k], RUN_SHARD, {"request": shard.model_dump()}, (), f"shard {k}"))
        if self.partitions:
            features_id = self.features_id(job_id)
            plan = self.as_dict()
            stages.append(
                Stage(features_id, RUN_FEATURES, {"request": request, "plan": plan}, tuple(shard_ids), "features")
            )
            stages += [
                Stage(
                    pid,
                    RUN_PARTITION,
                    {"request": request, "plan": plan, "partition": p},
                    (features_id,),
                    f"partition {p}",
                )
                for p, pid in enumerate(self.partition_ids(job_id))
            ]
        return stages

    def waits_for(self, job_id: str) -> list[str]:
        """The stage jobs the selection itself depends on."""
        return self.partition_ids(job_id) if self.partitions else self.shard_ids(job_id)


class ShardRequest(BaseModel):
    """What a shard job needs of its selection: the dataset, how it is embedded, and its examples [start, stop)."""

    dataset_id: str
    model: str
    max_length: int
    compression: Compression
    start: int
    stop: int


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `size` examples (the last shorter) covering n examples."""
    return [(a, min(n, a + size)) for a in range(0, n, size)]

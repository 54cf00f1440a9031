"""What the API and the workers agree on in Redis, beside RQ's own job records, and the shapes of ids."""

import re

from rq.serializers import JSONSerializer

JOB_SERIALIZER = JSONSerializer
"""RQ's job data, meta and results go through JSON, never pickle: whoever can write to Redis must not be able to
run code in the API or the workers. Job arguments, meta and results are JSON-shaped already."""

RUN_SELECTION = "workers.selection.run_selection"
RUN_FINETUNE = "workers.finetune.run_finetune"
RUN_COMPARISON = "workers.finetune.run_comparison"
JOB_FUNCTIONS = frozenset({RUN_SELECTION, RUN_FINETUNE, RUN_COMPARISON})
"""The only functions a worker runs: a job naming anything else fails unrun."""

ID_HEX = 24
"""Hex digits after an id's prefix: `ds_` + the upload's SHA-256, `sel_`/`ft_`/`cmp_` + a random UUID."""


def is_id(value: str, prefix: str) -> bool:
    """Whether `value` has the shape of an id with this prefix; anything else names nothing (a 404)."""
    return re.fullmatch(rf"{prefix}_[0-9a-f]{{{ID_HEX}}}", value) is not None


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

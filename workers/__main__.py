"""`python -m workers [QUEUE ...]` (or `fishersft worker [--queue QUEUE]`): an RQ worker for fishersft jobs, on
the selection queue and the training queue unless queues are named (GPU workers may take only training), and
always first on the webhook queue: every worker delivers webhooks (fishersft.service.webhooks), and queues them
when a job it ran ends.

It is a SimpleWorker: jobs run in the worker process itself, not in a forked work horse. A model loaded by
one job stays cached for the next, and CUDA is never initialised in a parent that then forks.

Each worker also runs the job monitor (fishersft.service.monitor) in a daemon thread: workers exist whenever
jobs can run, so a job whose worker died is settled even with the API down; one monitor acts at a time.
"""

import logging
import sys
from collections.abc import Sequence

import torch
import transformers
from redis import Redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

# the job modules are imported now, not inside the first job: torch takes seconds to load
import workers.finetune
import workers.selection
import workers.stages
import workers.webhooks  # noqa: F401
from fishersft.contract.jobs import kind_of
from fishersft.service.monitor import Monitor
from fishersft.service.protocol import JOB_FUNCTIONS, JOB_SERIALIZER, WEBHOOK_QUEUE, WORKER_TTL_S
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.service.webhooks import notify


class FishersftWorker(SimpleWorker):
    """Runs only fishersft's job functions: a job planted in Redis that names any other function fails unrun
    (defence in depth behind Redis's password; job data is JSON, so it cannot carry a pickle either).

    It overrides RQ's internals, not its public callbacks: an `on_failure` callback runs before RQ records the
    failure (a webhook's body is read from that record) and no callback can refuse a job before it runs. So `rq`
    is pinned to the major version these signatures come from (pyproject.toml: rq>=3.0,<4)."""

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        try:
            if job.func_name not in JOB_FUNCTIONS:
                raise PermissionError(f"{job.func_name!r} is not a fishersft job function")
        except Exception:  # the check itself, or job data that is not JSON
            self._finalize_failure(job, queue, execution, sys.exc_info())
            return False
        return super().perform_job(job, queue, execution)

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        super().handle_job_success(job, queue, started_job_registry, execution)
        _notify(self.connection, job)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        _notify(self.connection, job)


def _notify(redis: Redis, job: Job) -> None:
    """Queue the job's webhook once RQ has recorded how it ended (the webhook's body is read from there); a
    failure here is logged, never the job's. Only a job resource has a webhook: a stage job or a delivery has
    none (and a delivery, kept with result_ttl=0, is gone from Redis by now)."""
    if kind_of(job.id) is None:
        return
    try:
        if job.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED):
            notify(redis, job)
    except Exception:
        logging.getLogger(__name__).exception("queueing the webhook of %s failed", job.id)


def main(queues: Sequence[str] = ()) -> None:
    settings = Settings.from_env()
    queues = [WEBHOOK_QUEUE, *(queues or [settings.queue, settings.training_queue])]
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    level = settings.log_level
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    transformers.logging.disable_progress_bar()
    ArtifactStore(settings.data_dir).sweep(older_than_s=settings.job_timeout_s)
    redis = Redis.from_url(settings.redis_url)
    worker = FishersftWorker(
        [Queue(name, connection=redis, serializer=JOB_SERIALIZER) for name in queues],
        connection=redis,
        serializer=JOB_SERIALIZER,
        worker_ttl=WORKER_TTL_S,
    )
    Monitor(Redis.from_url(settings.redis_url), settings).start()  # a daemon thread: it ends with the process
    worker.work(with_scheduler=False, logging_level=level)


if __name__ == "__main__":
    main(sys.argv[1:])

"""`python -m workers` (or `fishersft worker`): an RQ worker for fishersft jobs.

It is a SimpleWorker: jobs run in the worker process itself, not in a forked work horse. A model loaded by
one job stays cached for the next, and CUDA is never initialised in a parent that then forks.
"""

import logging

import transformers
from redis import Redis
from rq import Queue, SimpleWorker

import workers.selection  # noqa: F401  (imported now, not inside the first job: torch takes seconds to load)
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore


def main() -> None:
    settings = Settings.from_env()
    level = settings.log_level
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    transformers.logging.disable_progress_bar()
    ArtifactStore(settings.data_dir).sweep(older_than_s=settings.job_timeout_s)
    redis = Redis.from_url(settings.redis_url)
    worker = SimpleWorker([Queue(settings.queue, connection=redis)], connection=redis)
    worker.work(with_scheduler=False, logging_level=level)


if __name__ == "__main__":
    main()

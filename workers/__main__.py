"""`python -m workers [QUEUE ...]` (or `fishersft worker [--queue QUEUE]`): an RQ worker for fishersft jobs, on
the selection queue and the training queue unless queues are named (GPU workers may take only training).

It is a SimpleWorker: jobs run in the worker process itself, not in a forked work horse. A model loaded by
one job stays cached for the next, and CUDA is never initialised in a parent that then forks.
"""

import logging
import sys
from collections.abc import Sequence

import transformers
from redis import Redis
from rq import Queue, SimpleWorker

# the job modules are imported now, not inside the first job: torch takes seconds to load
import workers.finetune
import workers.selection  # noqa: F401
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore


def main(queues: Sequence[str] = ()) -> None:
    settings = Settings.from_env()
    queues = list(queues) or [settings.queue, settings.training_queue]
    level = settings.log_level
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    transformers.logging.disable_progress_bar()
    ArtifactStore(settings.data_dir).sweep(older_than_s=settings.job_timeout_s)
    redis = Redis.from_url(settings.redis_url)
    worker = SimpleWorker([Queue(name, connection=redis) for name in queues], connection=redis)
    worker.work(with_scheduler=False, logging_level=level)


if __name__ == "__main__":
    main(sys.argv[1:])

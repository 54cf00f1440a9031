"""`python -m workers` (or `fishersft worker`): an RQ worker for fishersft jobs.

It is a SimpleWorker: jobs run in the worker process itself, not in a forked work horse. A model loaded by
one job stays cached for the next, and CUDA is never initialised in a parent that then forks.
"""

import logging

from redis import Redis
from rq import Queue, SimpleWorker

from app.config import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    redis = Redis.from_url(settings.redis_url)
    SimpleWorker([Queue(settings.queue, connection=redis)], connection=redis).work(with_scheduler=False)


if __name__ == "__main__":
    main()

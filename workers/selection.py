"""The selection job: dataset (and model) in the artifact store to a result in the artifact store.

Runs in a non-forking worker (see workers.__main__), so a model loaded by one job is reused by the next, and
CUDA is never touched before a fork. Features computed for (dataset, model, max_length) are kept in the
artifact store and reused by later selections.
"""

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from fishersft.embedding import load_model
from fishersft.errors import InputError
from fishersft.features import load_features
from fishersft.pipeline import embed_dataset, select_features
from fishersft.selection import Budget
from fishersft.service.protocol import JobCancelled, JobInputError, alive_key, cancel_key
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

PROGRESS_INTERVAL_S = 0.5


def run_selection(request: dict[str, Any]) -> dict[str, Any]:
    job = get_current_job()
    assert job is not None, "run_selection runs inside an RQ job"
    settings = Settings.from_env()
    store = ArtifactStore(settings.data_dir)
    with _alive(job.connection, job.id, settings.alive_ttl_s):
        try:
            result = _select(request, settings, store, JobProgress(job))
        except JobCancelled:
            job.meta["cancelled"] = True
            job.save_meta()
            raise
        except (InputError, JobInputError) as e:
            job.meta["error"] = {"code": getattr(e, "code", "invalid_input"), "message": str(e)}
            job.save_meta()
            raise
    times = {
        k: (v or datetime.now(UTC)).isoformat()
        for k, v in (("created_at", job.created_at), ("started_at", job.started_at), ("finished_at", None))
    }
    store.put_result(job.id, {"request": request, "result": result, **times})
    return result


def _select(request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: "JobProgress") -> dict:
    dataset = store.dataset(request["dataset_id"])
    if dataset is None:
        raise JobInputError("dataset_not_found", f"dataset {request['dataset_id']} no longer exists")
    started = time.perf_counter()
    features_cached, truncated, load_s, model_cached, model = True, 0, 0.0, None, None
    if dataset["format"] == "jsonl":
        model = request["model"]
        features_dir = store.features_dir(dataset["sha256"], model, request["max_length"])
        if not features_dir.exists():
            features_cached = False
            hits = cached_model.cache_info().hits
            embedding = embed_dataset(
                store.blob(dataset["sha256"]),
                settings.model_dir(model),
                features_dir,
                max_length=request["max_length"],
                progress=progress,
                load=cached_model,
            )
            features, truncated, load_s = embedding.features, embedding.truncated, embedding.load_seconds
            model_cached = cached_model.cache_info().hits > hits
        else:
            features = load_features(features_dir)
    else:
        features = load_features(store.blob(dataset["sha256"]), suffix=f".{dataset['format']}")
    embed_s = time.perf_counter() - started
    budget = Budget(**request["budget"])
    result = select_features(
        features,
        budget,
        method=request["method"],
        lam=request["lambda"],
        seed=request["seed"],
        warm_start_ids=request["warm_start_ids"],
        progress=progress,
        model=model,
    )
    result["truncated"] = truncated
    result["features_cached"] = features_cached
    result["model_cached"] = model_cached
    result["timings"]["embed_s"] = 0.0 if features_cached else embed_s
    result["timings"]["model_load_s"] = load_s
    return result


cached_model = functools.lru_cache(maxsize=2)(load_model)
"""Models stay loaded across the jobs of a worker."""


class JobProgress:
    """The pipeline's progress callback for a job: progress into job meta (at most every 0.5 s and at every
    phase change), and a stop at the next batch or pick once the API asked for cancellation."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.saved_at = 0.0
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.job.connection.exists(cancel_key(self.job.id)):
            raise JobCancelled("cancelled on request")
        now = time.monotonic()
        if phase != self.phase or done == total or now - self.saved_at >= PROGRESS_INTERVAL_S:
            self.job.meta["progress"] = {"phase": phase, "done": done, "total": total}
            self.job.save_meta()
            self.phase, self.saved_at = phase, now


@contextmanager
def _alive(redis: Redis, job_id: str, ttl: int) -> Iterator[None]:
    """Keep the job's alive key fresh from a thread while the job runs: if the worker dies, the key expires."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            redis.set(alive_key(job_id), 1, ex=ttl)
            if stop.wait(ttl / 4):
                break

    thread = threading.Thread(target=beat, daemon=True)
    redis.set(alive_key(job_id), 1, ex=ttl)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        redis.delete(alive_key(job_id))

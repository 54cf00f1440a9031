"""The life of a job in a worker, whatever its kind: keep an alive key fresh, report progress and events in job
meta, stop when cancellation is asked, turn input errors into readable failures, and save the result (with the
job's times and events) to the artifact store.

Workers are non-forking (see workers.__main__), so a model loaded by one job is reused by the next, and CUDA is
never touched before a fork.
"""

import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from rq import get_current_job
from rq.job import Job

from fishersft.errors import InputError
from fishersft.features.files import load_features
from fishersft.features.set import FeatureSet
from fishersft.features.store import assemble_store, compress_store
from fishersft.models.loading import load_model
from fishersft.models.registry import model_dim
from fishersft.pipeline import embed_dataset
from fishersft.service.protocol import JobCancelled, JobInputError, Plan, alive_key, cancel_key
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.variants import Compression, resolve_compression

PROGRESS_INTERVAL_S = 0.5
MAX_EVENTS = 1000

cached_model = functools.lru_cache(maxsize=2)(load_model)
"""Models stay loaded across the jobs of a worker (for embedding; training loads a fresh copy per run)."""


class JobProgress:
    """The pipeline's progress callback for a job: progress into job meta (at most every 0.5 s and at every
    phase change), events, and a stop at the next batch, pick or step once the API asked for cancellation."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.saved_at = 0.0
        self.phase = ""
        self.events: list[dict[str, Any]] = list(job.meta.get("events", []))  # an earlier attempt's too

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.job.connection.exists(cancel_key(self.job.id)):
            raise JobCancelled("cancelled on request")
        now = time.monotonic()
        if phase != self.phase or done == total or now - self.saved_at >= PROGRESS_INTERVAL_S:
            self.job.meta["progress"] = {"phase": phase, "done": done, "total": total}
            self.job.save_meta()
            self.phase, self.saved_at = phase, now

    def event(self, type_: str, message: str, level: str = "info", **data: Any) -> None:
        """Append an event (GET .../events) and save it with the job's meta."""
        created_at = datetime.now(UTC).isoformat()
        self.events.append({"created_at": created_at, "level": level, "type": type_, "message": message, "data": data})
        self.job.meta["events"] = self.events[-MAX_EVENTS:]
        self.job.save_meta()


Work = Callable[[dict[str, Any], Settings, ArtifactStore, JobProgress], dict[str, Any]]


def run_job(work: Work, request: dict[str, Any], save: bool = True) -> dict[str, Any]:
    """Run `work(request, settings, store, progress)` as the current RQ job and save its result (with `save`; a
    stage job's result stays in RQ for the job that waits for it)."""
    job = get_current_job()
    assert job is not None, "run_job runs inside an RQ job"
    settings = Settings.from_env()
    store = ArtifactStore(settings.data_dir)
    progress = JobProgress(job)
    with _alive(job.connection, job.id, settings.alive_ttl_s):
        progress.event("started", f"started on {job.worker_name or 'a worker'}")
        try:
            result = work(request, settings, store, progress)
        except JobCancelled:
            job.meta["cancelled"] = True
            progress.event("cancelled", "cancelled on request")
            raise
        except (InputError, JobInputError) as e:
            job.meta["error"] = {"code": getattr(e, "code", "invalid_input"), "message": str(e)}
            progress.event("failed", str(e), level="error")
            raise
    progress.event("succeeded", "succeeded")
    if not save:
        return result
    times = {
        k: (v or datetime.now(UTC)).isoformat()
        for k, v in (("created_at", job.created_at), ("started_at", job.started_at), ("finished_at", None))
    }
    saved = {"request": request, "result": result, **times, "events": progress.events}
    store.put_result(job.id, {**saved, "owner": job.meta.get("owner"), "attempts": job.meta.get("attempts", 1)})
    return result


def dataset_record(store: ArtifactStore, dataset_id: str) -> dict[str, Any]:
    dataset = store.dataset(dataset_id)
    if dataset is None:
        raise JobInputError("dataset_not_found", f"dataset {dataset_id} no longer exists")
    return dataset


def dataset_dim(dataset: dict[str, Any], store: ArtifactStore) -> int:
    """The width of an uploaded features file (recorded at upload; read from the file for older records)."""
    if dataset.get("dim"):
        return int(dataset["dim"])
    return int(load_features(store.blob(dataset["sha256"]), suffix=f".{dataset['format']}").features.shape[1])


def dataset_features(
    dataset: dict[str, Any],
    model: str | None,
    max_length: int,
    settings: Settings,
    store: ArtifactStore,
    progress: JobProgress,
    asked: Mapping[str, Any] | None = None,
    plan: Plan | None = None,
) -> tuple[FeatureSet, dict[str, Any]]:
    """A dataset's compressed features store: the JSONL embedded by `model` (or assembled from the parts its
    `plan`'s shards embedded), or an uploaded features file compressed, cached in the store per (dataset, model,
    max_length, compression). The compression is the plan's, else what `asked` names (a request's `rank`, `dim`,
    `projection`), the rest chosen by the dataset's size under FISHERSFT_SELECTION_MEMORY_BYTES. Also what it
    cost: {features_cached, model_cached, truncated, embed_s, model_load_s}."""
    uploaded = dataset["format"] != "jsonl"
    asked = asked or {}
    if plan is not None and plan.compression is not None:
        compression = Compression.of(plan.compression)
    else:
        compression = resolve_compression(
            asked.get("rank"),
            asked.get("dim"),
            asked.get("projection", "principal"),
            dataset["n_examples"],
            dataset_dim(dataset, store) if uploaded else model_dim(settings.model_dir(model)),  # type: ignore[arg-type]
            settings.selection_memory_bytes,
        )
    features_dir = store.features_dir(dataset["sha256"], None if uploaded else model, max_length, compression.key)
    if features_dir.exists():
        store.use_features(features_dir)
        features = load_features(features_dir)
        cost = {"features_cached": True, "model_cached": None, "embed_s": 0.0, "model_load_s": 0.0}
        return features, {**cost, "truncated": features.meta.get("truncated", 0)}
    start, hits = time.perf_counter(), cached_model.cache_info().hits
    if uploaded:
        raw = load_features(store.blob(dataset["sha256"]), suffix=f".{dataset['format']}")
        features, truncated, load_s = compress_store(raw, features_dir, compression), 0, 0.0
    elif plan is not None and plan.shards:
        parts = [
            embed_part(dataset, model, max_length, compression, shard, settings, store, progress)[0]  # type: ignore[arg-type]
            for shard in plan.shards
        ]  # each made by its shard job, unless evicted since
        features = assemble_store(parts, features_dir)
        for part in parts:
            shutil.rmtree(part, ignore_errors=True)  # the store holds them now
        truncated, load_s = int(features.meta.get("truncated", 0)), 0.0
    else:
        embedding = embed_dataset(
            store.blob(dataset["sha256"]),
            settings.model_dir(model),  # type: ignore[arg-type]
            features_dir,
            max_length=max_length,
            compression=compression,
            progress=progress,
            load=cached_model,
        )
        features, truncated, load_s = embedding.features, embedding.truncated, embedding.load_seconds
    store.evict_features(settings.features_cache_bytes, keep=features_dir)
    return features, {
        "features_cached": False,
        "model_cached": None if uploaded else cached_model.cache_info().hits > hits,
        "truncated": truncated,
        "embed_s": time.perf_counter() - start,
        "model_load_s": load_s,
    }


def embed_part(
    dataset: dict[str, Any],
    model: str,
    max_length: int,
    compression: Compression,
    shard: tuple[int, int],
    settings: Settings,
    store: ArtifactStore,
    progress: JobProgress,
) -> tuple[Path, float | None]:
    """One shard's part of a JSONL dataset's features store (examples start:stop), embedded unless cached; and
    the seconds embedding took (None when cached)."""
    features_dir = store.features_dir(dataset["sha256"], model, max_length, compression.key)
    part = store.part_dir(features_dir, *shard)
    if part.exists():
        store.use_features(part)
        return part, None
    embedding = embed_dataset(
        store.blob(dataset["sha256"]),
        settings.model_dir(model),
        part,
        max_length=max_length,
        compression=compression,
        progress=progress,
        load=cached_model,
        examples=shard,
    )
    store.evict_features(settings.features_cache_bytes, keep=part)
    return part, embedding.seconds


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
        # the key is left to expire: RQ marks the job finished only after this returns, and a reader seeing it
        # still started without its key would take the worker for lost and run the job again

"""The stage jobs of a selection spread over workers (see protocol.Plan): a shard embeds a range of examples
into its part of the features store; the features job makes the whole store before GreeDi's partitions; a
partition runs greedy over its share of the candidates. Their results stay in RQ for the selection."""

import functools
from typing import Any

from fishersft.pipeline import partition_candidates, select_features
from fishersft.selection import Budget
from fishersft.service.protocol import Plan
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.variants import Compression
from workers.jobs import JobProgress, dataset_record, embed_part, run_job
from workers.selection import request_features, selection_options


def run_shard(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(_shard, request, save=False)


def run_features(request: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    return run_job(functools.partial(_features, plan=Plan.of(plan)), request, save=False)


def run_partition(request: dict[str, Any], plan: dict[str, Any], partition: int) -> dict[str, Any]:
    return run_job(functools.partial(_partition, plan=Plan.of(plan), partition=partition), request, save=False)


def _shard(request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: JobProgress) -> dict[str, Any]:
    dataset = dataset_record(store, request["dataset_id"])
    compression = Compression.of(request["compression"])
    start, stop = request["start"], request["stop"]
    _, seconds = embed_part(
        dataset, request["model"], request["max_length"], compression, (start, stop), settings, store, progress
    )
    worker = progress.job.worker_name
    return {
        "start": start,
        "examples": stop - start,
        "worker": worker,
        "embed_s": seconds or 0.0,
        "cached": seconds is None,
    }


def _features(
    request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: JobProgress, plan: Plan
) -> dict[str, Any]:
    return request_features(request, settings, store, progress, plan)[3]


def _partition(
    request: dict[str, Any],
    settings: Settings,
    store: ArtifactStore,
    progress: JobProgress,
    plan: Plan,
    partition: int,
) -> dict[str, Any]:
    dataset, model, features, _ = request_features(request, settings, store, progress, plan)
    options = selection_options(request, dataset, model, store, progress)
    candidates = partition_candidates(features, plan.partitions, **options)[partition]  # type: ignore[arg-type]
    result = select_features(features, Budget(**request["budget"]), candidates=candidates, **options)
    return result | {"candidates": len(candidates), "worker": progress.job.worker_name}

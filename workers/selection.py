"""The selection job: dataset (and model) in the artifact store to a result in the artifact store. Features
computed for (dataset, model, max_length, compression) are kept in the store and reused by later jobs.

A selection with a plan (see protocol.Plan) runs after its stage jobs (workers.stages): with shards it assembles
their parts into the features store; with partitions it runs GreeDi's merge round over their picks."""

import functools
from typing import Any

from rq.job import Job

from fishersft.data.dataset import read_labels
from fishersft.features.set import FeatureSet
from fishersft.pipeline import merge_partitions, select_features
from fishersft.selection import Budget
from fishersft.service.protocol import JOB_SERIALIZER, Plan
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore
from fishersft.variants import DEFAULT_EPSILON
from workers.jobs import JobProgress, dataset_features, dataset_record, run_job


def run_selection(request: dict[str, Any], plan: dict[str, Any] | None = None) -> dict[str, Any]:
    return run_job(functools.partial(_select, plan=Plan.of(plan)), request)


def _select(
    request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: JobProgress, plan: Plan
) -> dict[str, Any]:
    dataset, model, features, cost = request_features(request, settings, store, progress, plan)
    options = selection_options(request, dataset, model, store, progress)
    job_id = progress.job.id
    if plan.partitions:
        rounds = stage_results(plan.partition_ids(job_id), progress.job)
        result = merge_partitions(features, Budget(**request["budget"]), rounds, **options)
        cost = stage_results([plan.features_id(job_id)], progress.job)[0]  # the features job made them
    else:
        result = select_features(features, Budget(**request["budget"]), **options)
    result["shards"] = stage_results(plan.shard_ids(job_id), progress.job) if plan.shards else None
    result["truncated"] = cost["truncated"]
    result["features_cached"] = cost["features_cached"]
    result["model_cached"] = cost["model_cached"]
    result["timings"]["embed_s"] = cost["embed_s"]
    result["timings"]["model_load_s"] = cost.get("model_load_s", 0.0)
    return result


def request_features(
    request: dict[str, Any], settings: Settings, store: ArtifactStore, progress: JobProgress, plan: Plan
) -> tuple[dict[str, Any], str | None, FeatureSet, dict[str, Any]]:
    """The dataset a selection request names, the model that embeds it (None for uploaded features), its
    features store and what getting it cost (see `dataset_features`)."""
    dataset = dataset_record(store, request["dataset_id"])
    model = request["model"] if dataset["format"] == "jsonl" else None
    features, cost = dataset_features(dataset, model, request["max_length"], settings, store, progress, request, plan)
    return dataset, model, features, cost


def selection_options(
    request: dict[str, Any], dataset: dict[str, Any], model: str | None, store: ArtifactStore, progress: JobProgress
) -> dict[str, Any]:
    """`select_features`'s options from a selection request."""
    labels = read_labels(store.blob(dataset["sha256"])) if dataset["format"] == "jsonl" else None
    return {
        "method": request["method"],
        "lam": request["lambda"],
        "seed": request["seed"],
        "warm_start_ids": request["warm_start_ids"],
        "weighting": request.get("weighting"),
        "labels": labels,
        "group_by": request.get("group_by"),
        "algorithm": request.get("algorithm", "lazy"),
        "epsilon": request.get("epsilon", DEFAULT_EPSILON),
        "progress": progress,
        "model": model,
    }


def stage_results(ids: list[str], job: Job) -> list[dict[str, Any]]:
    """The results of stage jobs this job waited for (RQ keeps them), each with its `attempts`."""
    stages = Job.fetch_many(ids, job.connection, serializer=JOB_SERIALIZER)
    return [stage.return_value() | {"attempts": stage.meta.get("attempts", 1)} for stage in stages]  # type: ignore[union-attr,operator]

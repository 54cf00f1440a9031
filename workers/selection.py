"""The selection job: dataset (and model) in the artifact store to a result in the artifact store. Features
computed for (dataset, model, max_length, compression) are kept in the store and reused by later jobs.

A selection with a plan (see protocol.Plan) runs after its stage jobs (workers.stages): with shards it assembles
their parts into the features store; with partitions it runs GreeDi's merge round over their picks."""

from typing import Any

from fishersft.contract.compression import TARGET_COMPRESSION
from fishersft.contract.datasets import DatasetRecord
from fishersft.contract.selection import FeaturesCost, SelectionCreate, SelectionResult, Shard, needs_difficulty
from fishersft.data.dataset import read_labels
from fishersft.features.set import FeatureSet
from fishersft.features.target import TargetSet
from fishersft.pipeline import PartitionPicks, merge_partitions, select_features
from fishersft.service.protocol import Plan
from workers.runtime import JobContext, run_job, stage_results


def run_selection(request: dict[str, Any], plan: dict[str, Any] | None = None) -> dict[str, Any]:
    return run_job(lambda selection, context: _select(selection, context, Plan.of(plan)), SelectionCreate, request)


def _select(request: SelectionCreate, context: JobContext, plan: Plan) -> SelectionResult:
    dataset, features, cost = request_features(request, context, plan)
    job_id = context.job.id
    if plan.partitions:
        rounds = [picks for picks, _ in stage_results(plan.partition_ids(job_id), context.job, PartitionPicks)]
        result = merge_partitions(features, request, rounds, **selection_context(request, dataset, context))
        cost = stage_results([plan.features_id(job_id)], context.job, FeaturesCost)[0][0]  # the features job's
    else:
        result = select_features(features, request, **selection_context(request, dataset, context))
    if plan.shards:
        shards = stage_results(plan.shard_ids(job_id), context.job, Shard)
        result.shards = [shard.model_copy(update={"attempts": attempts}) for shard, attempts in shards]
    return result.with_cost(cost)


def request_features(
    request: SelectionCreate, context: JobContext, plan: Plan
) -> tuple[DatasetRecord, FeatureSet, FeaturesCost]:
    """The dataset a selection request names, its features store and what getting it cost."""
    dataset = context.features.dataset(request.dataset_id)
    difficulty = needs_difficulty([request.method])
    return dataset, *context.features.features(dataset, request, context.progress, plan, difficulty=difficulty)


def selection_context(request: SelectionCreate, dataset: DatasetRecord, context: JobContext) -> dict[str, Any]:
    """`select_features`'s keywords besides its options: the rows' labels, progress, the model's name and the
    target set (methods similarity and fisher)."""
    labels = read_labels(context.store.blob(dataset.sha256)) if dataset.is_text else None
    model = request.model if dataset.is_text else None
    return {"labels": labels, "progress": context.progress, "model": model, "target": target_features(request, context)}


def target_features(request: SelectionCreate, context: JobContext) -> TargetSet | None:
    """The set a selection serves, embedded by the same model."""
    if request.target_dataset_id is None:
        return None
    target = context.features.dataset(request.target_dataset_id)
    features = context.features.features(target, request, context.progress, compression=TARGET_COMPRESSION)[0]
    return TargetSet(request.target_dataset_id, features)

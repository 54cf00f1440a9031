"""The stage jobs of a selection spread over workers (see protocol.Plan): a shard embeds a range of examples
into its part of the features store; the features job makes the whole store before GreeDi's partitions; a
partition runs greedy over its share of the candidates. Their results stay in RQ for the selection."""

from typing import Any

from fishersft.contract.selection import FeaturesCost, SelectionCreate, Shard
from fishersft.pipeline import PartitionPicks, partition_candidates, select_features
from fishersft.service.protocol import Plan, ShardRequest
from workers.runtime import JobContext, run_job
from workers.selection import request_features, selection_context


def run_shard(request: dict[str, Any]) -> dict[str, Any]:
    return run_job(_shard, ShardRequest, request, save=False)


def run_features(request: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    return run_job(
        lambda selection, context: _features(selection, context, Plan.of(plan)), SelectionCreate, request, save=False
    )


def run_partition(request: dict[str, Any], plan: dict[str, Any], partition: int) -> dict[str, Any]:
    def work(selection: SelectionCreate, context: JobContext) -> PartitionPicks:
        return _partition(selection, context, Plan.of(plan), partition)

    return run_job(work, SelectionCreate, request, save=False)


def _shard(shard: ShardRequest, context: JobContext) -> Shard:
    _, seconds = context.features.part(shard, context.progress)
    return Shard(
        start=shard.start,
        examples=shard.stop - shard.start,
        worker=context.job.worker_name,
        embed_s=seconds or 0.0,
        cached=seconds is None,
    )


def _features(request: SelectionCreate, context: JobContext, plan: Plan) -> FeaturesCost:
    return request_features(request, context, plan)[2]


def _partition(request: SelectionCreate, context: JobContext, plan: Plan, partition: int) -> PartitionPicks:
    dataset, features, _ = request_features(request, context, plan)
    assert plan.partitions is not None, "a partition job belongs to a plan with partitions"
    candidates = partition_candidates(features, request, plan.partitions)[partition]
    result = select_features(features, request, candidates=candidates, **selection_context(request, dataset, context))
    return PartitionPicks(result=result, candidates=len(candidates), worker=context.job.worker_name)

"""/v1/selections: request a selection (a job), read it, its ids, list, cancel."""

from typing import Annotated

from fastapi import Depends, Response
from fastapi.responses import PlainTextResponse
from redis import Redis

from app import deps
from app.caller import Datasets
from app.checks import (
    allowed_max_length,
    dataset_for,
    known_ids,
    known_label,
    known_model,
    known_target,
    model_pass,
    quotas_met,
)
from app.errors import ApiError, documented
from app.jobs import Jobs
from app.routes.jobs import IdempotencyKey, create_job, found, job_router
from fishersft.contract.datasets import DatasetRecord
from fishersft.contract.jobs import SELECTIONS, JobBody, Selection
from fishersft.contract.selection import SelectionCreate
from fishersft.service.protocol import Plan, shard_ranges
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

router = job_router(SELECTIONS)


@router.post(
    "",
    status_code=202,
    response_model=Selection,
    summary="Request a selection",
    responses=documented(400, 404, 409, 422, 429),
)
def create_selection(
    body: SelectionCreate,
    response: Response,
    jobs: Annotated[Jobs, Depends(deps.jobs(SELECTIONS))],
    store: Annotated[ArtifactStore, Depends(deps.store)],
    datasets: Annotated[Datasets, Depends(deps.datasets)],
    settings: Annotated[Settings, Depends(deps.settings)],
    redis: Annotated[Redis, Depends(deps.redis)],
    idempotency_key: IdempotencyKey = None,
) -> JobBody:
    """Queues a job that embeds the dataset with the model (compressed features are cached per dataset, model,
    max_length and compression) and selects under the budget. Poll GET /v1/selections/{id}."""
    dataset = dataset_for(datasets, body.dataset_id, "body.dataset_id")
    if dataset.is_text:
        body.model = known_model(settings, body.model, "body.model")
    body.max_length = allowed_max_length(settings, body.model, body.max_length, "body.max_length")
    body.weighting = body.resolved_weighting(dataset.is_text)
    if body.group_by is not None:
        known_label(dataset, body.group_by, "body.group_by")
    model_pass(dataset, body.method, body.weighting)
    known_target(datasets, dataset, body.target_dataset_id, "body.target_dataset_id")
    if body.warm_start_ids:
        known_ids(store, dataset, body.warm_start_ids, "body.warm_start_ids")
    quotas_met(store, dataset, body, "body")
    return create_job(jobs, redis, body, idempotency_key, response, plan(dataset, body, settings, store))


def plan(dataset: DatasetRecord, body: SelectionCreate, settings: Settings, store: ArtifactStore) -> Plan:
    """Shards when the dataset is JSONL, above the shard size and its features (at the compression the job will
    use) are not cached; GreeDi partitions when asked for (the request model refuses them where they do not apply)."""
    shards, compression = [], None
    n = dataset.n_examples
    if dataset.is_text and body.model is not None and n > settings.shard_examples:
        resolved = body.compression(n, settings.registry.dim(body.model), settings.selection_memory_bytes)
        if not store.features_dir(dataset.sha256, body.model, body.max_length, resolved.key).exists():
            shards, compression = shard_ranges(n, settings.shard_examples), resolved
    return Plan(shards, compression, body.partitions)


@router.get(
    "/{job_id}/ids",
    response_class=PlainTextResponse,
    summary="The selected ids, one a line",
    responses=documented(404, 409),
)
def get_selection_ids(job_id: str, jobs: Annotated[Jobs, Depends(deps.jobs(SELECTIONS))]) -> PlainTextResponse:
    """For scripts: `curl .../ids > subset.txt`. 409 until the selection has succeeded."""
    selection = found(jobs.get(job_id), SELECTIONS, job_id)
    if selection.result is None:
        raise ApiError(409, "not_ready", f"selection {job_id} is {selection.status}, not succeeded")
    return PlainTextResponse("".join(f"{i}\n" for i in selection.result.selected))

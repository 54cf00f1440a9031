"""/v1/selections: request a selection (a job), read it, its ids, list, cancel."""

from typing import Annotated

from fastapi import Depends, Response
from fastapi.responses import PlainTextResponse
from redis import Redis

from app import deps
from app.caller import Datasets
from app.errors import ApiError, documented, invalid, shown
from app.jobs import SELECTIONS, Jobs
from app.routes.jobs import IdempotencyKey, create_job, found, job_router
from fishersft.contract.base import ExampleId
from fishersft.contract.datasets import DatasetRecord
from fishersft.contract.jobs import Selection
from fishersft.contract.selection import SelectionCreate
from fishersft.data.dataset import DEFAULT_MAX_LENGTH, read_ids
from fishersft.features.files import load_features
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
) -> Selection:
    """Queues a job that embeds the dataset with the model (compressed features are cached per dataset, model,
    max_length and compression) and selects under the budget. Poll GET /v1/selections/{id}."""
    dataset = dataset_for(datasets, body.dataset_id, "body.dataset_id")
    if dataset.is_text:
        body.model = known_model(settings, body.model, "body.model")
    body.max_length = allowed_max_length(settings, body.model, body.max_length, "body.max_length")
    body.weighting = body.resolved_weighting
    if body.group_by is not None:
        known_label(dataset, body.group_by, "body.group_by")
    if body.warm_start_ids:
        known_ids(store, dataset, body.warm_start_ids, "body.warm_start_ids")
    return create_job(jobs, redis, body, idempotency_key, response, plan(dataset, body, settings, store))


def plan(dataset: DatasetRecord, body: SelectionCreate, settings: Settings, store: ArtifactStore) -> Plan:
    """Shards when the dataset is JSONL, above the shard size and its features (at the compression the job will
    use) are not cached; GreeDi partitions when asked for (fisher greedy only)."""
    shards, compression = [], None
    n = dataset.n_examples
    if dataset.is_text and body.model is not None and n > settings.shard_examples:
        resolved = body.compression(n, settings.model_dim(body.model), settings.selection_memory_bytes)
        if not store.features_dir(dataset.sha256, body.model, body.max_length, resolved.key).exists():
            shards, compression = shard_ranges(n, settings.shard_examples), resolved
    return Plan(shards, compression, body.partitions if body.method == "fisher" else None)


def dataset_for(datasets: Datasets, dataset_id: str, field: str, jsonl: bool = False) -> DatasetRecord:
    """The dataset a request names (one the caller may see), or a 422 naming the field."""
    dataset = datasets.get(dataset_id)
    if dataset is None:
        raise ApiError(
            404,
            "dataset_not_found",
            f"no dataset {shown(dataset_id)}",
            [{"field": field, "message": "upload it first with POST /v1/datasets"}],
        )
    if jsonl and not dataset.is_text:
        raise invalid(
            field, f"dataset {shown(dataset_id)} is a features file: training needs text", "name a JSONL dataset"
        )
    return dataset


def known_label(dataset: DatasetRecord, field: str, name: str) -> None:
    """A 422 naming the request field unless the dataset's rows carry the string field `field`."""
    labels = dataset.labels
    if not dataset.is_text or field not in labels:
        carried = ", ".join(labels or {}) or "none"
        raise invalid(
            name,
            f"the rows of dataset {dataset.id!r} have no string field {shown(field)}",
            f"name a field the rows carry (the dataset's labels: {carried})",
        )


def known_ids(store: ArtifactStore, dataset: DatasetRecord, ids: list[ExampleId], field: str) -> None:
    """A 422 naming each id (the first 20) that is not in the dataset."""
    blob = store.blob(dataset.sha256)
    if dataset.is_text:
        present = {str(i) for i in read_ids(blob)}
    else:
        present = {str(i) for i in load_features(blob, suffix=f".{dataset.format}").ids}
    unknown = [(k, i) for k, i in enumerate(ids) if str(i) not in present]
    if unknown:
        details = [{"field": f"{field}.{k}", "message": f"{shown(str(i))} is not in the dataset"} for k, i in unknown]
        raise ApiError(422, "invalid_request", f"{len(unknown)} warm-start id(s) not in the dataset", details[:20])


def allowed_max_length(settings: Settings, model: str | None, value: int | None, field: str) -> int:
    """The request's max_length, or its default; a 422 naming the field above what the model and service allow."""
    largest = settings.max_length(model)
    if value is None:
        return min(DEFAULT_MAX_LENGTH, largest)
    if value > largest:
        why = f"model {model}'s context or " if model else ""
        raise invalid(
            field, f"max_length {value} is above {largest:,}", f"at most {largest:,} ({why}the service's limit)"
        )
    return value


def known_model(settings: Settings, model: str | None, field: str) -> str:
    """The model a request names (default: the default), or a 422 naming the field."""
    model = model or settings.default_model
    if model not in settings.model_names():
        raise invalid(field, f"unknown model {shown(model)}", f"one of: {', '.join(settings.model_names())}")
    return model


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

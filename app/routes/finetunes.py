"""/v1/finetunes: LoRA fine-tuning on a selection's subset (or select, then train), its events and adapter."""

from typing import Annotated

from fastapi import Depends, Response
from fastapi.responses import FileResponse
from redis import Redis

from app import deps
from app.caller import Datasets
from app.checks import (
    allowed_max_length,
    check_training,
    dataset_for,
    known_ids,
    known_label,
    known_model,
    quotas_met,
)
from app.errors import ApiError, documented, invalid, shown
from app.jobs import Jobs
from app.routes.jobs import IdempotencyKey, create_job, found, job_router
from fishersft.contract.jobs import FINETUNES, SELECTIONS, Finetune, JobBody
from fishersft.contract.training import FinetuneCreate
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

router = job_router(FINETUNES)


@router.post(
    "",
    status_code=202,
    response_model=Finetune,
    summary="Fine-tune a LoRA adapter on a subset",
    responses=documented(400, 404, 409, 422, 429),
)
def create_finetune(
    body: FinetuneCreate,
    response: Response,
    jobs: Annotated[Jobs, Depends(deps.jobs(FINETUNES))],
    selections: Annotated[Jobs, Depends(deps.jobs(SELECTIONS))],
    datasets: Annotated[Datasets, Depends(deps.datasets)],
    settings: Annotated[Settings, Depends(deps.settings)],
    store: Annotated[ArtifactStore, Depends(deps.store)],
    redis: Annotated[Redis, Depends(deps.redis)],
    idempotency_key: IdempotencyKey = None,
) -> JobBody:
    """Trains on `selection_id`'s subset, or selects from `dataset_id` as `selection` says first (one job). SFT on
    exactly the selection's loss tokens, same encoding and truncation. Held-out examples (`eval`) are never
    selected nor trained on. Poll GET /v1/finetunes/{id}; the adapter is at /v1/finetunes/{id}/adapter."""
    if body.selection_id is not None:
        selection = selections.get(body.selection_id)
        if selection is None:
            message = f"no selection {shown(body.selection_id)}"
            detail = {"field": "body.selection_id", "message": "name a selection of yours"}
            raise ApiError(404, "selection_not_found", message, [detail])
        if selection.status != "succeeded":
            message = f"selection {shown(body.selection_id)} is {selection.status}: it must have succeeded"
            raise invalid("body.selection_id", message)
        dataset = dataset_for(datasets, selection.request.dataset_id, "body.selection_id", jsonl=True)
        for field, given, used in (
            ("model", body.model, selection.request.model),
            ("training.max_length", body.training.max_length, selection.request.max_length),
        ):
            if given is not None and given != used:
                raise invalid(f"body.{field}", f"the selection used {used!r}: training uses the same loss tokens")
        body.model, body.training.max_length = selection.request.model, selection.request.max_length
    else:
        assert body.dataset_id is not None, "FinetuneCreate: exactly one of selection_id and dataset_id"
        dataset = dataset_for(datasets, body.dataset_id, "body.dataset_id", jsonl=True)
        assert body.selection is not None, "FinetuneCreate: selection with dataset_id"
        if body.selection.group_by is not None:
            known_label(dataset, body.selection.group_by, "body.selection.group_by")
        if body.selection.warm_start_ids:
            known_ids(store, dataset, body.selection.warm_start_ids, "body.selection.warm_start_ids")
        quotas_met(store, dataset, body.selection, "body.selection")
        body.model = known_model(settings, body.model, "body.model")
        body.training.max_length = allowed_max_length(
            settings, body.model, body.training.max_length, "body.training.max_length"
        )
    check_training(settings, datasets, body.model, body.lora, body.eval, dataset)
    return create_job(jobs, redis, body, idempotency_key, response)


@router.get(
    "/{job_id}/adapter",
    response_class=FileResponse,
    summary="The LoRA adapter (.tar.gz, peft layout)",
    responses={200: {"content": {"application/gzip": {}}}, **documented(404, 409)},
)
def get_adapter(
    job_id: str,
    jobs: Annotated[Jobs, Depends(deps.jobs(FINETUNES))],
    store: Annotated[ArtifactStore, Depends(deps.store)],
) -> FileResponse:
    """adapter_config.json, adapter_model.safetensors, the tokenizer files and a model card (README.md): extract
    it and `PeftModel.from_pretrained(base_model, directory)`."""
    finetune = found(jobs.get(job_id), FINETUNES, job_id)
    path = store.artifact(job_id, "adapter.tar.gz")
    if finetune.status != "succeeded" or not path.exists():
        raise ApiError(409, "not_ready", f"finetune {job_id} is {finetune.status}, not succeeded")
    return FileResponse(path, media_type="application/gzip", filename=f"{job_id}-adapter.tar.gz")

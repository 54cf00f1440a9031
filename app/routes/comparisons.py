"""/v1/comparisons: fisher against seeded random subsets, each fine-tuned identically and judged on one
held-out set, at equal examples and at equal loss tokens; the table and its plot."""

from typing import Annotated

from fastapi import Depends, Response
from fastapi.responses import FileResponse
from redis import Redis

from app import deps
from app.caller import Datasets
from app.checks import allowed_max_length, check_training, dataset_for, known_model, known_target
from app.errors import ApiError, documented, invalid
from app.jobs import Jobs
from app.routes.jobs import IdempotencyKey, create_job, found, job_router
from fishersft.contract.comparison import ComparisonCreate
from fishersft.contract.jobs import COMPARISONS, Comparison, JobBody
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

router = job_router(COMPARISONS)


@router.post(
    "",
    status_code=202,
    response_model=Comparison,
    summary="Compare fisher with random subsets",
    responses=documented(400, 404, 409, 422, 429),
)
def create_comparison(
    body: ComparisonCreate,
    response: Response,
    jobs: Annotated[Jobs, Depends(deps.jobs(COMPARISONS))],
    datasets: Annotated[Datasets, Depends(deps.datasets)],
    settings: Annotated[Settings, Depends(deps.settings)],
    redis: Annotated[Redis, Depends(deps.redis)],
    idempotency_key: IdempotencyKey = None,
) -> JobBody:
    """One job: embeds the dataset, holds out the eval set (by default 10% of the dataset; with a target, half of
    the target), selects the fisher subset and `random_seeds` random
    subsets of `budget.examples`, and fisher again at the random subsets' mean loss tokens; trains each with the
    same LoRA and training settings from the same base model; evaluates all on the same held-out set. The table
    is the result; GET .../plot.png draws held-out loss against step."""
    dataset = dataset_for(datasets, body.dataset_id, "body.dataset_id", jsonl=True)
    body.model = known_model(settings, body.model, "body.model")
    body.max_length = allowed_max_length(settings, body.model, body.max_length, "body.max_length")
    if body.training.max_length not in (None, body.max_length):
        raise invalid("body.training.max_length", "training.max_length must equal max_length (or be left out)")
    body.training.max_length = body.max_length
    check_training(settings, datasets, body.model, body.lora, body.eval, dataset)
    target = known_target(datasets, dataset, body.target_dataset_id, "body.target_dataset_id")
    if target is not None and body.eval is None and target.n_examples < 2:
        raise invalid(
            "body.target_dataset_id",
            f"without `eval`, half the target is held out and the methods select for the rest: "
            f"{target.n_examples} example is too few",
            "name a target of 2 or more examples, or give `eval`",
        )
    return create_job(jobs, redis, body, idempotency_key, response)


@router.get(
    "/{job_id}/plot.png",
    response_class=FileResponse,
    summary="Held-out loss vs training step, one line per run (PNG)",
    responses={200: {"content": {"image/png": {}}}, **documented(404, 409)},
)
def get_plot(
    job_id: str,
    jobs: Annotated[Jobs, Depends(deps.jobs(COMPARISONS))],
    store: Annotated[ArtifactStore, Depends(deps.store)],
) -> FileResponse:
    comparison = found(jobs.get(job_id), COMPARISONS, job_id)
    path = store.artifact(job_id, "plot.png")
    if comparison.status != "succeeded" or not path.exists():
        raise ApiError(409, "not_ready", f"comparison {job_id} is {comparison.status}, not succeeded")
    return FileResponse(path, media_type="image/png")

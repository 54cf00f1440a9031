"""/healthz, /readyz and /v1/models."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError

from app import deps
from app.schemas import Health, Model
from fishersft.service.monitor import live_workers
from fishersft.service.settings import Settings

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"], summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    tags=["health"],
    summary="Redis answers and a worker is alive",
    responses={503: {"model": Health, "description": "Redis unreachable or no live worker"}},
)
def readyz(redis: Annotated[Redis, Depends(deps.redis)]) -> JSONResponse:
    """`workers` counts live workers only: idle ones with a fresh heartbeat, busy ones whose job is alive. The
    registrations of dead ones (killed, say) are removed on the way."""
    try:
        redis.ping()
        workers = live_workers(redis)
    except RedisError:
        return JSONResponse(Health(status="unavailable", redis=False, workers=0).model_dump(), status_code=503)
    health = Health(status="ok" if workers else "unavailable", redis=True, workers=workers)
    return JSONResponse(health.model_dump(), status_code=200 if workers else 503)


models_router = APIRouter(prefix="/v1/models", tags=["models"])


@models_router.get("", response_model=list[Model], summary="Models selections can use")
def list_models(settings: Annotated[Settings, Depends(deps.settings)]) -> list[Model]:
    return [
        Model(name=name, default=name == settings.default_model, dim=settings.registry.dim(name))
        for name in settings.registry.names()
    ]

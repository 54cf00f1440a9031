"""The FastAPI application: `uvicorn app.main:create_app --factory`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from redis import Redis

from app import errors
from app.deps import authorize
from app.errors import documented
from app.routes import comparisons, datasets, finetunes, health, metrics, selections
from app.upload_limit import UploadLimit
from fishersft.service.monitor import Monitor
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore

DESCRIPTION = """FisherSFT data selection: upload an SFT dataset, ask for the most informative examples under a
budget, poll the job, fetch the selected ids. Errors are `{"error": {"code", "message", "details"}}`."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the API serves, it also runs the job monitor (fishersft.service.monitor), beside the workers' own:
    when the last worker dies, this one settles its job."""
    monitor = Monitor(app.state.redis, app.state.settings).start()
    try:
        yield
    finally:
        monitor.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    # /docs and /redoc load Swagger UI's and ReDoc's assets from the service itself (fastapi-offline's copies, at
    # /static-offline-docs), not from a CDN: on a network with no way out they still render
    app = FastAPIOffline(title="fishersft", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = Redis.from_url(settings.redis_url)
    app.state.store = ArtifactStore(settings.data_dir)
    app.state.store.sweep(older_than_s=settings.job_timeout_s)
    errors.install(app)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.include_router(health.router)
    app.include_router(metrics.router)
    for router in (datasets.router, selections.router, finetunes.router, comparisons.router):
        app.include_router(router, dependencies=[Depends(authorize)], responses=documented(401, 422, 503))
    app.include_router(health.models_router, dependencies=[Depends(authorize)], responses=documented(401, 422))
    return app

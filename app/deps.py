"""FastAPI dependencies: settings, Redis, the artifact store, jobs, and authentication.

They do no I/O, so they are `async def`: FastAPI runs them on the event loop instead of sending each one to the
thread pool (which cost more than the request's own work).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from redis import Redis

from app.errors import ApiError
from app.jobs import JobKind, Jobs
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def redis(request: Request) -> Redis:
    return request.app.state.redis


async def store(request: Request) -> ArtifactStore:
    return request.app.state.store


def jobs(kind: JobKind) -> Callable[..., Awaitable[Jobs]]:
    """The dependency that gives a route the jobs of one kind."""

    async def dependency(
        redis: Annotated[Redis, Depends(redis)],
        settings: Annotated[Settings, Depends(settings)],
        store: Annotated[ArtifactStore, Depends(store)],
    ) -> Jobs:
        return Jobs(kind, redis, settings, store)

    return dependency


async def authorize(
    settings: Annotated[Settings, Depends(settings)],
    authorization: Annotated[str | None, Header(description="`Bearer <key>` when keys are configured.")] = None,
) -> None:
    """Open when no API keys are configured (the local default); else a configured Bearer key is required."""
    if not settings.api_keys:
        return
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or key not in settings.api_keys:
        raise ApiError(401, "unauthorized", "missing or unknown API key: send `Authorization: Bearer <key>`")

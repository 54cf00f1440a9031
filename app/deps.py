"""FastAPI dependencies: settings, Redis, the artifact store, jobs, and authentication.

They do no I/O, so they are `async def`: FastAPI runs them on the event loop instead of sending each one to the
thread pool (which cost more than the request's own work).
"""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from redis import Redis

from app.caller import Caller, Datasets, fingerprint
from app.errors import ApiError
from app.jobs import Jobs
from fishersft.contract.jobs import JobKind
from fishersft.service.settings import Settings
from fishersft.service.store import ArtifactStore


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def redis(request: Request) -> Redis:
    return request.app.state.redis


async def store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def authorize(
    settings: Annotated[Settings, Depends(settings)],
    authorization: Annotated[
        str | None, Header(description="`Bearer <key>` when keys are configured.", max_length=1000)
    ] = None,
) -> Caller:
    """Open when no API keys are configured (the local default); else a configured Bearer key is required. Keys
    are compared in constant time, every configured key each time."""
    if not settings.api_keys and not settings.admin_api_keys:
        return Caller()
    scheme, _, key = (authorization or "").partition(" ")
    given = key.strip().encode()
    user = [hmac.compare_digest(given, k.encode()) for k in sorted(settings.api_keys)]
    admin = [hmac.compare_digest(given, k.encode()) for k in sorted(settings.admin_api_keys)]
    if scheme.lower() != "bearer" or not (any(user) or any(admin)):
        raise ApiError(401, "unauthorized", "missing or unknown API key: send `Authorization: Bearer <key>`")
    return Caller(owner=fingerprint(key.strip()), admin=any(admin))


async def authorize_metrics(
    settings: Annotated[Settings, Depends(settings)],
    authorization: Annotated[
        str | None, Header(description="`Bearer <token>` when FISHERSFT_METRICS_TOKEN is set.", max_length=1000)
    ] = None,
) -> None:
    """Open unless FISHERSFT_METRICS_TOKEN is set; then that Bearer token (not an API key) is required."""
    if settings.metrics_token is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.metrics_token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong metrics token: send `Authorization: Bearer <token>`")


def jobs(kind: JobKind) -> Callable[..., Awaitable[Jobs]]:
    """The dependency that gives a route the jobs of one kind, as the caller may see them."""

    async def dependency(
        redis: Annotated[Redis, Depends(redis)],
        settings: Annotated[Settings, Depends(settings)],
        store: Annotated[ArtifactStore, Depends(store)],
        caller: Annotated[Caller, Depends(authorize)],
    ) -> Jobs:
        return Jobs(kind, redis, settings, store, caller)

    return dependency


async def datasets(
    store: Annotated[ArtifactStore, Depends(store)], caller: Annotated[Caller, Depends(authorize)]
) -> Datasets:
    return Datasets(store, caller)

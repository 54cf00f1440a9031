"""Every error answers `{"error": {"code", "message", "details"}}` with the right status (shared CONVENTIONS):
ours, FastAPI's validation errors, Starlette's HTTP errors (with their headers, such as 405's `Allow`), Redis
being unreachable (503, retry later), and any bug (500, logged, never a traceback to the client)."""

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from fishersft.contract.errors import ErrorBody


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []
        self.headers = headers


log = logging.getLogger("fishersft.api")

REDIS_RETRY_AFTER_S = 5


def invalid(field: str, message: str, detail: str | None = None) -> ApiError:
    """A 422 about one request field: `message` for the error, `detail` (default: the same) for the field."""
    return ApiError(422, "invalid_request", message, [{"field": field, "message": detail or message}])


def shown(value: str, limit: int = 80) -> str:
    """A client-given value as an error message quotes it: repr, cut to `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def error_response(
    status: int, code: str, message: str, details: list[Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return JSONResponse(body, status_code=status, headers=headers)


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
    507: "insufficient_storage",
}


ERROR_DESCRIPTIONS = {
    400: "The body is not JSON (or, for an upload, multipart form data) the API can parse.",
    401: "Missing or unknown API key (when keys are configured).",
    404: "No such resource (or not the caller's).",
    409: "Conflict: not ready yet, already ended, a dataset in use by a job, or an Idempotency-Key reused with "
    "another body.",
    413: "The body is over the upload limit.",
    422: "The request is not valid: `details` name each field or line.",
    429: "Too many queued or running jobs: retry after `Retry-After` seconds.",
    503: "Redis is unavailable: retry after `Retry-After` seconds.",
    507: "The store is full (datasets or disk).",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the error body's schema."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}  # JSON even where the success is not (ids, PNG, tar)
    return {
        s: {
            "model": ErrorBody,
            "description": ERROR_DESCRIPTIONS[s],
            "content": {"application/json": {"schema": schema}},
        }
        for s in statuses
    }


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.details, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        details = [{"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in e.errors()]
        return error_response(422, "invalid_request", "the request is not valid; see details", details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        headers = dict(e.headers or {})
        if e.status_code == 405:  # Starlette names the methods of the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(e.status_code, HTTP_CODES.get(e.status_code, "error"), str(e.detail), headers=headers)

    @app.exception_handler(RedisError)
    async def redis_unavailable(request: Request, e: RedisError) -> JSONResponse:
        log.warning("%s %s: Redis unavailable: %s", request.method, request.url.path, e)
        message = "the job queue (Redis) is unavailable; retry later"
        return error_response(503, "unavailable", message, headers={"Retry-After": str(REDIS_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal_error", "the server failed on this request; it has been logged")


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents for the request's path (the OpenAPI paths are the routes)."""
    path = request.url.path
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path):
            return sorted(m.upper() for m in operations)
    return []

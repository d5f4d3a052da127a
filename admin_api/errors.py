"""JSON error bodies: every failure the API reports is {"code": ..., "message": ...}.

QueryBaseError subclasses carry a stable `code`; the HTTP status follows from it (STATUS_BY_CODE).
Request validation, unknown routes and store outages are turned into the same shape.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.errors import QueryBaseError, Unauthorized

log = structlog.get_logger("querybase.admin_api")

STATUS_BY_CODE = {
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "state_conflict": 409,
    "invalid": 422,
    "rate_limited": 429,
    "store": 503,
}


class RateLimited(Unauthorized):
    """Too many failed logins for this user or address (proxy.auth.limits.LoginLimiter)."""

    code = "rate_limited"


def error_response(code: str, message: str, status: int | None = None) -> JSONResponse:
    status = status if status is not None else STATUS_BY_CODE.get(code, 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


async def _querybase_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueryBaseError)
    response = error_response(exc.code, exc.message)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = "60"
    return response


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
    return error_response("invalid", "; ".join(problems) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response("not_found", f"no such endpoint: {request.method} {request.url.path}")
    if exc.status_code == 405:
        return error_response("method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
    return error_response("http_error", str(exc.detail), exc.status_code)


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # A unique constraint lost a race with a concurrent writer: the same thing as "already exists".
    return error_response("conflict", "a concurrent change conflicts with this one; retry")


async def _store_error(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("store_error", error=type(exc).__name__)
    return error_response("store", "the catalog store is unavailable")


async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal_error", error=type(exc).__name__)
    return error_response("internal", "internal error; see the QueryBase log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(QueryBaseError, _querybase_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(OperationalError, _store_error)
    app.add_exception_handler(DBAPIError, _store_error)
    app.add_exception_handler(Exception, _internal_error)

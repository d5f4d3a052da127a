"""Admin API application factory: the FastAPI app, its routers under /api/v1, and health endpoints.

A resource module exposes `router = APIRouter(...)` with paths relative to /api/v1; adding it to
ROUTERS below is all it takes to serve it (and to list it at /docs).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from admin_api import audit, auth, errors, grants, groups, metrics, requests, sessions, sources, users
from admin_api.deps import ApiContext
from proxy.errors import QueryBaseError

API_PREFIX = "/api/v1"

ROUTERS: list[APIRouter] = [
    auth.router,
    users.router,
    groups.router,
    sources.router,
    grants.router,
    audit.router,
    sessions.router,
    requests.router,
]


def create_app(ctx: ApiContext) -> FastAPI:
    """The admin API for one process; `ctx.readiness` raises a QueryBaseError naming what is not ready."""
    app = FastAPI(
        title="QueryBase admin API",
        version="1",
        description="Manage QueryBase: users, groups, sources, grants, change requests, audit, sessions.",
    )
    app.state.ctx = ctx
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(metrics.router)  # GET /metrics, at the root like /healthz

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        try:
            await ctx.readiness()
        except QueryBaseError as exc:
            return JSONResponse(
                {"status": "unavailable", "code": exc.code, "message": exc.message}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    return app

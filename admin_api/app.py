"""Admin API application factory. This issue serves health only; resources arrive with issue 5."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from proxy.errors import QueryBaseError


def create_app(readiness: Callable[[], Awaitable[None]]) -> FastAPI:
    """`readiness` raises a QueryBaseError naming what is not ready (store down, listener not up)."""
    app = FastAPI(title="QueryBase admin API", version="1")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            await readiness()
        except QueryBaseError as exc:
            return JSONResponse(
                {"status": "unavailable", "code": exc.code, "message": exc.message}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    return app

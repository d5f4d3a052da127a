"""What every admin API route depends on: the ApiContext, the caller (Principal) and role checks.

Routes take these as FastAPI dependencies:

    @router.get("/things")
    async def things(ctx: Ctx, user: AdminUser) -> ...

`Ctx` is the ApiContext of the app; `CurrentUser` is any authenticated, active user; `AdminUser`
additionally requires the admin flag (403 `forbidden` otherwise). Bearer credentials are either a
JWT from POST /api/v1/auth/token or an API token (`qbt_…`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from admin_api.tokens import Principal, authenticate
from proxy.auth.limits import LoginLimiter
from proxy.config import Settings
from proxy.errors import Forbidden, Unauthorized
from proxy.observe.sessions import SessionRegistry
from proxy.store.catalog import Catalog
from proxy.store.crypto import SecretBox
from proxy.store.db import Store

__all__ = [
    "AdminUser",
    "ApiContext",
    "Ctx",
    "CurrentUser",
    "Principal",
    "current_user",
    "get_ctx",
    "require_admin",
]


@dataclass
class ApiContext:
    """Everything the routes reach: one per process, built by proxy/server.py.

    `signing_key` signs JWTs (admin_api.tokens.derive_signing_key of the store secret key).
    `extras` is where other parts of the process attach what their routes need, by a documented
    name (e.g. "executor", "notifier"), without a change to this class.
    """

    settings: Settings
    store: Store
    catalog: Catalog
    box: SecretBox
    readiness: Callable[[], Awaitable[None]]
    sessions: SessionRegistry
    signing_key: bytes = field(repr=False)
    extras: dict[str, Any] = field(default_factory=dict)
    login_limiter: LoginLimiter = field(default_factory=LoginLimiter)


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]

_bearer = HTTPBearer(auto_error=False, description="a JWT from POST /api/v1/auth/token, or an API token")


async def current_user(
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The authenticated caller; 401 `unauthorized` without a valid bearer credential."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
    return await authenticate(ctx.store, ctx.signing_key, credentials.credentials)


CurrentUser = Annotated[Principal, Depends(current_user)]


async def require_admin(user: CurrentUser) -> Principal:
    """The caller, who must be an admin; 403 `forbidden` otherwise."""
    if not user.is_admin:
        raise Forbidden(f"user {user.name!r} is not an admin")
    return user


AdminUser = Annotated[Principal, Depends(require_admin)]

"""Routes that hand out and take back credentials: POST /auth/token, and admins' API tokens."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from admin_api import tokens
from admin_api.deps import AdminUser, Ctx
from admin_api.errors import RateLimited
from proxy.auth.limits import LoginFailed
from proxy.errors import Unauthorized

router = APIRouter(tags=["auth"])


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth 2 token type, not a secret
    expires_in: int = Field(description="seconds until the token expires")


@router.post(
    "/auth/token",
    responses={401: {"description": "wrong user name or password, or user disabled"}, 429: {}},
)
async def issue_token(body: TokenRequest, request: Request, ctx: Ctx) -> TokenResponse:
    """Trade a QueryBase user's password for a short-lived JWT (any active user)."""
    address = request.client.host if request.client else "unknown"
    try:
        ctx.login_limiter.check(body.username, address)
    except LoginFailed as exc:
        await tokens.audit_event(
            ctx.store,
            "api.login_failed",
            actor=body.username,
            payload={"address": address, "reason": "rate limited"},
        )
        raise RateLimited(exc.message) from None
    user, reason = await tokens.check_password(ctx.store, body.username, body.password)
    if user is None:
        ctx.login_limiter.failure(body.username, address)
        await tokens.audit_event(
            ctx.store, "api.login_failed", actor=body.username, payload={"address": address, "reason": reason}
        )
        raise Unauthorized("invalid user name or password")
    ttl = ctx.settings.admin.token_ttl_seconds
    token = tokens.mint_jwt(ctx.signing_key, user, ttl)
    await tokens.audit_event(ctx.store, "api.login", actor=user.name, payload={"address": address})
    return TokenResponse(access_token=token, expires_in=ttl)


class ApiTokenCreate(BaseModel):
    user: str = Field(min_length=1, max_length=63, description="the user the token acts as")
    name: str = Field(min_length=1, max_length=63, description="a label, e.g. what uses the token")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="none: never expires")


class ApiTokenOut(BaseModel):
    id: int
    name: str
    user: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="the token text; shown only in this response")


@router.post("/tokens", status_code=status.HTTP_201_CREATED, tags=["tokens"])
async def create_token(body: ApiTokenCreate, ctx: Ctx, admin: AdminUser) -> ApiTokenCreated:
    """Mint a long-lived API token acting as `user` (admin)."""
    text, view = await tokens.create_api_token(
        ctx.store, user=body.user, name=body.name, expires_in_days=body.expires_in_days, actor=admin.name
    )
    return ApiTokenCreated(token=text, **vars(view))


@router.get("/tokens", tags=["tokens"])
async def list_tokens(ctx: Ctx, _admin: AdminUser) -> list[ApiTokenOut]:
    """Every API token, revoked ones included; never the token text (admin)."""
    return [ApiTokenOut(**vars(v)) for v in await tokens.list_api_tokens(ctx.store)]


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["tokens"])
async def revoke_token(token_id: int, ctx: Ctx, admin: AdminUser) -> None:
    """Revoke an API token; it stops working at once (admin)."""
    await tokens.revoke_api_token(ctx.store, token_id, actor=admin.name)

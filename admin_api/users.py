"""Routes for QueryBase users (admin), and GET /me for any user."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from admin_api.deps import AdminUser, Ctx, CurrentUser
from proxy.store.catalog import UserView

router = APIRouter(tags=["users"])

PgAuth = Literal["scram", "md5", "password"]


class UserOut(BaseModel):
    name: str
    admin: bool
    active: bool
    groups: list[str]
    pg_auth: str
    created_at: str

    @classmethod
    def of(cls, v: UserView) -> UserOut:
        return cls(
            name=v.name,
            admin=v.admin,
            active=v.active,
            groups=list(v.groups),
            pg_auth=v.pg_auth,
            created_at=v.created_at,
        )


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024, description="write-only; stored only as verifiers")
    admin: bool = False
    pg_auth: PgAuth = "scram"


class UserUpdate(BaseModel):
    password: str | None = Field(default=None, min_length=1, max_length=1024, description="write-only")
    pg_auth: PgAuth | None = None
    active: bool | None = None
    admin: bool | None = None


@router.get("/users")
async def list_users(ctx: Ctx, _admin: AdminUser) -> list[UserOut]:
    return [UserOut.of(u) for u in await ctx.catalog.list_users()]


@router.post("/users", status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, ctx: Ctx, admin: AdminUser) -> UserOut:
    await ctx.catalog.add_user(
        body.name, body.password, admin=body.admin, pg_auth=body.pg_auth, actor=admin.name
    )
    return UserOut.of(await ctx.catalog.get_user(body.name))


@router.get("/users/{name}")
async def show_user(name: str, ctx: Ctx, _admin: AdminUser) -> UserOut:
    return UserOut.of(await ctx.catalog.get_user(name))


@router.patch("/users/{name}")
async def update_user(name: str, body: UserUpdate, ctx: Ctx, admin: AdminUser) -> UserOut:
    """Change the password (and PostgreSQL auth method), the active flag or the admin flag."""
    view = await ctx.catalog.update_user(
        name,
        password=body.password,
        pg_auth=body.pg_auth,
        active=body.active,
        admin=body.admin,
        actor=admin.name,
    )
    return UserOut.of(view)


@router.delete("/users/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(name: str, ctx: Ctx, admin: AdminUser) -> None:
    """Delete a user, their memberships and API tokens (refused if they have change requests)."""
    await ctx.catalog.remove_user(name, actor=admin.name)


class SourceAccess(BaseModel):
    source: str
    level: str | None = Field(description="read, propose or write; null: no data access")
    approve: bool


class MeOut(BaseModel):
    name: str
    admin: bool
    groups: list[str]
    access: list[SourceAccess]


@router.get("/me", tags=["me"])
async def me(ctx: Ctx, user: CurrentUser) -> MeOut:
    """The caller: name, admin flag, groups, and effective level per source (any user)."""
    view = await ctx.catalog.get_user(user.name)
    access = await ctx.catalog.access(user.name)
    return MeOut(
        name=view.name,
        admin=view.admin,
        groups=list(view.groups),
        access=[
            SourceAccess(source=src, level=lvl.value if lvl else None, approve=approve)
            for src, (lvl, approve) in access.items()
        ],
    )

"""Routes for grants: (group, source, level) (admin)."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from admin_api.deps import AdminUser, Ctx
from policies.types import Level

router = APIRouter(prefix="/grants", tags=["grants"])


class GrantBody(BaseModel):
    group: str = Field(min_length=1, max_length=63)
    source: str = Field(min_length=1, max_length=63)
    level: Level


@router.get("")
async def list_grants(
    ctx: Ctx, _admin: AdminUser, source: str | None = None, group: str | None = None
) -> list[GrantBody]:
    """Every grant, optionally only those of one source and/or one group."""
    return [
        GrantBody(group=g.group, source=g.source, level=Level(g.level))
        for g in await ctx.catalog.list_grants()
        if (source is None or g.source == source) and (group is None or g.group == group)
    ]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_grant(body: GrantBody, ctx: Ctx, admin: AdminUser) -> GrantBody:
    await ctx.catalog.grant(body.group, body.source, body.level, actor=admin.name)
    return body


@router.delete("/{group}/{source}/{level}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_grant(group: str, source: str, level: Level, ctx: Ctx, admin: AdminUser) -> None:
    await ctx.catalog.revoke(group, source, level, actor=admin.name)

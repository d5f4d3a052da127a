"""Routes for groups and their members (admin)."""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from admin_api.deps import AdminUser, Ctx
from proxy.store.catalog import GroupView

router = APIRouter(prefix="/groups", tags=["groups"])


class GroupOut(BaseModel):
    name: str
    members: list[str]

    @classmethod
    def of(cls, v: GroupView) -> GroupOut:
        return cls(name=v.name, members=list(v.members))


class GroupCreate(BaseModel):
    name: str = Field(min_length=1, max_length=63)


class MemberAdd(BaseModel):
    user: str = Field(min_length=1, max_length=63)


@router.get("")
async def list_groups(ctx: Ctx, _admin: AdminUser) -> list[GroupOut]:
    return [GroupOut.of(g) for g in await ctx.catalog.list_groups()]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_group(body: GroupCreate, ctx: Ctx, admin: AdminUser) -> GroupOut:
    await ctx.catalog.add_group(body.name, actor=admin.name)
    return GroupOut.of(await ctx.catalog.get_group(body.name))


@router.get("/{name}")
async def show_group(name: str, ctx: Ctx, _admin: AdminUser) -> GroupOut:
    return GroupOut.of(await ctx.catalog.get_group(name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_group(name: str, ctx: Ctx, admin: AdminUser) -> None:
    """Delete a group with its memberships and grants."""
    await ctx.catalog.remove_group(name, actor=admin.name)


@router.post("/{name}/members", status_code=status.HTTP_201_CREATED)
async def add_member(name: str, body: MemberAdd, ctx: Ctx, admin: AdminUser) -> GroupOut:
    await ctx.catalog.add_member(name, body.user, actor=admin.name)
    return GroupOut.of(await ctx.catalog.get_group(name))


@router.delete("/{name}/members/{user}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(name: str, user: str, ctx: Ctx, admin: AdminUser) -> None:
    await ctx.catalog.remove_member(name, user, actor=admin.name)

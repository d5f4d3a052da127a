"""Routes for live client sessions of this process: list and terminate (admin)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, status
from pydantic import BaseModel

from admin_api.deps import AdminUser, Ctx
from proxy.errors import NotFound
from proxy.observe.sessions import LiveSession

router = APIRouter(prefix="/sessions", tags=["sessions"])


class SessionOut(BaseModel):
    id: int
    protocol: str
    client: str
    user: str | None
    source: str | None
    state: str
    since: datetime

    @classmethod
    def of(cls, s: LiveSession) -> SessionOut:
        return cls(
            id=s.id,
            protocol=s.protocol,
            client=s.client,
            user=s.user,
            source=s.source,
            state=s.state,
            since=s.since,
        )


@router.get("")
async def list_sessions(ctx: Ctx, _admin: AdminUser) -> list[SessionOut]:
    """Client connections to this QueryBase process (not to other processes sharing the store)."""
    return [SessionOut.of(s) for s in sorted(ctx.sessions.list(), key=lambda s: s.id)]


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def terminate_session(session_id: int, ctx: Ctx, admin: AdminUser) -> None:
    """Close a client connection; its held requests stay as they are."""
    session = ctx.sessions.get(session_id)
    if session is None or not ctx.sessions.terminate(session_id):
        raise NotFound(f"no live session with id {session_id}")
    await ctx.catalog.audit(
        "session.terminated",
        actor=admin.name,
        source=session.source,
        subject=session.user,
        payload={"session_id": session_id, "protocol": session.protocol, "client": session.client},
    )

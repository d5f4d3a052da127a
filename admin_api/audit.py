"""Routes for the audit log (admin): list and filter events, verify the hash chain and its anchor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from admin_api.deps import AdminUser, Ctx
from proxy.audit import log as audit
from proxy.store.models import AuditEvent

router = APIRouter(prefix="/audit", tags=["audit"])

MAX_LIMIT = 1000
EXTRA = "audit_writer"  # ApiContext.extras name of the process's proxy.audit.log.AuditWriter (serve sets it)


class AuditEventOut(BaseModel):
    id: int
    occurred_at: datetime
    kind: str
    actor: str | None
    source: str | None
    subject: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    events: list[AuditEventOut] = Field(description="newest first")
    next_cursor: int | None = Field(description="pass as `before` for the next (older) page; null at the end")


class VerifyOut(BaseModel):
    ok: bool
    events: int
    first_bad_id: int | None
    problem: str | None
    description: str
    head_id: int | None = Field(description="the newest event's id when the chain is intact")
    anchor_file: str | None = Field(description="the anchor the chain's end was checked against")
    anchored_id: int | None = Field(description="the event the anchor records")
    note: str | None = Field(description="why the chain's end could not be checked, if it could not")


def _utc(moment: datetime) -> datetime:
    # Naive times in a query are UTC, like everything QueryBase stores.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@router.get("")
async def list_events(
    ctx: Ctx,
    _admin: AdminUser,
    kind: Annotated[str | None, Query(description="exact kind, or a prefix ending in '*' (user.*)")] = None,
    actor: str | None = None,
    source: str | None = None,
    subject: str | None = None,
    since: Annotated[
        datetime | None, Query(description="occurred at or after (ISO 8601; naive = UTC)")
    ] = None,
    until: Annotated[datetime | None, Query(description="occurred before (ISO 8601; naive = UTC)")] = None,
    before: Annotated[int | None, Query(ge=1, description="cursor: only events with a smaller id")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    """Events newest first. Page with `before=<next_cursor>` (stable while events are appended) or
    with `offset`."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if kind is not None:
        if kind.endswith("*"):
            query = query.where(AuditEvent.kind.startswith(kind[:-1], autoescape=True))
        else:
            query = query.where(AuditEvent.kind == kind)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if source is not None:
        query = query.where(AuditEvent.source == source)
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    if since is not None:
        query = query.where(AuditEvent.occurred_at >= _utc(since))
    if until is not None:
        query = query.where(AuditEvent.occurred_at < _utc(until))
    if before is not None:
        query = query.where(AuditEvent.id < before)
    async with ctx.store.session() as session:
        rows = (await session.scalars(query.offset(offset).limit(limit + 1))).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        events=[
            AuditEventOut(
                id=e.id,
                occurred_at=audit.as_utc(e.occurred_at),
                kind=e.kind,
                actor=e.actor,
                source=e.source,
                subject=e.subject,
                payload=e.payload,
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
            for e in rows
        ],
        next_cursor=rows[-1].id if more and rows else None,
    )


@router.get("/verify")
async def verify_chain(ctx: Ctx, _admin: AdminUser) -> VerifyOut:
    """Walk the whole hash chain, then check its end against the anchor file; report the first
    event that does not fit (a modified, deleted, reordered or inserted one, or the first of the
    newest events that were removed)."""
    result = await audit.verify_store(ctx.store, ctx.settings)
    return VerifyOut(
        ok=result.ok,
        events=result.events,
        first_bad_id=result.first_bad_id,
        problem=result.problem,
        description=result.describe(),
        head_id=result.head_id,
        anchor_file=result.anchor_file,
        anchored_id=result.anchored_id,
        note=result.note,
    )

"""Audit log: append-only, hash-chained events in the store, and the verifier that proves the chain.

Each event's `hash` is SHA-256 over the canonical JSON of its fields (id, time, kind, actor,
source, subject, payload) together with `prev_hash`, the previous event's hash (64 zeros for the
first). Changing, inserting or reordering any event, or deleting one that has successors, breaks
the chain at that event, and `verify()` names the first one that does not fit. Removing events
from the end of the chain (or appending a forged one there) needs an anchor of the newest hash
outside the store, which is not built yet. Catalog changes append in the same transaction as the
change itself, so a change without its record cannot be committed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from proxy.store.models import AuditEvent, utcnow

GENESIS_HASH = "0" * 64
_CHAIN_LOCK_ID = 0x51425F41  # "QB_A": serialises appends on a shared PostgreSQL store


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; QueryBase only ever stores UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def canonical_json(
    *,
    event_id: int,
    occurred_at: datetime,
    kind: str,
    actor: str | None,
    source: str | None,
    subject: str | None,
    payload: dict[str, Any],
    prev_hash: str,
) -> bytes:
    body = {
        "id": event_id,
        "occurred_at": as_utc(occurred_at).isoformat(timespec="microseconds"),
        "kind": kind,
        "actor": actor,
        "source": source,
        "subject": subject,
        "payload": payload,
        "prev_hash": prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(
        canonical_json(
            event_id=event.id,
            occurred_at=event.occurred_at,
            kind=event.kind,
            actor=event.actor,
            source=event.source,
            subject=event.subject,
            payload=event.payload,
            prev_hash=event.prev_hash,
        )
    ).hexdigest()


async def append(
    session: AsyncSession,
    kind: str,
    *,
    actor: str | None,
    source: str | None = None,
    subject: str | None = None,
    payload: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_ID})
    last = (
        await session.execute(select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    ).first()
    event = AuditEvent(
        id=(last.id + 1) if last else 1,
        occurred_at=utcnow(),
        kind=kind,
        actor=actor,
        source=source,
        subject=subject,
        payload=payload or {},
        prev_hash=last.hash if last else GENESIS_HASH,
    )
    event.hash = event_hash(event)
    session.add(event)
    await session.flush()
    return event


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    first_bad_id: int | None = None
    problem: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.events} events" if self.events else "no events"
        return f"audit chain broken at event #{self.first_bad_id}: {self.problem}"


async def iter_events(session: AsyncSession, batch: int = 1000) -> AsyncIterator[AuditEvent]:
    last_id = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        last_id = rows[-1].id


async def verify(session: AsyncSession) -> VerifyResult:
    """Walk the chain in id order and report the first event that does not fit."""
    prev_hash, prev_id, count = GENESIS_HASH, 0, 0
    async for event in iter_events(session):
        count += 1
        if event.id != prev_id + 1:
            return VerifyResult(False, count, event.id, f"event(s) missing after #{prev_id}")
        if event.prev_hash != prev_hash:
            return VerifyResult(
                False,
                count,
                event.id,
                "previous-hash link broken (event deleted, inserted or reordered)",
            )
        if event_hash(event) != event.hash:
            return VerifyResult(False, count, event.id, "content does not match its hash (modified)")
        prev_hash, prev_id = event.hash, event.id
    return VerifyResult(True, count)

"""Change requests: creating a held write in the store (with its audit event).

Review, execution and expiry arrive with the change-request issue; this module owns the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from policies.types import Classification, Kind
from proxy import audit
from proxy.errors import NotFound
from proxy.store.db import Store
from proxy.store.models import ChangeRequest, RequestStatus, Source, User, utcnow


@dataclass(frozen=True)
class HeldStatement:
    """Everything needed to run a held statement later exactly as the client sent it."""

    text: str
    classification: Classification
    parameters: list[dict[str, Any]] | None  # [{"type_oid", "format", "value_b64" | None}]
    session_facts: dict[str, Any]


def classification_record(c: Classification) -> dict[str, Any]:
    return {
        "kind": c.kind.value,
        "tables": list(c.tables),
        "statements": c.statements,
        "reason": c.reason,
    }


async def create_request(store: Store, *, user: str, source: str, held: HeldStatement) -> int:
    """Insert a pending change request and its audit event; return the request id."""
    async with store.write_session() as session, session.begin():
        requester = await session.scalar(select(User).where(User.name == user))
        src = await session.scalar(select(Source).where(Source.name == source))
        if requester is None or src is None:
            raise NotFound(f"user {user!r} or source {source!r} vanished")
        ddl = held.classification.kind is Kind.DDL
        required = (src.ddl_approvals_required or src.approvals_required) if ddl else src.approvals_required
        row = ChangeRequest(
            source_id=src.id,
            requester_id=requester.id,
            status=RequestStatus.PENDING,
            kind=held.classification.kind.value,
            statement_text=held.text,
            parameters=held.parameters,
            classification=classification_record(held.classification),
            session_facts=held.session_facts,
            approvals_required=required,
            expires_at=utcnow() + timedelta(seconds=src.request_ttl_seconds),
        )
        session.add(row)
        await session.flush()
        await audit.append(
            session,
            "request.created",
            actor=user,
            source=source,
            subject=str(row.id),
            payload={"kind": row.kind, "tables": list(held.classification.tables)},
        )
        return row.id

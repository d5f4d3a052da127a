"""Change requests in the store: creation, who may see and decide them, and every state change.

The state machine is DESIGN.md §4:

    pending → approved → executing → succeeded | failed      (executing → unknown: recovery failed)
    pending → rejected | expired | cancelled

Every transition is a compare-and-set on `(id, status, version)` in one write transaction that
also appends its audit event, so two processes sharing a store can never both move a request out
of the same state — in particular only one of them ever *claims* it for execution. The rules
(no self-approval, approvers of that source only, one reject rejects, a comment to reject,
expiry) live here so the admin API and the CLI enforce the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policies.types import Classification, Kind, Level
from proxy.audit import log as audit
from proxy.audit.log import as_utc
from proxy.errors import Forbidden, InvalidInput, NotFound, StateConflict
from proxy.store.db import Store
from proxy.store.models import (
    ChangeRequest,
    Decision,
    Execution,
    Grant,
    Membership,
    RequestStatus,
    Review,
    Source,
    User,
    utcnow,
)

FINAL = frozenset(
    {
        RequestStatus.SUCCEEDED,
        RequestStatus.FAILED,
        RequestStatus.REJECTED,
        RequestStatus.EXPIRED,
        RequestStatus.CANCELLED,
        RequestStatus.UNKNOWN,
    }
)
MAX_LIST = 500
MAX_COMMENT = 2000


@dataclass(frozen=True)
class HeldStatement:
    """Everything needed to run a held statement later exactly as the client sent it."""

    text: str
    classification: Classification
    parameters: list[dict[str, Any]] | None  # per protocol: see docs/change-requests.md
    session_facts: dict[str, Any]


@dataclass(frozen=True)
class ReviewView:
    reviewer: str
    decision: str
    comment: str
    created_at: datetime


@dataclass(frozen=True)
class ExecutionView:
    executor: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    outcome: str | None
    rows_affected: dict[str, Any] | None
    sqlstate: str | None
    mysql_errno: int | None
    error_message: str | None
    returning_rows: list[Any] | None
    upstream_txid: str | None
    upstream_xid: str | None


@dataclass(frozen=True)
class RequestView:
    id: int
    source: str
    engine: str
    requester: str
    status: str
    kind: str
    statement: str
    approvals: int
    approvals_required: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    decided_at: datetime | None


@dataclass(frozen=True)
class RequestDetail(RequestView):
    parameters: list[Any] | None
    classification: dict[str, Any]
    session_facts: dict[str, Any]
    reviews: tuple[ReviewView, ...]
    execution: ExecutionView | None


@dataclass(frozen=True)
class Claimed:
    """A request this process has claimed for execution: what the executor needs to run it."""

    id: int
    source: str
    kind: str
    text: str
    parameters: list[Any] | None
    session_facts: dict[str, Any]


@dataclass(frozen=True)
class Actor:
    """Who is acting on requests: a QueryBase user (the API or CLI authenticated them)."""

    name: str
    is_admin: bool = False


def classification_record(c: Classification) -> dict[str, Any]:
    return {
        "kind": c.kind.value,
        "tables": list(c.tables),
        "statements": c.statements,
        "reason": c.reason,
    }


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


# --------------------------------------------------------------------------------- creation


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


# ------------------------------------------------------------------------------- visibility


@dataclass(frozen=True)
class _Who:
    user_id: int
    name: str
    is_admin: bool
    approves: frozenset[int]  # source ids this user may approve on


async def _who(session: AsyncSession, actor: Actor) -> _Who:
    user = await session.scalar(select(User).where(User.name == actor.name))
    if user is None or not user.is_active:
        raise NotFound(f"user {actor.name!r} does not exist or is disabled")
    approves = await session.scalars(
        select(Grant.source_id)
        .join(Membership, Membership.group_id == Grant.group_id)
        .where(Membership.user_id == user.id, Grant.level == Level.APPROVE)
    )
    return _Who(user.id, user.name, user.is_admin or actor.is_admin, frozenset(approves))


def _visible(who: _Who, row: ChangeRequest) -> bool:
    return who.is_admin or row.requester_id == who.user_id or row.source_id in who.approves


def _approvals(row: ChangeRequest) -> int:
    return sum(1 for r in row.reviews if r.decision is Decision.APPROVE)


async def _names(session: AsyncSession, rows: list[ChangeRequest]) -> tuple[dict[int, str], dict[int, Any]]:
    user_ids = {r.requester_id for r in rows} | {rv.reviewer_id for r in rows for rv in r.reviews}
    source_ids = {r.source_id for r in rows}
    users = dict((await session.execute(select(User.id, User.name).where(User.id.in_(user_ids)))).all())
    sources = {
        sid: (name, engine)
        for sid, name, engine in (
            await session.execute(
                select(Source.id, Source.name, Source.engine).where(Source.id.in_(source_ids))
            )
        ).all()
    }
    return users, sources


def _view(row: ChangeRequest, users: dict[int, str], sources: dict[int, Any]) -> RequestView:
    name, engine = sources[row.source_id]
    return RequestView(
        id=row.id,
        source=name,
        engine=str(engine),
        requester=users.get(row.requester_id, "?"),
        status=row.status.value,
        kind=row.kind,
        statement=row.statement_text,
        approvals=_approvals(row),
        approvals_required=row.approvals_required,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        expires_at=_utc(row.expires_at),
        decided_at=_utc(row.decided_at),
    )


def _detail(row: ChangeRequest, users: dict[int, str], sources: dict[int, Any]) -> RequestDetail:
    base = _view(row, users, sources)
    ex = row.execution
    execution = (
        None
        if ex is None
        else ExecutionView(
            executor=ex.executor,
            started_at=as_utc(ex.started_at),
            finished_at=_utc(ex.finished_at),
            duration_ms=ex.duration_ms,
            outcome=ex.outcome,
            rows_affected=ex.rows_affected,
            sqlstate=ex.sqlstate,
            mysql_errno=ex.mysql_errno,
            error_message=ex.error_message,
            returning_rows=ex.returning_rows,
            upstream_txid=ex.upstream_txid,
            upstream_xid=ex.upstream_xid,
        )
    )
    return RequestDetail(
        **base.__dict__,
        parameters=row.parameters,
        classification=row.classification,
        session_facts=row.session_facts,
        reviews=tuple(
            ReviewView(users.get(r.reviewer_id, "?"), r.decision.value, r.comment, as_utc(r.created_at))
            for r in sorted(row.reviews, key=lambda r: r.id)
        ),
        execution=execution,
    )


async def _load(session: AsyncSession, request_id: int) -> ChangeRequest:
    row = await session.scalar(
        select(ChangeRequest)
        .where(ChangeRequest.id == request_id)
        .options(selectinload(ChangeRequest.reviews), selectinload(ChangeRequest.execution))
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound(f"change request {request_id} does not exist")
    return row


# ------------------------------------------------------------------------------------ reads


async def list_requests(
    store: Store,
    actor: Actor,
    *,
    status: str | None = None,
    source: str | None = None,
    requester: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[RequestView]:
    """Requests the actor may see (admin: all; approver: their sources'; anyone: their own),
    newest first."""
    if status is not None and status not in {s.value for s in RequestStatus}:
        raise InvalidInput(f"unknown status {status!r} (one of {', '.join(s.value for s in RequestStatus)})")
    limit = max(1, min(limit, MAX_LIST))
    async with store.session() as session:
        who = await _who(session, actor)
        query = select(ChangeRequest).options(selectinload(ChangeRequest.reviews))
        if not who.is_admin:
            query = query.where(
                (ChangeRequest.requester_id == who.user_id) | ChangeRequest.source_id.in_(who.approves)
            )
        if status is not None:
            query = query.where(ChangeRequest.status == RequestStatus(status))
        if source is not None:
            query = query.join(Source, Source.id == ChangeRequest.source_id).where(Source.name == source)
        if requester is not None:
            query = query.join(User, User.id == ChangeRequest.requester_id).where(User.name == requester)
        if since is not None:
            query = query.where(ChangeRequest.created_at >= since)
        query = query.order_by(ChangeRequest.id.desc()).limit(limit).offset(max(0, offset))
        rows = list(await session.scalars(query))
        users, sources = await _names(session, rows)
        return [_view(r, users, sources) for r in rows]


async def get_request(store: Store, actor: Actor, request_id: int) -> RequestDetail:
    """One request with its parameters, reviews and execution; NotFound if the actor may not see it."""
    async with store.session() as session:
        who = await _who(session, actor)
        row = await _load(session, request_id)
        if not _visible(who, row):
            raise NotFound(f"change request {request_id} does not exist")
        users, sources = await _names(session, [row])
        return _detail(row, users, sources)


async def request_view(store: Store, request_id: int) -> RequestDetail:
    """A request as the system sees it (for notifications and the executor); no visibility check."""
    async with store.session() as session:
        row = await _load(session, request_id)
        users, sources = await _names(session, [row])
        return _detail(row, users, sources)


# ---------------------------------------------------------------------------- transitions


async def _move(
    session: AsyncSession,
    row: ChangeRequest,
    to: RequestStatus,
    *,
    decided: bool = False,
) -> None:
    """Compare-and-set the status; StateConflict if another process moved it first."""
    values: dict[str, Any] = {"status": to, "version": row.version + 1, "updated_at": utcnow()}
    if decided:
        values["decided_at"] = utcnow()
    result = await session.execute(
        update(ChangeRequest)
        .where(
            ChangeRequest.id == row.id,
            ChangeRequest.status == row.status,
            ChangeRequest.version == row.version,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StateConflict(f"change request {row.id} changed meanwhile; look at it again")


def _require_pending(row: ChangeRequest, doing: str) -> None:
    if row.status is not RequestStatus.PENDING:
        raise StateConflict(
            f"change request {row.id} is {row.status.value}; only a pending request can be {doing}"
        )


def _is_due(row: ChangeRequest, now: datetime) -> bool:
    return row.expires_at is not None and as_utc(row.expires_at) <= now


async def _expire_now(session: AsyncSession, row: ChangeRequest, source: str) -> None:
    await _move(session, row, RequestStatus.EXPIRED, decided=True)
    await audit.append(session, "request.expired", actor=None, source=source, subject=str(row.id))


async def review(
    store: Store, actor: Actor, request_id: int, decision: Decision, comment: str = ""
) -> RequestDetail:
    """Record an approval or rejection. Returns the request afterwards: `approved` once the last
    required approval landed (the caller then hands it to the executor), `rejected` on a reject."""
    comment = comment.strip()
    if decision is Decision.REJECT and not comment:
        raise InvalidInput("a rejection needs a comment saying why")
    if len(comment) > MAX_COMMENT:
        raise InvalidInput(f"the comment is longer than {MAX_COMMENT} characters")
    expired = False
    async with store.write_session() as session, session.begin():
        who = await _who(session, actor)
        row = await _load(session, request_id)
        source_name = await session.scalar(select(Source.name).where(Source.id == row.source_id))
        assert source_name is not None
        if row.source_id not in who.approves:
            if not _visible(who, row):
                raise NotFound(f"change request {request_id} does not exist")
            raise Forbidden(f'user "{who.name}" has no approve grant on source "{source_name}"')
        if row.requester_id == who.user_id:
            raise Forbidden("you cannot review your own change request")
        _require_pending(row, "reviewed")
        if _is_due(row, utcnow()):
            await _expire_now(session, row, source_name)
            expired = True
        else:
            if any(r.reviewer_id == who.user_id for r in row.reviews):
                raise StateConflict(f"you already reviewed change request {request_id}")
            session.add(
                Review(request_id=row.id, reviewer_id=who.user_id, decision=decision, comment=comment)
            )
            approvals = _approvals(row) + (decision is Decision.APPROVE)
            if decision is Decision.REJECT:
                await _move(session, row, RequestStatus.REJECTED, decided=True)
                kind = "request.rejected"
            elif approvals >= row.approvals_required:
                await _move(session, row, RequestStatus.APPROVED, decided=True)
                kind = "request.approved"
            else:
                await _move(session, row, RequestStatus.PENDING)
                kind = "request.reviewed"
            await audit.append(
                session,
                kind,
                actor=who.name,
                source=source_name,
                subject=str(row.id),
                payload={
                    "decision": decision.value,
                    "comment": comment,
                    "approvals": approvals,
                    "required": row.approvals_required,
                },
            )
    if expired:
        raise StateConflict(f"change request {request_id} expired before it was reviewed")
    return await request_view(store, request_id)


async def cancel(store: Store, actor: Actor, request_id: int, comment: str = "") -> RequestDetail:
    """The requester (or an admin) withdraws a pending request."""
    async with store.write_session() as session, session.begin():
        who = await _who(session, actor)
        row = await _load(session, request_id)
        if not _visible(who, row):
            raise NotFound(f"change request {request_id} does not exist")
        if row.requester_id != who.user_id and not who.is_admin:
            raise Forbidden("only the requester (or an admin) can cancel a change request")
        _require_pending(row, "cancelled")
        source_name = await session.scalar(select(Source.name).where(Source.id == row.source_id))
        await _move(session, row, RequestStatus.CANCELLED, decided=True)
        await audit.append(
            session,
            "request.cancelled",
            actor=who.name,
            source=source_name,
            subject=str(row.id),
            payload={"comment": comment.strip()[:MAX_COMMENT]},
        )
    return await request_view(store, request_id)


async def expire_due(store: Store, now: datetime | None = None) -> list[int]:
    """Move every pending request past its expiry to `expired`; return their ids."""
    moment = now or utcnow()
    done: list[int] = []
    async with store.session() as session:
        due = list(
            await session.scalars(
                select(ChangeRequest.id).where(
                    ChangeRequest.status == RequestStatus.PENDING, ChangeRequest.expires_at <= moment
                )
            )
        )
    for request_id in due:
        async with store.write_session() as session, session.begin():
            row = await _load(session, request_id)
            if row.status is not RequestStatus.PENDING or not _is_due(row, moment):
                continue
            source_name = await session.scalar(select(Source.name).where(Source.id == row.source_id))
            assert source_name is not None
            try:
                await _expire_now(session, row, source_name)
            except StateConflict:
                continue
        done.append(request_id)
    return done


async def approved_ids(store: Store) -> list[int]:
    """Approved requests nobody has claimed yet (oldest first)."""
    async with store.session() as session:
        return list(
            await session.scalars(
                select(ChangeRequest.id)
                .where(ChangeRequest.status == RequestStatus.APPROVED)
                .order_by(ChangeRequest.id)
            )
        )


async def claim(store: Store, request_id: int, executor: str) -> Claimed | None:
    """Atomically move an approved request to `executing` and create its one execution row.

    Returns None when it is not (or no longer) approved — someone else claimed it, or it never was.
    """
    async with store.write_session() as session, session.begin():
        row = await _load(session, request_id)
        if row.status is not RequestStatus.APPROVED:
            return None
        source_name = await session.scalar(select(Source.name).where(Source.id == row.source_id))
        assert source_name is not None
        try:
            await _move(session, row, RequestStatus.EXECUTING)
        except StateConflict:
            return None
        session.add(Execution(request_id=row.id, executor=executor, outcome="running"))
        await audit.append(
            session,
            "request.executing",
            actor=None,
            source=source_name,
            subject=str(row.id),
            payload={"executor": executor},
        )
        return Claimed(
            id=row.id,
            source=source_name,
            kind=row.kind,
            text=row.statement_text,
            parameters=row.parameters,
            session_facts=row.session_facts,
        )


async def mark_execution(
    store: Store,
    request_id: int,
    *,
    txid: str | None = None,
    xid: str | None = None,
    phase: str | None = None,
) -> None:
    """Record the upstream transaction identity (and phase) before the executor goes further."""
    values: dict[str, Any] = {}
    if txid is not None:
        values["upstream_txid"] = txid
    if xid is not None:
        values["upstream_xid"] = xid
    if phase is not None:
        values["outcome"] = phase
    async with store.write_session() as session, session.begin():
        result = await session.execute(
            update(Execution).where(Execution.request_id == request_id).values(**values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound(f"change request {request_id} has no execution record")


@dataclass(frozen=True)
class Outcome:
    """How an execution ended, as the executor (or crash recovery) saw it."""

    status: RequestStatus  # SUCCEEDED | FAILED | UNKNOWN
    rows_affected: dict[str, Any] | None = None
    sqlstate: str | None = None
    mysql_errno: int | None = None
    error_message: str | None = None
    returning_rows: list[Any] | None = None
    duration_ms: float | None = None
    recovered: bool = False


async def finish(store: Store, request_id: int, outcome: Outcome) -> RequestDetail:
    """Record the final state of an executing request and its execution row (one transaction)."""
    async with store.write_session() as session, session.begin():
        row = await _load(session, request_id)
        if row.status is not RequestStatus.EXECUTING:
            raise StateConflict(f"change request {request_id} is {row.status.value}, not executing")
        source_name = await session.scalar(select(Source.name).where(Source.id == row.source_id))
        await _move(session, row, outcome.status)
        await session.execute(
            update(Execution)
            .where(Execution.request_id == request_id)
            .values(
                finished_at=utcnow(),
                duration_ms=outcome.duration_ms,
                outcome=outcome.status.value,
                rows_affected=outcome.rows_affected,
                sqlstate=outcome.sqlstate,
                mysql_errno=outcome.mysql_errno,
                error_message=outcome.error_message,
                returning_rows=outcome.returning_rows,
            )
        )
        await audit.append(
            session,
            f"request.{outcome.status.value}",
            actor=None,
            source=source_name,
            subject=str(row.id),
            payload={
                "rows_affected": outcome.rows_affected,
                "sqlstate": outcome.sqlstate,
                "mysql_errno": outcome.mysql_errno,
                "error": outcome.error_message,
                "recovered": outcome.recovered,
            },
        )
    return await request_view(store, request_id)


@dataclass(frozen=True)
class InFlight:
    """An `executing` request found at startup, with what was recorded about its transaction."""

    id: int
    source: str
    kind: str
    executor: str
    txid: str | None
    xid: str | None
    phase: str | None
    started_at: datetime


async def executing(store: Store) -> list[InFlight]:
    async with store.session() as session:
        rows = await session.execute(
            select(ChangeRequest.id, Source.name, ChangeRequest.kind, Execution)
            .join(Source, Source.id == ChangeRequest.source_id)
            .join(Execution, Execution.request_id == ChangeRequest.id)
            .where(ChangeRequest.status == RequestStatus.EXECUTING)
            .order_by(ChangeRequest.id)
        )
        return [
            InFlight(
                rid,
                name,
                kind,
                ex.executor,
                ex.upstream_txid,
                ex.upstream_xid,
                ex.outcome,
                as_utc(ex.started_at),
            )
            for rid, name, kind, ex in rows.all()
        ]


async def status_counts(store: Store) -> dict[str, int]:
    async with store.session() as session:
        rows = await session.execute(
            select(ChangeRequest.status, func.count()).group_by(ChangeRequest.status)
        )
        return {status.value: count for status, count in rows.all()}

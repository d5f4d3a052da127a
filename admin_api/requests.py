"""Change-request routes: list, show, approve, reject, cancel, and submit a script (DESIGN.md §4).

Who sees what: an admin sees every request; an approver the requests of the sources they may
approve on; everyone their own. A request the caller may not see is `404 not_found`. Deciding
needs `approve` on the request's source (`403 forbidden` otherwise, also for your own request);
deciding a request that is not pending is `409 state_conflict`. The rules live in
proxy/store/requests.py and proxy/changes/service.py, shared with the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from admin_api.deps import Ctx, CurrentUser
from proxy.changes.service import ChangeService
from proxy.errors import StoreError
from proxy.store import requests as rq
from proxy.store.models import Decision

router = APIRouter(prefix="/requests", tags=["change requests"])

EXTRA = "changes"  # ApiContext.extras key under which serve attaches the ChangeService


class RequestOut(BaseModel):
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


class ReviewOut(BaseModel):
    reviewer: str
    decision: str
    comment: str
    created_at: datetime


class ExecutionOut(BaseModel):
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
    upstream_txid: str | None = Field(description="PostgreSQL txid; MySQL: the connection id that ran it")
    upstream_xid: str | None = Field(description="MySQL XA transaction id")


class RequestDetailOut(RequestOut):
    parameters: list[Any] | None = Field(description="held parameters: type, format and base64 value")
    classification: dict[str, Any]
    session_facts: dict[str, Any]
    reviews: list[ReviewOut]
    execution: ExecutionOut | None


class RequestList(BaseModel):
    items: list[RequestOut]
    limit: int
    offset: int


class DecisionIn(BaseModel):
    comment: str = Field(default="", max_length=rq.MAX_COMMENT)


class SubmitIn(BaseModel):
    source: str = Field(min_length=1, max_length=63)
    sql: str = Field(min_length=1, description="one or more statements, held as one change request")


def _out(view: rq.RequestView) -> RequestOut:
    return RequestOut(**{name: getattr(view, name) for name in RequestOut.model_fields})


def _detail(view: rq.RequestDetail) -> RequestDetailOut:
    base = {name: getattr(view, name) for name in RequestOut.model_fields}
    ex = view.execution
    return RequestDetailOut(
        **base,
        parameters=view.parameters,
        classification=view.classification,
        session_facts=view.session_facts,
        reviews=[ReviewOut(**r.__dict__) for r in view.reviews],
        execution=None
        if ex is None
        else ExecutionOut(**{name: getattr(ex, name) for name in ExecutionOut.model_fields}),
    )


def _changes(ctx: Any) -> ChangeService:
    service = ctx.extras.get(EXTRA)
    if service is None:
        raise StoreError("change requests are not served by this process")
    assert isinstance(service, ChangeService)
    return service


@router.get("", response_model=RequestList, summary="List change requests the caller may see")
async def list_requests(
    ctx: Ctx,
    user: CurrentUser,
    status_: str | None = Query(default=None, alias="status"),
    source: str | None = None,
    requester: str | None = None,
    since: datetime | None = None,
    limit: int = Query(default=50, ge=1, le=rq.MAX_LIST),
    offset: int = Query(default=0, ge=0),
) -> RequestList:
    views = await rq.list_requests(
        ctx.store,
        rq.Actor(user.name, user.is_admin),
        status=status_,
        source=source,
        requester=requester,
        since=since,
        limit=limit,
        offset=offset,
    )
    return RequestList(items=[_out(v) for v in views], limit=limit, offset=offset)


@router.post(
    "",
    response_model=RequestDetailOut,
    status_code=status.HTTP_201_CREATED,
    summary="Submit a SQL script as a change request (propose or write on the source)",
)
async def submit(ctx: Ctx, user: CurrentUser, body: SubmitIn) -> RequestDetailOut:
    view = await _changes(ctx).submit(rq.Actor(user.name, user.is_admin), body.source, body.sql)
    return _detail(view)


@router.get("/{request_id}", response_model=RequestDetailOut, summary="Show one change request")
async def show(ctx: Ctx, user: CurrentUser, request_id: int) -> RequestDetailOut:
    return _detail(await rq.get_request(ctx.store, rq.Actor(user.name, user.is_admin), request_id))


@router.post(
    "/{request_id}/approve", response_model=RequestDetailOut, summary="Approve (approvers of its source)"
)
async def approve(
    ctx: Ctx, user: CurrentUser, request_id: int, body: DecisionIn | None = None
) -> RequestDetailOut:
    comment = body.comment if body is not None else ""
    view = await _changes(ctx).review(
        rq.Actor(user.name, user.is_admin), request_id, Decision.APPROVE, comment
    )
    return _detail(view)


@router.post(
    "/{request_id}/reject",
    response_model=RequestDetailOut,
    summary="Reject with a comment (approvers of its source)",
)
async def reject(ctx: Ctx, user: CurrentUser, request_id: int, body: DecisionIn) -> RequestDetailOut:
    view = await _changes(ctx).review(
        rq.Actor(user.name, user.is_admin), request_id, Decision.REJECT, body.comment
    )
    return _detail(view)


@router.post("/{request_id}/cancel", response_model=RequestDetailOut, summary="Cancel (the requester)")
async def cancel(
    ctx: Ctx, user: CurrentUser, request_id: int, body: DecisionIn | None = None
) -> RequestDetailOut:
    comment = body.comment if body is not None else ""
    view = await _changes(ctx).cancel(rq.Actor(user.name, user.is_admin), request_id, comment)
    return _detail(view)

"""The change-request service: what the wire sessions, the admin API and the CLI call.

It ties the store's state machine (`proxy.store.requests`) to the executor and notifications:
a created request notifies `created`; a review notifies `approved`/`rejected` and, when the last
required approval lands, hands the request to the executor; cancelling notifies `cancelled`.
The API and the CLI go through the same methods, so they enforce the same rules.
A decision (the completing approval, or a rejection) is timed from the request's creation in
`querybase_change_request_decision_seconds`; status transitions are counted where every event is
published (`Executor.publish`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from policies import mysql as mysql_policy
from policies import pg as pg_policy
from policies.decide import decide
from policies.types import Action, Kind, SourcePolicy
from proxy.changes.executor import Executor, controls_transactions
from proxy.errors import Forbidden, InvalidInput, QueryBaseError
from proxy.observe import metrics
from proxy.store import requests as rq
from proxy.store.catalog import Catalog
from proxy.store.db import Store
from proxy.store.models import Decision, utcnow

MAX_SCRIPT = 1024 * 1024

log = structlog.get_logger("querybase.changes")


@dataclass(frozen=True)
class Waited:
    """How waiting mode ended: the request in a final state, None (still pending at the deadline),
    or `cancelled` (the client cancelled its statement, which withdrew the request)."""

    view: rq.RequestDetail | None
    cancelled: bool = False


class ChangeService:
    def __init__(self, store: Store, catalog: Catalog, executor: Executor) -> None:
        self.store, self.catalog, self.executor = store, catalog, executor

    async def created(self, *, user: str, source: str, held: rq.HeldStatement) -> int:
        """A wire session held a statement: store it and notify."""
        request_id = await rq.create_request(self.store, user=user, source=source, held=held)
        self.executor.publish("created", await rq.request_view(self.store, request_id), actor=user)
        return request_id

    async def review(
        self,
        actor: rq.Actor,
        request_id: int,
        decision: Decision,
        comment: str = "",
        *,
        wait: bool = False,
    ) -> rq.RequestDetail:
        """Approve or reject. The approval that completes the count starts the execution: in the
        background (API), or awaited when `wait` (the CLI, which then prints the outcome)."""
        view = await rq.review(self.store, actor, request_id, decision, comment)
        if view.status in ("approved", "rejected"):
            decided = view.decided_at or utcnow()
            metrics.CHANGE_REQUEST_DECISION.labels(view.source, view.status).observe(
                max((decided - view.created_at).total_seconds(), 0.0)
            )
        if view.status == "rejected":
            self.executor.publish("rejected", view, actor=actor.name, comment=comment)
        elif view.status == "approved":
            self.executor.publish("approved", view, actor=actor.name, comment=comment or None)
            if wait:
                return await self.executor.run(request_id) or await rq.request_view(self.store, request_id)
            self.executor.kick(request_id)
        return view

    async def cancel(self, actor: rq.Actor, request_id: int, comment: str = "") -> rq.RequestDetail:
        view = await rq.cancel(self.store, actor, request_id, comment)
        self.executor.publish("cancelled", view, actor=actor.name, comment=comment or None)
        return view

    async def submit(self, actor: rq.Actor, source: str, script: str) -> rq.RequestDetail:
        """A SQL script proposed through the API or CLI: held as one change request, if the user
        could have proposed it over the wire (propose or write on the source)."""
        text = script.strip()
        if not text:
            raise InvalidInput("the script is empty")
        if len(text.encode()) > MAX_SCRIPT:
            raise InvalidInput(f"the script is larger than {MAX_SCRIPT // 1024} KiB")
        view = await self.catalog.get_source(source)
        level, _ = await self.catalog.levels(actor.name, source)
        classify = pg_policy.classify if view.engine == "postgresql" else mysql_policy.classify
        classification = classify(text)
        if classification.kind in (Kind.READ, Kind.TRANSACTION, Kind.SESSION):
            raise InvalidInput("the script changes nothing (it only reads); run it directly instead")
        if controls_transactions(view.engine, text):
            raise InvalidInput(
                "the script controls transactions itself (BEGIN, COMMIT, …): leave them out, "
                "QueryBase runs the whole script in one transaction"
            )
        # Judge it as a proposer would be judged: privileged statements and blocked DDL stay refused.
        verdict = decide(classification, level, SourcePolicy(block_ddl=view.block_ddl))
        if verdict.action is Action.DENY or level is None or level.value == "read":
            raise Forbidden(f"cannot propose this on source {source!r}: {verdict.reason or 'needs propose'}")
        if verdict.action is Action.FORWARD and classification.kind is Kind.PRIVILEGED:
            raise Forbidden("privileged statements cannot be submitted as change requests")
        held = rq.HeldStatement(
            text=text,
            classification=classification,
            parameters=None,
            session_facts={"protocol": "api", "submitted_by": actor.name},
        )
        request_id = await self.created(user=actor.name, source=source, held=held)
        return await rq.request_view(self.store, request_id)

    async def wait_for_decision(
        self, user: str, request_id: int, seconds: float, cancel: asyncio.Event, reason: str
    ) -> Waited:
        """Waiting mode for a wire session: wait up to `seconds` for the request to end; when
        `cancel` is set first (CancelRequest, KILL QUERY), the requester withdraws it."""
        waiter = asyncio.ensure_future(self.executor.wait_final(request_id, seconds))
        stop = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait([waiter, stop], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the session went away: stop polling for it
            waiter.cancel()
            raise
        finally:
            stop.cancel()
        if waiter.done():
            if waiter.exception() is not None:  # the store could not be read: answer as still pending
                log.warning("wait_failed", request=request_id, error=str(waiter.exception()))
                return Waited(None)
            return Waited(waiter.result())
        waiter.cancel()
        with contextlib.suppress(QueryBaseError):  # decided meanwhile: it is no longer pending
            await self.cancel(rq.Actor(user), request_id, reason)
        return Waited(None, cancelled=True)

"""The executor: runs an approved change request exactly once on its source's write login.

Run (DESIGN.md §4):

1. *Claim*: one compare-and-set in the store moves the request `approved → executing` and
   creates its single execution row. Whoever loses the race (another `serve` process, the CLI)
   does nothing.
2. Open a fresh connection with the source's write login and start a transaction whose
   identity is recorded in the store before the statement runs: PostgreSQL `BEGIN;
   SELECT txid_current()`; MySQL `XA START '<xid>'` (the xid recorded first).
3. Run the held statement with exactly the held text and parameters: PostgreSQL simple query
   (no parameters) or Parse/Bind/Execute with the same parameter bytes, type OIDs and format
   codes; MySQL COM_QUERY or COM_STMT_PREPARE + COM_STMT_EXECUTE with the same parameter types
   and wire values.
4. Commit (MySQL: `XA END`, `XA PREPARE`, record "prepared", `XA COMMIT`) and record the
   outcome: rows affected per statement, SQLSTATE/errno and message on failure, duration and up
   to `RETURNING_ROWS` rows of any result.

Crash recovery (`recover()`, at startup) resolves every request still `executing` from the
database itself and never runs one again: PostgreSQL asks `txid_status(txid)`; MySQL looks for
the xid in `XA RECOVER` and commits it when it is there (it was prepared, so the statement ran
completely), otherwise reads the recorded phase. Only when the database cannot tell (MySQL DDL,
which cannot run inside XA; a txid PostgreSQL no longer knows) does the request become `unknown`.

Metrics: every published event counts the request's new status in `querybase_change_requests_total`
(claims count `executing`), executions count by outcome, and the background sweep also runs
`proxy.observe.metrics.sync()` so this process's figures stay current in multiprocess mode.

`QUERYBASE_TEST_FAULT=<point>` (tests only) kills the process with SIGKILL at a named point
between claim and final record, so the crash tests can prove all of the above.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from policies import mysql as mysql_policy
from policies import pg as pg_policy
from policies.types import Kind
from proxy.errors import QueryBaseError
from proxy.observe import metrics
from proxy.store import requests as rq
from proxy.store.catalog import Catalog
from proxy.store.db import Store
from proxy.store.models import RequestStatus, utcnow
from proxy.upstream.base import UpstreamTarget, upstream_target
from proxy.upstream.mysql import UpstreamConnection as MyUpstream
from proxy.upstream.pg import UpstreamConnection as PgUpstream
from proxy.wire.mysql import protocol as my
from proxy.wire.pg import protocol as pgp

log = structlog.get_logger("querybase.executor")

RETURNING_ROWS = 100
TRANSACTION_CONTROL = (
    "the statement controls transactions itself (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, XA, LOCK TABLES or "
    "autocommit): QueryBase runs a change request in one transaction of its own, so it did not run it"
)
NOT_STARTED = "interrupted before the statement ran (no transaction was recorded); nothing was applied"
DDL_INTERRUPTED = "interrupted while running DDL, which MySQL cannot run in a transaction: check by hand"
FAULT_ENV = "QUERYBASE_TEST_FAULT"
FAULT_POINTS = ("after_claim", "after_begin", "after_statement", "after_prepare", "after_commit")
RECOVERY_WAIT = 30.0  # how long a crashed process's transaction may still look "in progress"
STALE_EXECUTION = 3600.0  # an execution by a process on another host is presumed dead after this
SWEEP_INTERVAL = 5.0
_FINAL = frozenset(s.value for s in rq.FINAL)


class Publisher(Protocol):
    def publish(self, event: str, request: dict[str, Any]) -> None: ...


def fault(point: str) -> None:
    """Test-only crash point: SIGKILL this process when QUERYBASE_TEST_FAULT names `point`."""
    if os.environ.get(FAULT_ENV) == point:
        log.warning("test_fault", point=point)
        os.kill(os.getpid(), signal.SIGKILL)


def controls_transactions(engine: str, text: str) -> bool:
    if engine == "postgresql":
        return pg_policy.controls_transactions(text)
    return mysql_policy.controls_transactions(text)


def executor_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def executor_gone(item: rq.InFlight) -> bool:
    """Whether the process that claimed `item` is certainly gone: on this host, its pid no longer
    runs; on another host (which cannot be asked), the execution is older than STALE_EXECUTION."""
    host, _, pid_text = item.executor.rpartition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return (utcnow() - item.started_at).total_seconds() > STALE_EXECUTION


class Deferred(Exception):
    """Recovery cannot decide yet (the executing process may still be working): try again later."""


def event_payload(
    view: rq.RequestDetail, actor: str | None = None, comment: str | None = None
) -> dict[str, Any]:
    """What notifications carry about a request (no parameter values)."""
    ex = view.execution
    rows = ex.rows_affected.get("total") if ex is not None and ex.rows_affected else None
    return {
        "id": view.id,
        "source": view.source,
        "requester": view.requester,
        "status": view.status,
        "kind": view.kind,
        "statement": view.statement,
        "approvals": view.approvals,
        "approvals_required": view.approvals_required,
        "created_at": view.created_at.isoformat(),
        "actor": actor,
        "comment": comment,
        "rows_affected": rows,
        "error": ex.error_message if ex is not None else None,
        "url": None,
    }


class StatementFailed(Exception):
    """The held statement (or its commit) failed in the database: a normal `failed` outcome."""

    def __init__(self, message: str, sqlstate: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.message, self.sqlstate, self.errno = message, sqlstate, errno


@dataclass
class _Result:
    statements: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] | None = None
    rows: list[Any] = field(default_factory=list)

    def add_row(self, row: Any) -> None:
        if len(self.rows) < RETURNING_ROWS:
            self.rows.append(row)

    def affected(self) -> dict[str, Any]:
        total = sum(s["rows"] for s in self.statements if isinstance(s.get("rows"), int))
        return {"total": total, "statements": self.statements}

    def returning(self) -> list[Any] | None:
        if not self.rows:
            return None
        if self.columns:
            return [
                dict(zip(self.columns, row, strict=False)) if isinstance(row, list) else row
                for row in self.rows
            ]
        return self.rows


def _b64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


# ------------------------------------------------------------------------------ PostgreSQL


class _PgRun:
    def __init__(self, conn: PgUpstream, encoding: str) -> None:
        self.conn, self.encoding = conn, encoding

    async def exchange(self, data: bytes, result: _Result | None = None) -> list[tuple[bytes, bytes]]:
        """Send `data`, read up to ReadyForQuery; StatementFailed on an ErrorResponse."""
        self.conn.transport.write(data)
        error: dict[str, str] | None = None
        seen: list[tuple[bytes, bytes]] = []
        while True:
            type_byte, body = await self.conn.read()
            if type_byte == b"E":
                error = pgp.parse_error_fields(body)
            elif type_byte == b"Z":
                self.conn.status = body[:1]
                if error is not None:
                    raise StatementFailed(error.get("M", "error"), error.get("C"))
                return seen
            elif result is not None and type_byte == b"T":
                result.columns = pgp.parse_row_description(body, self.encoding)
            elif result is not None and type_byte == b"D":
                if len(result.rows) < RETURNING_ROWS:
                    result.add_row(
                        [
                            None if v is None else v.decode(self.encoding, "replace")
                            for v in pgp.parse_data_row(body)
                        ]
                    )
            elif result is not None and type_byte == b"C":
                tag, rows = pgp.parse_command_complete(body, self.encoding)
                result.statements.append({"tag": tag, "rows": rows})
            else:
                seen.append((type_byte, body))

    def query(self, sql: str) -> bytes:
        return pgp.message(b"Q", sql.encode(self.encoding) + b"\x00")


async def _pg_execute(claimed: rq.Claimed, target: UpstreamTarget, store: Store) -> _Result:
    facts = claimed.session_facts
    client_encoding = str(facts.get("client_encoding") or "UTF8")
    encoding = pgp.python_encoding(client_encoding) or "utf-8"
    params = (("application_name", f"querybase request {claimed.id}"), ("client_encoding", client_encoding))
    conn = await PgUpstream.connect(target, params)
    run = _PgRun(conn, encoding)
    try:
        begin = _Result()
        await run.exchange(run.query("BEGIN; SELECT txid_current()"), begin)
        txid = str(begin.rows[0][0])
        await rq.mark_execution(store, claimed.id, txid=txid, phase="begun")
        fault("after_begin")
        result = _Result()
        try:
            if claimed.parameters is None:
                await run.exchange(run.query(claimed.text), result)
            else:
                values = [_b64(p.get("value_b64")) for p in claimed.parameters]
                formats = [int(p.get("format", 0)) for p in claimed.parameters]
                oids = [int(p.get("type_oid", 0)) for p in claimed.parameters]
                await run.exchange(
                    pgp.make_parse(b"", claimed.text.encode(encoding), oids)
                    + pgp.make_bind(b"", b"", formats, values, [0])
                    + pgp.make_describe(b"P", b"")
                    + pgp.make_execute(b"")
                    + pgp.SYNC,
                    result,
                )
        except StatementFailed:
            await run.exchange(run.query("ROLLBACK"))
            raise
        fault("after_statement")
        commit = _Result()
        await run.exchange(run.query("COMMIT"), commit)
        if not commit.statements or commit.statements[-1]["tag"] != "COMMIT":
            raise StatementFailed("the transaction was rolled back at COMMIT", "40000")
        fault("after_commit")
        return result
    finally:
        conn.close()


async def _pg_recover(item: rq.InFlight, target: UpstreamTarget, gone: bool) -> rq.Outcome:
    if item.txid is None:
        if not gone:
            raise Deferred("the executing process has not begun its transaction yet")
        return rq.Outcome(
            RequestStatus.FAILED,
            error_message=NOT_STARTED,
            recovered=True,
        )
    conn = await PgUpstream.connect(target, (("application_name", "querybase recovery"),))
    run = _PgRun(conn, "utf-8")
    try:
        deadline = time.monotonic() + RECOVERY_WAIT
        while True:
            answer = _Result()
            await run.exchange(run.query(f"SELECT txid_status({int(item.txid)})"), answer)
            state = answer.rows[0][0] if answer.rows else None
            if state == "committed":
                return rq.Outcome(
                    RequestStatus.SUCCEEDED,
                    error_message=None,
                    recovered=True,
                    rows_affected={"total": None, "statements": [], "note": "recovered after a restart"},
                )
            if state == "aborted":
                return rq.Outcome(
                    RequestStatus.FAILED,
                    error_message="interrupted before commit; PostgreSQL rolled the transaction back",
                    recovered=True,
                )
            if state == "in progress" and not gone:
                raise Deferred(f"transaction {item.txid} is still running")
            if state != "in progress" or time.monotonic() > deadline:
                return rq.Outcome(
                    RequestStatus.UNKNOWN,
                    error_message=f"PostgreSQL cannot tell what became of transaction {item.txid} ({state})",
                    recovered=True,
                )
            await asyncio.sleep(0.5)  # the crashed process's backend has not noticed yet
    finally:
        conn.close()


# ----------------------------------------------------------------------------------- MySQL

_MY_CAPS = (
    my.Capability.CLIENT_MULTI_STATEMENTS
    | my.Capability.CLIENT_MULTI_RESULTS
    | my.Capability.CLIENT_PS_MULTI_RESULTS
    | my.Capability.CLIENT_CONNECT_WITH_DB
)


class _MyRun:
    def __init__(self, conn: MyUpstream) -> None:
        self.conn = conn

    async def command(
        self, command: my.Command, body: bytes, result: _Result | None = None
    ) -> my.ResultScanner:
        self.conn.transport.write(my.make_packets(my.make_command(command, body), 0)[0])
        scanner = my.ResultScanner(bool(self.conn.capabilities & my.Capability.CLIENT_DEPRECATE_EOF))
        scanner.start(command)
        binary = command is my.Command.COM_STMT_EXECUTE
        while True:
            _, payload = await self.conn.read()
            rows_before = scanner.rows
            event = scanner.feed(payload)
            if result is not None and scanner.rows > rows_before:
                result.add_row(_binary_row(payload) if binary else _text_row(payload))
            if (
                result is not None
                and event in (my.ScanEvent.DONE, my.ScanEvent.RESULT_DONE)
                and scanner.error is None
            ):
                ok = scanner.ok
                result.statements.append(
                    {"rows": ok.affected_rows if ok is not None else scanner.rows, "result_rows": ok is None}
                )
            if event is my.ScanEvent.DONE:
                break
            if event is my.ScanEvent.LOCAL_INFILE:
                self.conn.transport.write(my.make_packets(b"", 2)[0])  # never send a file
        if scanner.error is not None:
            raise StatementFailed(scanner.error.message, scanner.error.sqlstate, scanner.error.errno)
        return scanner

    async def query(self, sql: str, result: _Result | None = None) -> my.ResultScanner:
        return await self.command(my.Command.COM_QUERY, sql.encode("utf-8"), result)


def _text_row(payload: bytes) -> list[str | None]:
    values: list[str | None] = []
    pos = 0
    while pos < len(payload):
        if payload[pos] == 0xFB:
            values.append(None)
            pos += 1
            continue
        raw, pos = my.read_lenenc_str(payload, pos)
        values.append(None if raw is None else raw.decode("utf-8", "replace"))
    return values


def _binary_row(payload: bytes) -> dict[str, str]:
    # Binary-protocol rows need the column types to decode; they are kept as sent.
    return {"binary_row_b64": base64.b64encode(payload).decode()}


def _stmt_execute_body(statement_id: int, parameters: list[dict[str, Any]]) -> bytes:
    count = len(parameters)
    bitmap = bytearray((count + 7) // 8)
    types = bytearray()
    values = bytearray()
    for index, param in enumerate(parameters):
        types += bytes([int(param["type"]) & 0xFF, my.UNSIGNED_FLAG if param.get("unsigned") else 0])
        raw = _b64(param.get("value_b64"))
        if raw is None:
            bitmap[index >> 3] |= 1 << (index & 7)
        else:
            values += raw
    head = statement_id.to_bytes(4, "little") + b"\x00" + (1).to_bytes(4, "little")
    if not count:
        return head
    return head + bytes(bitmap) + b"\x01" + bytes(types) + bytes(values)


async def _my_connect(target: UpstreamTarget, schema: str | None) -> MyUpstream:
    params: list[tuple[str, str]] = [("capabilities", str(int(_MY_CAPS)))]
    if schema:
        params.append(("schema", schema))
    return await MyUpstream.connect(target, tuple(params))


def _my_text(claimed: rq.Claimed) -> bytes:
    """The held statement's exact bytes: the session keeps them in `statement_b64` when the text
    is not exactly what the client sent (raw `_binary'…'` bytes show as U+FFFD in the text)."""
    raw = claimed.session_facts.get("statement_b64")
    return base64.b64decode(raw) if isinstance(raw, str) else claimed.text.encode("utf-8")


async def _my_statement(run: _MyRun, claimed: rq.Claimed, result: _Result) -> None:
    charset = claimed.session_facts.get("character_set_client")
    if charset in mysql_policy.SAFE_CLIENT_CHARSETS and not str(charset).startswith("utf8"):
        await run.query(f"SET NAMES {charset}")  # the bytes are in the client's character set
    if claimed.parameters is None:
        await run.command(my.Command.COM_QUERY, _my_text(claimed), result)
        return
    prepared = await run.command(my.Command.COM_STMT_PREPARE, _my_text(claimed))
    assert prepared.prepare_ok is not None
    statement_id = prepared.prepare_ok.statement_id
    await run.command(
        my.Command.COM_STMT_EXECUTE, _stmt_execute_body(statement_id, claimed.parameters), result
    )
    run.conn.transport.write(
        my.make_packets(my.make_command(my.Command.COM_STMT_CLOSE, statement_id.to_bytes(4, "little")), 0)[0]
    )


async def _my_execute(claimed: rq.Claimed, target: UpstreamTarget, store: Store) -> _Result:
    schema = str(claimed.session_facts.get("schema") or "") or None
    conn = await _my_connect(target, schema)
    run = _MyRun(conn)
    result = _Result()
    try:
        if claimed.kind == Kind.DDL.value:
            # DDL commits implicitly and cannot run inside XA: no transaction identity to record.
            await rq.mark_execution(store, claimed.id, phase="ddl")
            fault("after_begin")
            await _my_statement(run, claimed, result)
            fault("after_statement")
            fault("after_commit")
            return result
        xid = f"querybase-{claimed.id}-{secrets.token_hex(6)}"
        await rq.mark_execution(store, claimed.id, txid=str(conn.thread_id), xid=xid, phase="begun")
        await run.query(f"XA START '{xid}'")
        fault("after_begin")
        try:
            await _my_statement(run, claimed, result)
            await run.query(f"XA END '{xid}'")
        except StatementFailed:
            await _quietly(run, f"XA END '{xid}'")
            await _quietly(run, f"XA ROLLBACK '{xid}'")
            raise
        fault("after_statement")
        await run.query(f"XA PREPARE '{xid}'")
        await rq.mark_execution(store, claimed.id, phase="prepared")
        fault("after_prepare")
        await run.query(f"XA COMMIT '{xid}'")
        fault("after_commit")
        return result
    finally:
        conn.close()


async def _quietly(run: _MyRun, sql: str) -> None:
    with contextlib.suppress(StatementFailed):
        await run.query(sql)


async def _my_recover(item: rq.InFlight, target: UpstreamTarget, gone: bool) -> rq.Outcome:
    if not gone:
        raise Deferred("the executing process may still be working on it")
    if item.phase == "ddl":
        return rq.Outcome(
            RequestStatus.UNKNOWN,
            error_message=DDL_INTERRUPTED,
            recovered=True,
        )
    if item.xid is None:
        return rq.Outcome(
            RequestStatus.FAILED,
            error_message=NOT_STARTED,
            recovered=True,
        )
    conn = await _my_connect(target, None)
    run = _MyRun(conn)
    try:
        if item.txid is not None:
            # The crashed process's connection may not be gone yet, and the server still runs
            # whatever it had received (even an XA PREPARE): end it first, then read the record.
            await _kill_and_wait(run, int(item.txid))
        listing = _Result()
        await run.query("XA RECOVER", listing)
        prepared = {str(row[3]) for row in listing.rows if isinstance(row, list) and len(row) >= 4}
        if item.xid in prepared:
            # Prepared means the statement ran completely; the request was approved: finish it.
            await run.query(f"XA COMMIT '{item.xid}'")
            return rq.Outcome(
                RequestStatus.SUCCEEDED,
                recovered=True,
                rows_affected={
                    "total": None,
                    "statements": [],
                    "note": "committed by recovery after a restart",
                },
            )
        if item.phase == "prepared":
            return rq.Outcome(
                RequestStatus.SUCCEEDED,
                recovered=True,
                rows_affected={"total": None, "statements": [], "note": "recovered after a restart"},
            )
        return rq.Outcome(
            RequestStatus.FAILED,
            error_message="interrupted before XA PREPARE; MySQL rolled the transaction back",
            recovered=True,
        )
    finally:
        conn.close()


async def _kill_and_wait(run: _MyRun, thread_id: int) -> None:
    with contextlib.suppress(StatementFailed):  # already gone: 1094 unknown thread
        await run.query(f"KILL CONNECTION {thread_id}")
    deadline = time.monotonic() + RECOVERY_WAIT
    while time.monotonic() < deadline:
        listing = _Result()
        await run.query(
            f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {thread_id}",  # noqa: S608 - an int
            listing,
        )
        if listing.rows and listing.rows[0][0] == "0":
            return
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------------- executor


class Executor:
    """Runs approved requests (in background tasks) and resolves interrupted ones at startup."""

    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        publisher: Publisher | None = None,
        name: str | None = None,
    ) -> None:
        self.store, self.catalog, self.publisher = store, catalog, publisher
        self.name = name or executor_name()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running: set[int] = set()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- notifications and waiters

    def publish(
        self, event: str, view: rq.RequestDetail, actor: str | None = None, comment: str | None = None
    ) -> None:
        metrics.CHANGE_REQUESTS.labels(view.source, view.status).inc()
        if self.publisher is not None:
            self.publisher.publish(event, event_payload(view, actor, comment))
        if view.status in _FINAL:
            for waiter in self._waiters.pop(view.id, []):
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_final(self, request_id: int, seconds: float, poll: float = 1.0) -> rq.RequestDetail | None:
        """Wait until the request reaches a final state (woken at once in this process, by polling
        the store for other processes); None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            view = await rq.request_view(self.store, request_id)
            if view.status in _FINAL:
                return view
            left = deadline - loop.time()
            if left <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(request_id, []).append(waiter)
            try:
                await asyncio.wait_for(waiter, min(left, poll))
            except TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(request_id)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[request_id]

    # -- running

    def kick(self, request_id: int) -> None:
        """Run an approved request in the background (no-op if someone else claims it first)."""
        task = asyncio.get_running_loop().create_task(self.run(request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, request_id: int) -> rq.RequestDetail | None:
        claimed = await rq.claim(self.store, request_id, self.name)
        if claimed is None:
            return None
        metrics.CHANGE_REQUESTS.labels(claimed.source, RequestStatus.EXECUTING.value).inc()
        self._running.add(request_id)
        try:
            return await self._execute(claimed)
        finally:
            self._running.discard(request_id)

    async def _execute(self, claimed: rq.Claimed) -> rq.RequestDetail:
        request_id = claimed.id
        fault("after_claim")
        started = time.perf_counter()
        log.info("execution_started", request=request_id, source=claimed.source)
        try:
            creds = await self.catalog.source_credentials(claimed.source)
            target = upstream_target(creds, "write")
            if controls_transactions(creds.view.engine, claimed.text):
                raise StatementFailed(
                    TRANSACTION_CONTROL, "25000" if creds.view.engine == "postgresql" else None
                )
            if creds.view.engine == "postgresql":
                result = await _pg_execute(claimed, target, self.store)
            else:
                result = await _my_execute(claimed, target, self.store)
            outcome = rq.Outcome(
                RequestStatus.SUCCEEDED,
                rows_affected=result.affected(),
                returning_rows=result.returning(),
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except StatementFailed as exc:
            outcome = rq.Outcome(
                RequestStatus.FAILED,
                sqlstate=exc.sqlstate,
                mysql_errno=exc.errno,
                error_message=exc.message,
                duration_ms=(time.perf_counter() - started) * 1000,
            )
        except QueryBaseError as exc:
            # The connection failed or broke. Whether anything was applied (a COMMIT may have been
            # sent) is for the database to say, exactly as after a crash.
            log.warning("execution_interrupted", request=request_id, error=exc.message)
            self._running.discard(request_id)
            resolved = await self.recover(only=request_id)
            if resolved:
                return resolved[0]
            return await rq.request_view(self.store, request_id)  # still executing: the sweep retries
        view = await rq.finish(self.store, request_id, outcome)
        metrics.EXECUTIONS.labels(claimed.source, view.status, "no").inc()
        metrics.EXECUTION_DURATION.labels(claimed.source).observe(time.perf_counter() - started)
        log.info("execution_finished", request=request_id, status=view.status, error=outcome.error_message)
        self.publish("executed" if view.status == "succeeded" else view.status, view)
        return view

    async def recover(self, only: int | None = None) -> list[rq.RequestDetail]:
        """Resolve every request left `executing` by a crash (or by a connection that broke under
        this process's own execution), from the database's own record."""
        done = []
        for item in await rq.executing(self.store):
            if item.id in self._running or (only is not None and item.id != only):
                continue
            try:
                creds = await self.catalog.source_credentials(item.source)
                target = upstream_target(creds, "write")
                gone = item.executor == self.name or executor_gone(item)
                if creds.view.engine == "postgresql":
                    outcome = await _pg_recover(item, target, gone)
                else:
                    outcome = await _my_recover(item, target, gone)
            except Deferred as exc:
                log.debug("recovery_deferred", request=item.id, reason=str(exc))
                continue
            except QueryBaseError as exc:
                log.warning("recovery_deferred", request=item.id, error=exc.message)
                continue  # the database is unreachable now; try again at the next sweep
            view = await rq.finish(self.store, item.id, outcome)
            metrics.EXECUTIONS.labels(item.source, view.status, "yes").inc()
            log.warning("execution_recovered", request=item.id, status=view.status, executor=item.executor)
            self.publish("executed" if view.status == "succeeded" else view.status, view)
            done.append(view)
        return done

    async def sweep(self) -> None:
        """Expire due requests and run approved ones nobody claimed (e.g. approved by the CLI)."""
        for request_id in await rq.expire_due(self.store):
            self.publish("expired", await rq.request_view(self.store, request_id))
        await self.recover()
        for request_id in await rq.approved_ids(self.store):
            await self.run(request_id)

    def start(self, interval: float = SWEEP_INTERVAL) -> None:
        """Background: first resolve what a crash left `executing`, then sweep every `interval`."""

        async def loop() -> None:
            try:
                await self.recover()
            except Exception:
                log.exception("recovery_failed")
            while True:
                try:
                    await self.sweep()
                except Exception:
                    log.exception("sweep_failed")
                metrics.sync()
                await asyncio.sleep(interval)

        self._sweeper = asyncio.get_running_loop().create_task(loop())

    async def close(self, grace: float = 10.0) -> None:
        """Stop sweeping (and wait until the sweep has really stopped: it may be inside a store call
        that must finish before the store closes), then give running executions `grace` seconds."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

"""PostgreSQL client sessions: startup, TLS, SCRAM login, then a policy-checked relay to one pooled upstream.

Theory of operation. A session is an `asyncio.Protocol`. Until login completes, a coroutine
(`_login`) reads whole startup/auth messages. After it, `data_received` frames client messages
synchronously and acts per message type (`_HANDLERS`): Query and Execute are decided by policy,
everything else is forwarded. Forwarded messages are gathered and written to the upstream once per
received chunk; upstream bytes go to the client as they arrive, through `Replies`
(proxy/wire/pg/replies.py, sans-IO), which knows what the upstream still owes, walks headers only
and drops or edits what QueryBase asked for itself.

Held and denied statements (`_refuse`) run as a task, with client reading paused so later
messages keep their order (and inside a transaction block QueryBase makes the upstream abort the
transaction, as PostgreSQL does on any error there):
- simple Query: nothing goes upstream; once earlier requests are answered the client gets the
  error and ReadyForQuery;
- extended Execute: QueryBase sends the upstream a Sync of its own in place of the Execute (so
  whatever was already forwarded in the batch is answered), drops that Sync's ReadyForQuery,
  sends the error, and discards the client's messages until its Sync, which it answers itself —
  what PostgreSQL does after an error in a batch.
Flow control both ways: when one side's write buffer is full, reading from the other side pauses.

Metrics and the statement log (proxy/observe/metrics.py, docs/observability.md). A statement's clock
starts when the chunk holding it arrives (one clock read per chunk, and only if it holds a
statement); `_decide` counts it in a pre-bound counter. A forwarded statement's timing rides with
the ReadyForQuery that ends it (`Replies`), and is observed (and logged: reads, transaction and
session statements sampled by `[log] read_sample_rate`) when that passes; a refused one is
observed and logged when its error has been written.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import structlog

from policies.cache import classify_pg_cached
from policies.decide import as_decided
from policies.decide import decide_cached as decide
from policies.pg import LEXING, SETTINGS
from policies.pg import classify as classify_pg
from policies.types import Action, Classification, Kind, Level, SourcePolicy, Verdict
from proxy.audit.log import AuditWriter, audit_login, audit_statement
from proxy.auth.limits import LoginFailed, LoginLimiter
from proxy.auth.scram import SCRAM, SCRAM_PLUS, ScramServer, mock_verifier, tls_server_end_point
from proxy.auth.verifiers import ScramVerifier, scram_verify_password, verify_pg_md5_response
from proxy.config import Settings
from proxy.errors import (
    ApprovedButFailed,
    AuditUnavailable,
    Denied,
    Held,
    HoldFailed,
    NotFound,
    PoolTimeout,
    QueryBaseError,
    UpstreamConnectError,
    WaitCancelled,
)
from proxy.observe import metrics
from proxy.observe.logging import ReadSampler, connection_ids
from proxy.observe.sessions import IDLE, SessionRegistry
from proxy.store.catalog import Catalog, SourceCredentials
from proxy.store.db import Store
from proxy.store.requests import HeldStatement, RequestDetail, create_request
from proxy.upstream.base import source_pool
from proxy.upstream.pg import UpstreamConnection
from proxy.upstream.pool import Pool
from proxy.wire.pg import protocol as pgp
from proxy.wire.pg.extended import (
    AS_PARSE_COMPLETE,
    WAIT,
    Batch,
    Desync,
    ExtendedState,
    Portal,
    Unknown,
    Wait,
)
from proxy.wire.pg.replies import Replies
from proxy.wire.relay import RelaySession

if TYPE_CHECKING:
    from proxy.changes.service import ChangeService

log = structlog.get_logger("querybase.pg")

LOGIN_TIMEOUT = 60.0
PROTOCOL = "postgresql"
_ACCEPTED = metrics.CLIENT_CONNECTIONS_ACCEPTED.labels(PROTOCOL)
_OPEN = metrics.CLIENT_CONNECTIONS_OPEN.labels(PROTOCOL)
# Forwarded statements of these kinds are logged as sampled by `[log] read_sample_rate`.
_SAMPLED_KINDS = frozenset({Kind.READ, Kind.TRANSACTION, Kind.SESSION})
_NOT_FORWARDED_PARAMS = frozenset({"user", "database", "replication"})
_ALWAYS_VISIBLE_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


class AccessDenied(QueryBaseError):
    sqlstate = "42501"  # insufficient_privilege
    mysql_errno = 1044  # ER_DBACCESS_DENIED_ERROR
    code = "forbidden"


class UnknownSource(QueryBaseError):
    sqlstate = "3D000"  # invalid_catalog_name
    mysql_errno = 1049  # ER_BAD_DB_ERROR
    code = "unknown_source"


class TLSRequired(QueryBaseError):
    sqlstate = "28000"  # invalid_authorization_specification
    code = "tls_required"


class PgFrontend:
    """What all PostgreSQL sessions share: settings, store, pools, cancel keys, login limits."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: Catalog,
        tls: ssl.SSLContext | None,
        *,
        changes: ChangeService | None = None,
        registry: SessionRegistry | None = None,
        audit: AuditWriter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.tls = tls
        self.cert_hash: bytes | None = None
        if tls is not None:
            der = ssl.PEM_cert_to_DER_cert(settings.tls.cert_file.read_text())
            self.cert_hash = tls_server_end_point(der)
        self.limiter = LoginLimiter(protocol=PROTOCOL)
        self.mock_secret = secrets.token_bytes(32)
        self.pools: dict[tuple[str, str, str], Pool[UpstreamConnection]] = {}
        self.sessions: dict[tuple[int, bytes], PgSession] = {}
        self.live: set[PgSession] = set()
        # The change-request service (notifications, waiting mode): without it held statements are
        # stored directly and never waited for. The live-session registry of the admin API, and
        # the audit writer for logins and statement verdicts (without it nothing is recorded).
        self.changes = changes
        self.registry = registry
        self.audit = audit
        self.draining = False  # shutting down: sessions end once their running statement is answered
        self._emptied = asyncio.Event()

    def protocol(self) -> PgSession:
        return PgSession(self)

    def pool(self, creds: SourceCredentials, role: str) -> Pool[UpstreamConnection]:
        mode = creds.view.pool_mode
        return source_pool(self.pools, creds, role, UpstreamConnection.connect, mode)

    def new_key(self, session: PgSession) -> tuple[int, bytes]:
        while True:
            key = (secrets.randbelow(2**31 - 1) + 1, secrets.token_bytes(4))
            if key not in self.sessions:
                self.sessions[key] = session
                return key

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - the shutdown budget
        """Graceful shutdown: end idle sessions now and the others as soon as their running
        statement has been answered, for up to `timeout` seconds; then close everything."""
        self.draining = True
        for session in list(self.live):
            session.end_if_idle()
        if self.live:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout)
        await self.close()

    def session_ended(self, session: PgSession) -> None:
        self.live.discard(session)
        if self.draining and not self.live:
            self._emptied.set()

    async def close(self) -> None:
        for session in list(self.live):
            session.shutdown()
        for pool in self.pools.values():
            await pool.close()


class PgSession(RelaySession, asyncio.Protocol):
    """One client connection."""

    def __init__(self, frontend: PgFrontend) -> None:
        super().__init__()
        self.f = frontend
        self.reader = pgp.FrontendReader()
        self._audit_refusal: str | None = None
        self._audit_subject = ""
        self.params: dict[str, str] = {}
        self.key: tuple[int, bytes] | None = None
        self.upstream: UpstreamConnection | None = None
        self.pool: Pool[UpstreamConnection] | None = None
        self.status = b"I"
        # Transaction pooling (docs/pooling.md): the upstream is checked out for a transaction and
        # given back at ReadyForQuery 'I'; `settings` is the client's session settings, carried to
        # each connection it gets; `pinned` says why it keeps one connection for good instead.
        self.pooling = "session"
        self.pinned: str | None = None
        self.settings: dict[str, str] = {}
        self._settings_dirty = False  # a statement since checkout may have changed settings
        # The unnamed statement was parsed and not yet run: pg8000 sends Parse, Sync, then Describe,
        # Sync, then Bind, Execute, Sync; the statement lives on the connection, which is kept.
        self._unnamed_unused = False
        self._checkout: asyncio.Task[None] | None = None
        self._checkin: asyncio.Task[None] | None = None
        self._pool_labels = ("", "")
        self._shared_params: tuple[tuple[str, str], ...] = ()  # what pooled connections log in with
        self.log = log
        # relay state
        self._out: list[bytes] = []
        self._drained: asyncio.Future[None] | None = None
        self._discard = False
        # What the upstream's statements, portals and cursors are (see proxy/wire/pg/extended.py),
        # and what it owes the client (proxy/wire/pg/replies.py).
        self._ext = ExtendedState()
        self._replies = Replies(self._ext)
        self._deferred: tuple[bytes, bytes] | None = None  # a message waiting for earlier replies
        self.allowed_schemas: tuple[str, ...] | None = None  # the source's schema allowlist
        self._settled: asyncio.Future[None] | None = None
        self._encoding = "utf-8"
        # The ParameterStatus values the client has seen (at login, and relayed since): what a held
        # statement records about its session, whichever upstream connection is attached now.
        self._shown: dict[str, str] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._login_task: asyncio.Task[None] | None = None
        # metrics and the statement log (see the module docstring)
        self._m: metrics.StatementMetrics = metrics.statement_metrics(PROTOCOL, "")
        self._session_open: metrics.Gauge | None = None  # this session's querybase_client_sessions_open
        self._t0 = 0.0  # when the chunk being processed arrived (0: not read yet)
        self._overhead_due = 1  # statements until the next overhead sample
        self._overhead_t0 = 0.0
        self._sample_reads = ReadSampler(frontend.settings.log.read_sample_rate)

    # ------------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.log = log.bind(connection_id=next(connection_ids), protocol=PROTOCOL, client=self.peer)
        _ACCEPTED.inc()
        _OPEN.inc()
        self.f.live.add(self)
        if self.f.registry is not None:
            self.entry = self.f.registry.register("postgresql", self.peer, self.terminate_by_admin)
        self._login_task = asyncio.get_running_loop().create_task(self._login())

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except pgp.ProtocolViolation as exc:
            self._fatal(exc)
            return
        if self._ready:
            self._t0 = 0.0
            self._process()
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        _OPEN.dec()
        if self._session_open is not None:
            self._session_open.dec()
            self._session_open = None
        self.f.session_ended(self)
        if self.entry is not None and self.f.registry is not None:
            self.f.registry.unregister(self.entry)
        if self.key is not None:
            self.f.sessions.pop(self.key, None)
        if self.pinned is not None:
            metrics.POOL_PINNED.labels(*self._pool_labels).dec()
        if self._checkout is not None:
            self._checkout.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._login_task is not None and not self._login_task.done():
            self._login_task.cancel()
        self._cancel_tasks()
        if self.upstream is not None and self.pool is not None:
            upstream, pool, self.upstream = self.upstream, self.pool, None
            busy = not self._replies.idle or self._busy
            self._spawn(self._give_back(upstream, pool, busy))
        if self._ready:
            self.log.info("disconnected")

    # upstream → this session (UpstreamSink)

    def upstream_data(self, data: bytes) -> None:
        try:
            relayed = self._replies.feed(data)
        except pgp.ProtocolViolation as exc:
            self._fatal(exc)
            return
        except Desync as exc:
            self._fatal(pgp.ProtocolViolation(f"QueryBase lost track of the upstream's replies: {exc}"))
            return
        for name, value in relayed.params:
            self._shown[name] = value
            if self.upstream is not None:
                self.upstream.parameter_status[name] = value
            if name == "client_encoding":
                self._follow_encoding(value)
            elif name == "default_transaction_read_only" and value != "on":
                self._read_only_lifted(value)
        settled = self._settled
        if settled is not None and not settled.done() and self._ext.settled():
            settled.set_result(None)
        if self._closed:
            return
        if relayed.status is not None:
            self.status = bytes((relayed.status,))
        for done in relayed.answered:
            self._answered(done)
        if self._replies.idle and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if relayed.data and self.transport is not None:
            self.transport.write(relayed.data)
        self._maybe_check_in()
        if self.f.draining:
            self.end_if_idle()

    def _read_only_lifted(self, value: str) -> None:
        """The upstream reports that a read-role connection is no longer read-only: end it now."""
        if self.level is Level.WRITE or self.upstream is None:
            return
        self.log.warning("read_only_lifted", source=self.source, value=value)
        if self.f.audit is not None:
            self.f.audit.record(
                "session.read_only_lifted",
                actor=self.user,
                source=self.source,
                subject=self._audit_subject,
                payload={"protocol": PROTOCOL, "default_transaction_read_only": value},
            )
        self.upstream.transport.close()  # never back into the pool
        self._fatal(
            QueryBaseError(
                "terminating connection: the upstream session stopped being read-only "
                f"(default_transaction_read_only={value})"
            )
        )

    def _follow_encoding(self, pg_name: str) -> None:
        # Statement text arrives in the client's encoding. One QueryBase cannot read exactly as the
        # server does ends the session at once (fail closed).
        encoding = pgp.python_encoding(pg_name)
        if encoding is None:
            self._encoding = f"unsupported client_encoding {pg_name}"
            if self._ready:
                self._fatal(_unsupported_encoding(pg_name))
            return
        self._encoding = encoding

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._closed or self.transport is None:
            return
        self.log.warning("upstream_lost", source=self.source, error=str(exc) if exc else "EOF")
        self.transport.write(
            pgp.make_error("FATAL", "08006", f'connection to the upstream of source "{self.source}" was lost')
        )
        self.transport.close()

    def terminate_by_admin(self) -> None:
        if self.transport is not None and not self._closed:
            self.log.info("terminated_by_admin")
            self.transport.write(
                pgp.make_error("FATAL", "57P01", "terminating connection due to administrator command")
            )
            self.transport.close()

    def end_if_idle(self) -> None:
        """During a graceful shutdown: end the session unless a statement is still running."""
        if not self._ready or (self._replies.idle and not self._busy):
            self.shutdown()

    def shutdown(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(
                pgp.make_error("FATAL", "57P01", "terminating connection: QueryBase is shutting down")
            )
            self.transport.close()

    def _fatal(self, exc: QueryBaseError) -> None:
        self.log.warning("session_error", sqlstate=exc.sqlstate, error=exc.message)
        if self.transport is not None and not self._closed and not self.transport.is_closing():
            self.transport.write(pgp.error_response(exc, "FATAL"))
            self.transport.close()
        self._closed = True

    # ---------------------------------------------------------------------------------- login

    async def _read(self) -> tuple[bytes, bytes]:
        while True:
            msg = self.reader.next()
            if msg is not None:
                return msg
            if self._closed:
                raise ConnectionResetError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def _login(self) -> None:
        assert self.transport is not None
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT):
                startup = await self._negotiate()
                if startup is None:
                    return
                await self._start_session(startup)
        except ConnectionResetError:
            return
        except TimeoutError:
            metrics.login_failed(PROTOCOL, "protocol")
            self._fatal(pgp.ProtocolViolation("login timed out"))
        except QueryBaseError as exc:
            reason = self._login_failure_reason(exc)
            if reason is not None:
                metrics.login_failed(PROTOCOL, reason)
            audit_login(
                self.f.audit, protocol=PROTOCOL, user=self.user, client=self.peer, failure=exc.message
            )
            self._fatal(exc)
        except Exception as exc:  # a bug must end this session only, with a clear line
            metrics.login_failed(PROTOCOL, "internal")
            self.log.exception("login_crashed")
            self._fatal(QueryBaseError(f"internal error during login: {type(exc).__name__}"))

    def _login_failure_reason(self, exc: QueryBaseError) -> str | None:
        """The querybase_login_failures_total reason of a refused login (None: the limiter counted it)."""
        if isinstance(exc, LoginFailed):
            return None
        if isinstance(exc, UnknownSource):
            return "unknown_source"
        if isinstance(exc, AccessDenied):
            return "no_grant"
        if isinstance(exc, TLSRequired):
            return "tls_required" if self.user else "protocol"
        if isinstance(exc, PoolTimeout | UpstreamConnectError):
            return "upstream"
        return "protocol"

    async def _negotiate(self) -> pgp.StartupMessage | None:
        assert self.transport is not None
        for _ in range(3):
            _, packet = await self._read()
            request = pgp.parse_startup(packet)
            if isinstance(request, pgp.SSLRequest):
                if self.reader.buffered:
                    raise pgp.ProtocolViolation("bytes received after SSLRequest before the TLS handshake")
                if self.on_tls or self.f.tls is None or self.f.settings.tls.mode == "disable":
                    self.transport.write(b"N")
                    continue
                self.transport.write(b"S")
                loop = asyncio.get_running_loop()
                try:
                    new = await loop.start_tls(self.transport, self, self.f.tls, server_side=True)
                except (ssl.SSLError, OSError) as exc:  # hostile or broken input: one line, no traceback
                    self.log.warning(
                        "tls_handshake_failed", error=str(exc).splitlines()[0] if str(exc) else ""
                    )
                    metrics.login_failed(PROTOCOL, "protocol")
                    self._closed = True
                    if not self.transport.is_closing():
                        self.transport.close()
                    raise ConnectionResetError from None
                self.transport, self.on_tls = cast(asyncio.Transport, new), True
            elif isinstance(request, pgp.GSSENCRequest):
                if self.reader.buffered:
                    raise pgp.ProtocolViolation("bytes received after GSSENCRequest")
                self.transport.write(b"N")
            elif isinstance(request, pgp.CancelRequest):
                self._cancel_other(request)
                self.transport.close()
                return None
            else:
                return request
        raise pgp.ProtocolViolation("too many encryption negotiation requests")

    def _cancel_other(self, request: pgp.CancelRequest) -> None:
        target = self.f.sessions.get((request.pid, request.key))
        if target is not None:
            target.cancel_running()

    def cancel_running(self) -> None:
        """A CancelRequest with this session's key: cancel its upstream statement, if one runs,
        or the change request it is waiting for."""
        if self.waiting is not None:
            self.waiting.set()
        elif self.upstream is not None and not self._replies.idle:
            upstream = self.upstream
            # Checked again once the cancel connection is open: only while this client's
            # statement still runs there (the connection may be another client's by then).
            self._spawn(upstream.stop_running(lambda: self.upstream is upstream and not self._replies.idle))

    async def _start_session(self, startup: pgp.StartupMessage) -> None:
        assert self.transport is not None
        self.reader.startup_done()
        params = dict(startup.params)
        unsupported = sorted(name for name in params if name.startswith("_pq_."))
        if startup.version != pgp.PROTOCOL_3_0 or unsupported:
            self.transport.write(pgp.make_negotiate_protocol_version(pgp.PROTOCOL_3_0, unsupported))
        for name in unsupported:
            del params[name]
        if "replication" in params and params["replication"] not in ("false", "off", "no", "0"):
            raise pgp.ProtocolViolation("replication connections are not supported through QueryBase")
        if self.f.settings.tls.mode == "require" and not self.on_tls:
            raise TLSRequired("QueryBase requires TLS on this port: connect with sslmode=require")
        user = params.get("user", "")
        if not user:
            raise TLSRequired("no PostgreSQL user name specified in startup packet")
        self.user, self.source = user, params.get("database") or user
        self.params = params
        self.log = self.log.bind(user=user, source=self.source)
        await self._authenticate(user)
        await self._attach_source()

    async def _authenticate(self, user: str) -> None:
        assert self.transport is not None
        address = self.peer.rpartition(":")[0]
        self.f.limiter.check(user, address)
        login = await self.f.catalog.user_login(user)
        usable = login is not None and login.active
        method = login.pg_auth if login is not None and usable else "scram"
        if method == "password" and not self.on_tls:
            method = "scram"  # cleartext only over TLS; SCRAM never shows the password
        if method == "md5" and login is not None and login.md5_verifier is not None:
            ok = await self._md5_exchange(login.md5_verifier)
        elif method == "password" and login is not None:
            ok = await self._cleartext_exchange(ScramVerifier.decode(login.scram_verifier))
        else:
            verifier = (
                ScramVerifier.decode(login.scram_verifier)
                if login is not None and usable
                else mock_verifier(user, self.f.mock_secret)
            )
            ok = await self._scram_exchange(verifier)
        if not ok or not usable:
            self.f.limiter.failure(user, address, "wrong_password" if usable else "unknown_user")
            self.log.info("login_failed", reason="wrong password" if usable else "unknown or disabled user")
            raise LoginFailed(f'password authentication failed for user "{user}"')

    async def _password_message(self) -> bytes:
        type_byte, body = await self._read()
        if type_byte != b"p":
            raise pgp.ProtocolViolation(f"expected a password message, got message type {type_byte!r}")
        return body

    async def _scram_exchange(self, verifier: ScramVerifier) -> bool:
        assert self.transport is not None
        binding = self.f.cert_hash if self.on_tls else None
        self.transport.write(pgp.make_auth_sasl([SCRAM_PLUS, SCRAM] if binding else [SCRAM]))
        mechanism, first = pgp.parse_sasl_initial(await self._password_message())
        exchange = ScramServer(verifier, binding)
        self.transport.write(pgp.make_auth(pgp.AuthCode.SASL_CONTINUE, exchange.first(mechanism, first)))
        ok, final = exchange.final(await self._password_message())
        if ok:
            self.transport.write(pgp.make_auth(pgp.AuthCode.SASL_FINAL, final))
        return ok

    async def _md5_exchange(self, stored: str) -> bool:
        assert self.transport is not None
        salt = secrets.token_bytes(4)
        self.transport.write(pgp.make_auth(pgp.AuthCode.MD5_PASSWORD, salt))
        return verify_pg_md5_response(stored, salt, pgp.parse_password(await self._password_message()))

    async def _cleartext_exchange(self, verifier: ScramVerifier) -> bool:
        assert self.transport is not None
        self.transport.write(pgp.make_auth(pgp.AuthCode.CLEARTEXT_PASSWORD))
        password = pgp.parse_password(await self._password_message())
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return False
        # PBKDF2 with 4096 rounds takes milliseconds: keep it off the event loop.
        return await asyncio.to_thread(scram_verify_password, verifier, text)

    async def _attach_source(self) -> None:
        assert self.transport is not None
        try:
            creds = await self.f.catalog.source_credentials(self.source)
        except NotFound:
            raise UnknownSource(
                f'database "{self.source}" does not exist (no QueryBase source of that name)'
            ) from None
        if creds.view.engine != "postgresql":
            raise UnknownSource(f'source "{self.source}" is a MySQL source: connect to the MySQL port')
        level, _ = await self.f.catalog.levels(self.user, self.source)
        if level is None:
            raise AccessDenied(
                f'permission denied for source "{self.source}": user "{self.user}" has no grant on it'
            )
        self.level = level
        self.policy = SourcePolicy(
            block_ddl=creds.view.block_ddl, trusted_functions=frozenset(creds.view.trusted_functions)
        )
        self.hold_wait = creds.view.hold_wait_seconds
        self.allowed_schemas = creds.view.allowed_schemas
        role = "write" if level is Level.WRITE else "read"
        forwarded = {k: v for k, v in self.params.items() if k not in _NOT_FORWARDED_PARAMS}
        self._check_startup_settings(tuple(forwarded.items()))
        # Unqualified names resolve in the allowed schemas only (and pg_catalog, always first).
        # Given at login, the pinned path is also what RESET search_path / RESET ALL return to.
        pinned_path = (
            (("search_path", ", ".join('"' + s.replace('"', '""') + '"' for s in self.allowed_schemas)),)
            if self.allowed_schemas is not None
            else ()
        )
        if "search_path" not in forwarded:
            forwarded.update(pinned_path)
        upstream_params = tuple(sorted(forwarded.items()))
        self.pool = self.f.pool(creds, role)
        self._pool_labels = (self.source, role)
        if creds.view.pool_mode == "transaction":
            # Shared connections log in with the source's own parameters only; the client's are
            # settings carried to whichever connection serves it.
            self.pooling = "transaction"
            upstream = await self._first_checkout(self.pool, pinned_path, tuple(forwarded.items()))
        else:
            upstream = await self.pool.acquire(upstream_params)
        if self._closed:
            await self.pool.release(upstream)
            return
        client_encoding = upstream.parameter_status.get("client_encoding", "UTF8")
        if pgp.python_encoding(client_encoding) is None:
            await self.pool.release(upstream)
            raise _unsupported_encoding(client_encoding)
        self.status = upstream.status
        self._follow_encoding(client_encoding)
        self.key = self.f.new_key(self)
        hello = bytearray(pgp.make_auth(pgp.AuthCode.OK))
        self._shown = dict(upstream.parameter_status)
        for name, value in upstream.parameter_status.items():
            hello += pgp.make_parameter_status(name, value)
        hello += pgp.make_backend_key_data(*self.key)
        hello += pgp.make_ready_for_query(self.status)
        self.transport.write(hello)
        if self.pooling == "transaction":
            await self.pool.release(upstream, reset=False)
        else:
            self.upstream = upstream
            upstream.attach(self)
        self._m = metrics.statement_metrics(PROTOCOL, self.source)
        tls = metrics.tls_label(self.on_tls)
        metrics.CLIENT_SESSIONS.labels(PROTOCOL, self.source, tls).inc()
        self._session_open = metrics.CLIENT_SESSIONS_OPEN.labels(PROTOCOL, self.source, tls)
        self._session_open.inc()
        self._ready = True
        self._audit_subject = f"{PROTOCOL}:{self.key[0]}"
        audit_login(self.f.audit, protocol=PROTOCOL, user=self.user, client=self.peer, source=self.source)
        if self.entry is not None:
            self.entry.user, self.entry.source, self.entry.state = self.user, self.source, IDLE
        self.log.info("connected", level=level.value, role=role, tls=self.on_tls, pooling=self.pooling)
        self._process()

    def _check_startup_settings(self, params: tuple[tuple[str, str], ...]) -> None:
        """Startup parameters (and `-c` switches in `options`) are settings the upstream applies at
        login: each must pass policy as the `SET` it amounts to (no `role`, no read-only off, no
        lexing change QueryBase cannot follow), or the login is refused."""
        assert self.level is not None
        for name, value in startup_settings(params):
            quoted_name = '"' + name.replace('"', '""') + '"'
            quoted_value = "'" + value.replace("'", "''") + "'"
            c = classify_pg(f"SET {quoted_name} TO {quoted_value}")  # not cached: not a statement
            outside = self._out_of_scope(c)
            if outside is not None:
                raise AccessDenied(f"startup parameter {name!r} refused: {outside}")
            verdict = decide(c, self.level, self.policy)
            if c.kind is not Kind.SESSION and verdict.action is not Action.FORWARD:
                raise AccessDenied(f"startup parameter {name!r} refused: {verdict.reason}")

    # ---------------------------------------------------------------------------------- relay

    def _process(self) -> None:
        """Act on every whole client message received so far (unless a refusal is in progress)."""
        if self._busy or self._closed or self._checkout is not None:
            return
        try:
            while (msg := self.reader.next_raw()) is not None:
                type_byte, raw = msg
                if (
                    self.upstream is None
                    and self.pooling == "transaction"
                    and type_byte != b"X"
                    and not self._discard
                ):
                    # Transaction pooling: every message is handled with the connection it goes to.
                    self._deferred = (type_byte, raw)
                    self._start_checkout()
                    break
                if self._handle(type_byte, raw) is _STOP:
                    break
        except pgp.ProtocolViolation as exc:
            self._fatal(exc)
            return
        self._flush()

    def _handle(self, type_byte: bytes, raw: bytes) -> object:
        if self._discard:  # after an error in a batch: nothing until the client's Sync
            if type_byte == b"S":
                self._discard = False
                assert self.transport is not None
                self.transport.write(pgp.make_ready_for_query(self.status))
                self._maybe_check_in()
            elif type_byte == b"X":
                self._terminate()
                return _STOP
            return None
        handler = _HANDLERS.get(type_byte)
        if handler is None:
            raise pgp.ProtocolViolation(f"invalid frontend message type {type_byte!r}")
        return handler(self, raw)

    def _flush(self) -> None:
        out = self._out
        if out and self.upstream is None and self.pooling == "transaction":
            self._start_checkout()
            return
        if out and self.upstream is not None:
            self.upstream.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if self._overhead_t0:
                self._m.overhead.observe(time.perf_counter() - self._overhead_t0)
                self._overhead_t0 = 0.0

    def _checked_encoding(self) -> str:
        if self._encoding.startswith("unsupported"):
            raise pgp.ProtocolViolation(f"QueryBase cannot read statements in {self._encoding}")
        return self._encoding

    def _forward(self, raw: bytes) -> None:
        self._out.append(raw)

    def _out_of_scope(self, c: Classification) -> str | None:
        """The source's schema allowlist, for every user: every schema the statement names (in a
        qualified table, or a search_path it sets) must be allowed. Unqualified names resolve in
        the search_path QueryBase pinned at startup. pg_catalog and information_schema describe
        what the read login may see and stay readable (docs/security.md)."""
        allowed = self.allowed_schemas
        if allowed is None or not c.schemas:
            return None
        for schema in c.schemas:
            if (
                schema not in allowed
                and schema not in _ALWAYS_VISIBLE_SCHEMAS
                and not schema.startswith("pg_temp")
            ):
                if schema == "*":
                    return "a search_path QueryBase cannot read; this source allows only " + ", ".join(
                        allowed
                    )
                return f'schema "{schema}" is not allowed on source "{self.source}"'
        return None

    def _decide(self, c: Classification, text: str) -> Verdict:
        assert self.level is not None
        outside = self._out_of_scope(c) or _reserved_name(c)
        if outside is not None:
            verdict = Verdict(action=Action.DENY, kind=c.kind, reason=outside)
        else:
            verdict = decide(c, self.level, self.policy)
        self._m.counted[(verdict.kind, verdict.action)].inc()
        refusal = audit_statement(
            self.f.audit,
            protocol=PROTOCOL,
            user=self.user,
            source=self.source,
            connection=self._audit_subject,
            verdict=verdict,
            text=text,
        )
        if refusal is not None:  # the audit log cannot record it: refused (58000), not run
            self._audit_refusal = refusal
            return Verdict(action=Action.DENY, kind=verdict.kind, reason=refusal)
        self._audit_backpressure(self.f.audit)
        return verdict

    def _arrival(self) -> float:
        """When the chunk holding the current message arrived (the clock is read once per chunk)."""
        t0 = self._t0
        if not t0:
            t0 = self._t0 = time.perf_counter()
        return t0

    def _forwarded(self, t0: float) -> None:
        """A statement goes upstream: every OVERHEAD_SAMPLE-th one is timed to its write."""
        self._overhead_due -= 1
        if not self._overhead_due:
            self._overhead_due = metrics.OVERHEAD_SAMPLE
            self._overhead_t0 = t0

    def _answered(self, done: list[tuple[float, Kind]]) -> None:
        """The upstream's ReadyForQuery for forwarded statements passed to the client."""
        now = time.perf_counter()
        histogram = self._m.duration[Action.FORWARD]
        for t0, kind in done:
            seconds = now - t0
            histogram.observe(seconds)
            if kind not in _SAMPLED_KINDS or self._sample_reads():
                self.log.info("statement", kind=kind.value, verdict="forward", duration_ms=_ms(seconds))

    def _on_query(self, raw: bytes) -> object:
        t0 = self._arrival()
        sql = pgp.parse_query(raw[5:], self._checked_encoding())
        c = self._ext.with_sql_names(classify_pg_cached(sql))
        if isinstance(c, Wait):
            return self._wait_for_replies(b"Q", raw)
        verdict = self._decide(c, sql)
        if verdict.action is Action.FORWARD:
            self._end_open_batch()
            self._ext.simple()
            self._ext.forwarded(c)
            self._track(c)
            self._unnamed_unused = False  # a simple Query replaces the unnamed statement
            self._forward(raw)
            self._replies.query_sent(t0, verdict.kind)
            self._forwarded(t0)
            if LEXING in c.names:
                return self._wait_for_replies(None, b"")
            return None
        self._refuse(verdict, HeldStatementDraft(sql, c, None, ()), extended=False, t0=t0)
        return _STOP

    def _on_parse(self, raw: bytes) -> object:
        parse = pgp.parse_parse(raw[5:], self._checked_encoding())
        name = raw[5 : raw.index(b"\x00", 5)]
        c = classify_pg_cached(parse.query)
        if name and self.pooling == "transaction":
            return self._parse_shared(name, raw[6 + len(name) :], parse, c)
        self._ext.parse(name, parse.query, parse.param_types, c)
        if not name:
            self._unnamed_unused = True
        self._forward(raw)
        return None

    def _parse_shared(self, name: bytes, tail: bytes, parse: pgp.Parse, c: Classification) -> object:
        """Transaction pooling: the client's statement `name` is prepared on server connections
        under a name derived from its text and parameter types, shared by every client of the
        pool; a connection that has it already answers with a Close of nothing in its place."""
        upstream = self.upstream
        assert upstream is not None
        if name in self._ext.statements:
            shown = name.decode("utf-8", "replace")
            return self._protocol_error("42P05", f'prepared statement "{shown}" already exists')
        server = server_statement_name(self._encoding, tail)
        if server in upstream.prepared:
            upstream.prepared.move_to_end(server)
            self._ext.parse(
                name, parse.query, parse.param_types, c, server_name=server, parse_tail=tail,
                edit=AS_PARSE_COMPLETE,
            )  # fmt: skip
            self._forward(_CLOSE_NOTHING)
        else:
            upstream.prepared[server] = None  # taken back if the server refuses it
            self._ext.parse(
                name, parse.query, parse.param_types, c, server_name=server, parse_tail=tail,
                done=_prepared_on(upstream, server),
            )  # fmt: skip
            self._forward(_make_parse(server, tail))
        return None

    def _server_statement(self, name: bytes) -> bytes | None:
        """Transaction pooling: the server name of the client's statement `name`, prepared on
        the current connection first if it lacks it; None if the client has no such statement."""
        entry = self._ext.statements.get(name)
        upstream = self.upstream
        assert upstream is not None
        if entry is None or not entry.server_name:
            return None
        server = entry.server_name
        if server in upstream.prepared:
            upstream.prepared.move_to_end(server)
        else:
            upstream.prepared[server] = None
            self._ext.prepare_again(_prepared_on(upstream, server))
            self._forward(_make_parse(server, entry.parse_tail))
        return server

    def _on_bind(self, raw: bytes) -> object:
        end_portal = raw.find(b"\x00", 5)
        end_statement = raw.find(b"\x00", end_portal + 1)
        if end_portal < 0 or end_statement < 0:
            raise pgp.ProtocolViolation("malformed Bind message")
        statement = raw[end_portal + 1 : end_statement]
        if statement and self.pooling == "transaction":
            server = self._server_statement(statement)
            if server is None:
                return self._no_such_statement(statement)
            self._ext.bind(raw[5:end_portal], statement, raw)
            self._forward(pgp.message(b"B", raw[5 : end_portal + 1] + server + raw[end_statement:]))
            return None
        if not statement and self._unnamed_of_another():
            return self._protocol_error("26000", "unnamed prepared statement does not exist")
        self._ext.bind(raw[5:end_portal], statement, raw)
        self._forward(raw)
        return None

    def _unnamed_of_another(self) -> bool:
        """Transaction pooling: the client did not parse the unnamed statement on this connection,
        so whatever the server has under that name is another client's (its text, parameters and
        columns must not reach this one)."""
        return self.pooling == "transaction" and b"" not in self._ext.statements

    def _no_such_statement(self, name: bytes) -> object:
        shown = name.decode("utf-8", "replace")
        return self._protocol_error("26000", f'prepared statement "{shown}" does not exist')

    def _on_execute(self, raw: bytes) -> object:
        t0 = self._arrival()
        end_portal = raw.find(b"\x00", 5)
        if end_portal < 0 or len(raw) != end_portal + 5:
            raise pgp.ProtocolViolation("malformed Execute message")
        self._ext.extended()
        found = self._ext.resolve(raw[5:end_portal])
        c: Classification | Wait
        if isinstance(found, Portal):
            statement = found.statement
            assert statement is not None
            text, types, bind_raw = statement.query, statement.param_types, found.bind_raw
            c = self._ext.with_sql_names(statement.classification)
        else:
            text, types, bind_raw = "", (), None
            c = WAIT if found is WAIT else Classification(Kind.UNKNOWN, reason=cast(Unknown, found).reason)
        if isinstance(c, Wait):
            return self._wait_for_replies(b"E", raw)
        verdict = self._decide(c, text)
        if verdict.action is Action.FORWARD:
            self._ext.forwarded(c)
            self._track(c)
            self._unnamed_unused = False
            self._forward(raw)
            self._replies.execute_sent(t0, verdict.kind)
            self._forwarded(t0)
            if LEXING in c.names:
                # The server sends the new setting only when it flushes: end the batch so it does,
                # and read nothing more until it has answered.
                self._end_open_batch()
                return self._wait_for_replies(None, b"")
            return None
        self._refuse(verdict, HeldStatementDraft(text, c, bind_raw, types), extended=True, t0=t0)
        return _STOP

    def _on_sync(self, raw: bytes) -> object:
        self._ext.sync()
        self._forward(raw)
        self._replies.sync_sent()
        return None

    def _on_close(self, raw: bytes) -> object:
        body = raw[5:]
        if len(body) < 2 or body[0:1] not in (b"S", b"P") or body.find(b"\x00", 1) != len(body) - 1:
            raise pgp.ProtocolViolation("malformed Close message")
        self._ext.close(body[0:1], body[1:-1])
        if body[0:1] == b"S" and len(body) > 2 and self.pooling == "transaction":
            # The client's name was never a server name; the shared statement stays prepared.
            self._forward(_CLOSE_NOTHING)
            return None
        self._forward(raw)
        return None

    def _on_function_call(self, raw: bytes) -> object:
        t0 = self._arrival()
        c = Classification(Kind.PRIVILEGED, reason="fast-path function call")
        verdict = self._decide(c, "<fast-path function call>")
        if verdict.action is Action.FORWARD:
            self._end_open_batch()
            self._ext.simple()
            self._pin("a fast-path function call")
            self._forward(raw)
            self._replies.query_sent(t0, verdict.kind)
            return None
        self._refuse(verdict, HeldStatementDraft("", c, None, ()), extended=False, t0=t0)
        return _STOP

    def _on_describe(self, raw: bytes) -> object:
        """Describe: forwarded; it belongs to the open extended batch (or opens one)."""
        self._ext.extended()
        body = raw[5:]
        if len(body) < 2 or body[0:1] not in (b"S", b"P") or body.find(b"\x00", 1) != len(body) - 1:
            raise pgp.ProtocolViolation("malformed Describe message")
        if body[0:1] == b"S" and len(body) > 2 and self.pooling == "transaction":
            server = self._server_statement(body[1:-1])
            if server is None:
                return self._no_such_statement(body[1:-1])
            self._forward(pgp.make_describe(b"S", server))
            return None
        if body == b"S\x00" and self._unnamed_of_another():
            return self._protocol_error("26000", "unnamed prepared statement does not exist")
        self._forward(raw)
        return None

    def _on_forward(self, raw: bytes) -> object:
        self._forward(raw)
        return None

    def _wait_for_replies(self, type_byte: bytes | None, raw: bytes) -> object:
        """Stop reading client messages until the upstream has answered every batch before the open
        one; then handle `raw` (if any) again, now with what the server really did."""
        self._busy = True
        self._pause("settle")
        if type_byte is not None:
            self._deferred = (type_byte, raw)
        self._flush()
        self._spawn(self._settle(wait_all=type_byte is None))
        return _STOP

    async def _settle(self, *, wait_all: bool) -> None:
        try:
            if wait_all:
                await self._upstream_idle()
            elif not self._ext.settled():
                self._settled = asyncio.get_running_loop().create_future()
                await self._settled
        finally:
            self._settled = None
            self._busy = False
            self._resume("settle")
        self._run_deferred()

    def _run_deferred(self) -> None:
        """Handle the message that waited (for replies, or for a connection), then read on."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None and not self._closed:
            try:
                if self._handle(*deferred) is _STOP:
                    self._flush()
                    return
            except pgp.ProtocolViolation as exc:
                self._fatal(exc)
                return
        self._process()

    def _on_terminate(self, raw: bytes) -> object:
        self._terminate()
        return _STOP

    def _on_password(self, raw: bytes) -> object:
        raise pgp.ProtocolViolation("unexpected password message after login")

    def _terminate(self) -> None:
        self._flush()
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ transaction pooling

    async def _first_checkout(
        self,
        pool: Pool[UpstreamConnection],
        shared: tuple[tuple[str, str], ...],
        params: tuple[tuple[str, str], ...],
    ) -> UpstreamConnection:
        """At login: a pooled connection (opened with the `shared` parameters every client of the
        source has) with the client's startup settings applied; what it reads back is the client's
        session settings from then on (canonical names and values)."""
        self._shared_params = shared
        upstream = await pool.acquire(shared)
        try:
            wanted = dict(upstream.base_settings)
            wanted.update(startup_settings(params))
            await upstream.apply_settings(wanted)
        except BaseException:
            await pool.release(upstream, reusable=False)
            raise
        self.settings = dict(upstream.settings)
        return upstream

    def _start_checkout(self) -> None:
        """Messages are waiting for an upstream: get one (reading from the client pauses)."""
        if self._checkout is not None or self._closed:
            return
        self._pause("checkout")
        self._checkout = asyncio.get_running_loop().create_task(self._check_out())

    async def _check_out(self) -> None:
        pool = self.pool
        assert pool is not None
        try:
            if self._checkin is not None:  # the last transaction's settings are still being read
                await asyncio.shield(self._checkin)
            wanted = self.settings
            upstream = await pool.acquire(self._shared_params, prefer=lambda conn: conn.settings == wanted)
            try:
                if upstream.settings != wanted:
                    metrics.POOL_SETTINGS_APPLIED.labels(*self._pool_labels).inc()
                    await upstream.apply_settings(wanted)
            except BaseException:
                await pool.release(upstream, reusable=False)
                raise
        except QueryBaseError as exc:
            self._checkout = None
            self._fatal(exc)
            return
        except asyncio.CancelledError:
            self._checkout = None
            raise
        except Exception as exc:  # a bug must end this session only, with a clear line
            self.log.exception("checkout_crashed")
            self._checkout = None
            self._fatal(
                QueryBaseError(f"internal error getting an upstream connection: {type(exc).__name__}")
            )
            return
        self._checkout = None
        if self._closed:
            await pool.release(upstream, reset=False)
            return
        self.upstream = upstream
        upstream.attach(self)
        self._resume("checkout")
        self._flush()
        self._run_deferred()

    def _maybe_check_in(self) -> None:
        if self.pooling == "transaction" and self.status == b"I" and self._replies.idle:
            self._check_in()

    def _check_in(self) -> None:
        """ReadyForQuery 'I' with nothing else owed: give the upstream back to the pool, unless the
        client keeps it (pinned), has an extended batch open, or QueryBase has messages for it."""
        upstream, pool = self.upstream, self.pool
        if (
            upstream is None
            or pool is None
            or self.pinned is not None
            or self._unnamed_unused
            or self._ext.batch_open
            or self._out
            or self._deferred is not None
            or self._closed
        ):
            return
        # Portals, cursors and the unnamed statement stay with that server connection.
        try:
            self._ext.new_connection()
        except Desync as exc:
            self._fatal(pgp.ProtocolViolation(f"QueryBase lost track of the upstream's replies: {exc}"))
            return
        self.upstream = None
        upstream.detach()
        dirty, self._settings_dirty = self._settings_dirty, False
        self._checkin = asyncio.get_running_loop().create_task(self._give_back_between(upstream, pool, dirty))

    async def _give_back_between(
        self, upstream: UpstreamConnection, pool: Pool[UpstreamConnection], dirty: bool
    ) -> None:
        try:
            if dirty:
                self.settings = dict(await upstream.read_settings())
            if len(upstream.prepared) > MAX_SERVER_STATEMENTS:
                await upstream.forget_prepared(len(upstream.prepared) - MAX_SERVER_STATEMENTS * 3 // 4)
        except (QueryBaseError, TimeoutError) as exc:
            await pool.release(upstream, reusable=False)
            self._fatal(
                QueryBaseError(f"lost track of the session's settings: {getattr(exc, 'message', exc)}")
            )
            return
        except BaseException:
            await pool.release(upstream, reusable=False)
            raise
        finally:
            self._checkin = None
        await pool.release(upstream, reset=False)

    def _track(self, c: Classification) -> None:
        """A statement goes upstream: in transaction mode, note whether it changes session
        settings (read back before the connection is given back) or pins the client."""
        if self.pooling != "transaction":
            return
        if "deallocate:*" in c.names and self.upstream is not None:
            self.upstream.prepared.clear()  # DEALLOCATE ALL / DISCARD ALL drop the shared ones too
        if self.pinned is not None:
            return
        why = pin_reason(c)
        if why is not None:
            self._pin(why)
        elif c.kind is Kind.SESSION or SETTINGS in c.names:
            self._settings_dirty = True

    def _pin(self, why: str) -> None:
        if self.pinned is not None or self.pooling != "transaction":
            return
        self.pinned = why
        metrics.POOL_PINNED.labels(*self._pool_labels).inc()
        metrics.POOL_PINS.labels(*self._pool_labels, _pin_label(why)).inc()
        self.log.info("session_pinned", reason=why)

    # ---------------------------------------------------------------------- hold and deny

    def _end_open_batch(self) -> None:
        """Send the upstream a Sync of QueryBase's own (its ReadyForQuery is dropped) to end an
        extended batch the client left open — before a simple Query or FunctionCall (asyncpg sends
        Parse/Describe/Flush and then a COPY as a Query), or in place of a refused Execute. Then
        every ReadyForQuery the upstream owes is known: one per Sync, Query and FunctionCall."""
        if not self._ext.batch_open:
            return
        self._ext.sync()
        self._out.append(pgp.SYNC)
        self._replies.own_sync()  # the batch's Executes so far are answered by this Sync

    def _refuse(
        self,
        verdict: Verdict,
        draft: HeldStatementDraft | None,
        *,
        extended: bool,
        t0: float,
        error: bytes | None = None,
    ) -> None:
        """Answer a statement (or, with `error`, an extended message) in place of the server:
        the error, then — as after any error in a batch — nothing until the client's Sync."""
        if draft is not None:
            draft = dataclasses.replace(draft, classification=as_decided(draft.classification, verdict))
        self._unnamed_unused = False  # a client re-parses after an error
        self._busy = True
        self._pause("refuse")
        batch = self._ext.open_batch if extended else None
        self._end_open_batch()
        self._flush()
        self._spawn(self._finish_refusal(verdict, draft, extended, t0, batch, error))

    def _protocol_error(self, sqlstate: str, message: str) -> object:
        """An extended message the server would reject (QueryBase answers it, transaction
        pooling): the same error, and the rest of the batch skipped."""
        verdict = Verdict(action=Action.DENY, kind=Kind.UNKNOWN, reason=message)
        self._refuse(verdict, None, extended=True, t0=0.0, error=pgp.make_error("ERROR", sqlstate, message))
        return _STOP

    async def _finish_refusal(
        self,
        verdict: Verdict,
        draft: HeldStatementDraft | None,
        extended: bool,
        t0: float,
        batch: Batch | None = None,
        protocol_error: bytes | None = None,
    ) -> None:
        request_id: int | None = None
        try:
            if protocol_error is not None or draft is None:
                error = protocol_error or b""
            else:
                try:
                    error, request_id = await self._refusal_error(verdict, draft)
                except pgp.ProtocolViolation as exc:  # the held Execute's Bind was malformed
                    self._fatal(exc)
                    return
            await self._upstream_idle()
            assert self.transport is not None
            if request_id is not None and self.status == b"I" and self.hold_wait > 0 and self.f.changes:
                try:
                    error = await self._wait_for_decision(request_id, extended)
                except Exception as exc:  # the request stands; only the wait failed
                    self.log.exception("held_wait_failed", request=request_id)
                    error = pgp.error_response(
                        Held(request_id, self.source, f"waiting failed: {type(exc).__name__}")
                    )
            elif self.status == b"T" and self.upstream is not None:
                # Inside a transaction block PostgreSQL would abort the transaction on this error;
                # make the upstream do exactly that, so what follows behaves as it would there.
                self._replies.own_query()
                self._ext.simple()
                self.upstream.transport.write(pgp.make_query(_ABORT_TRANSACTION))
                await self._upstream_idle()
            if extended and verdict.action is Action.DENY and batch is not None and batch.errored:
                # The server rejected an earlier message of this batch and skipped the rest, the
                # refused Execute included: its error is the one the client gets, as without QueryBase.
                error = b""
            if extended:
                self.transport.write(error)
                self._discard = True
            else:
                self.transport.write(error + pgp.make_ready_for_query(self.status))
            if protocol_error is None:
                self._refused(verdict, t0, request_id)
        finally:
            self._busy = False
            self._resume("refuse")
        if self.f.draining:
            self.end_if_idle()
            return
        self._maybe_check_in()
        self._process()

    async def _wait_for_decision(self, request_id: int, extended: bool) -> bytes:
        """Waiting mode: tell the client at once, then wait for the request to end. Returns what
        the client gets instead of the statement's own response (result, or an error)."""
        changes = self.f.changes
        assert changes is not None
        assert self.transport is not None
        self.transport.write(
            pgp.make_error(
                "NOTICE",
                "00000",
                f"write held for approval as change request #{request_id} on source "
                f'"{self.source}"; waiting up to {self.hold_wait}s for a decision (cancel to withdraw it)',
                notice=True,
            )
        )
        waited = await self._wait_for_request(changes, request_id, "cancelled by the client while waiting")
        if waited.cancelled:
            self.log.info("held_wait_cancelled", request=request_id)
            return pgp.error_response(
                WaitCancelled(
                    f"canceling statement due to user request; change request #{request_id} cancelled"
                )
            )
        view = waited.view
        if view is None:
            return pgp.error_response(
                Held(request_id, self.source, f"still pending after {self.hold_wait}s; it runs when approved")
            )
        if view.status == "succeeded":
            return _execution_result(view, extended, self._encoding)
        ex = view.execution
        if view.status == "failed" and ex is not None:
            failed = f"change request #{request_id} was approved but failed: {ex.error_message}"
            return pgp.error_response(
                ApprovedButFailed(failed, sqlstate=ex.sqlstate, mysql_errno=ex.mysql_errno)
            )
        return pgp.error_response(Held(request_id, self.source, f"it was {view.status}; it did not run"))

    def _refused(self, verdict: Verdict, t0: float, request_id: int | None) -> None:
        """The one statement line of a denied or held statement, once the client has its answer."""
        seconds = time.perf_counter() - t0
        self._m.duration[verdict.action].observe(seconds)
        kind = verdict.kind.value
        if verdict.action is Action.DENY:
            self.log.info(
                "statement_denied", kind=kind, verdict="deny", duration_ms=_ms(seconds), reason=verdict.reason
            )
        else:
            self.log.info(
                "statement_held", kind=kind, verdict="hold", duration_ms=_ms(seconds), request=request_id
            )

    async def _upstream_idle(self) -> None:
        """Wait until the upstream has answered everything sent to it."""
        if not self._replies.idle:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    async def _refusal_error(self, verdict: Verdict, draft: HeldStatementDraft) -> tuple[bytes, int | None]:
        if self._audit_refusal is not None:
            message, self._audit_refusal = self._audit_refusal, None
            return pgp.error_response(AuditUnavailable(message)), None
        if verdict.action is Action.DENY:
            denied = Denied(
                f"permission denied: {verdict.reason} "
                f'(user "{self.user}" has {self.level} on source "{self.source}")'
            )
            return pgp.error_response(denied), None
        facts = {
            "protocol": "postgresql",
            "client_addr": self.peer,
            "application_name": self._shown.get("application_name", ""),
            "connection_id": self.key[0] if self.key else None,
            "client_encoding": self._shown.get("client_encoding", "UTF8"),
            "tls": self.on_tls,
        }
        held = HeldStatement(draft.text, draft.classification, draft.parameters(self._encoding), facts)
        try:
            if self.f.changes is not None:
                request_id = await self.f.changes.created(user=self.user, source=self.source, held=held)
            else:
                request_id = await create_request(self.f.store, user=self.user, source=self.source, held=held)
        except QueryBaseError as exc:
            self.log.error("hold_failed", error=exc.message)
            return pgp.error_response(HoldFailed(exc.message)), None
        except Exception as exc:
            self.log.exception("hold_failed")
            return pgp.error_response(HoldFailed(type(exc).__name__)), None
        return pgp.error_response(Held(request_id, self.source)), request_id


def startup_settings(params: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The settings a startup packet asks for: its parameters, with `options` split into its
    `-c name=value` / `--name=value` switches as PostgreSQL does (backslash escapes a space). Any
    other switch in `options` is refused."""
    out: list[tuple[str, str]] = []
    for name, value in params:
        if name != "options":
            out.append((name, value))
            continue
        words: list[str] = []
        current, escaped, started = [], False, False
        for ch in value:
            if escaped:
                current.append(ch)
                escaped = False
            elif ch == "\\":
                escaped, started = True, True
            elif ch.isspace():
                if started:
                    words.append("".join(current))
                current, started = [], False
            else:
                current.append(ch)
                started = True
        if started:
            words.append("".join(current))
        pending_c = False
        for word in words:
            if pending_c:
                setting, pending_c = word, False
            elif word == "-c":
                pending_c = True
                continue
            elif word.startswith("-c") or word.startswith("--"):
                setting = word[2:]
            else:
                raise AccessDenied(f"startup option {word!r} is not supported through QueryBase")
            key, sep, val = setting.partition("=")
            if not sep or not key:
                raise AccessDenied(f"startup option {setting!r} is not name=value")
            out.append((key.replace("-", "_"), val))
        if pending_c:
            raise AccessDenied("startup option -c without a setting")
    return out


def server_statement_name(encoding: str, tail: bytes) -> bytes:
    """The shared server-side name of a statement, from the client encoding its text is read in
    and its Parse body after the name (text and parameter types as sent): the same bytes are
    another text in another encoding. 224 bits of SHA-256, so no client can make two statements
    share one, within PostgreSQL's 63-byte names."""
    digest = hashlib.sha256(encoding.encode() + b"\x00" + tail).hexdigest()[:56]
    return SERVER_STATEMENT_PREFIX + digest.encode()


def _reserved_name(c: Classification) -> str | None:
    """SQL PREPARE, EXECUTE and DEALLOCATE of a name in QueryBase's server-side namespace are
    refused: they could swap what a shared statement runs."""
    names = [item.partition(":")[2] for item in c.names if ":" in item]
    if c.executes is not None:
        names.append(c.executes)
    prefix = SERVER_STATEMENT_PREFIX.decode()
    for name in names:
        if name.startswith(prefix):
            return f'names beginning with "{prefix}" are reserved by QueryBase'
    return None


def _make_parse(name: bytes, tail: bytes) -> bytes:
    return pgp.message(b"P", name + b"\x00" + tail)


def _prepared_on(upstream: UpstreamConnection, server: bytes) -> Callable[[bool], None]:
    """Forget `server` on `upstream` if the server did not prepare it after all."""

    def done(ok: bool) -> None:
        if not ok:
            upstream.prepared.pop(server, None)

    return done


def pin_reason(c: Classification) -> str | None:
    """Why a forwarded statement keeps a transaction-pooled client on its server connection for
    good, or None: what it leaves in the session cannot be carried to another connection."""
    if c.pins:
        return c.pins[0]
    if c.unvetted:
        return f"a call of {c.unvetted[0]}(), which QueryBase cannot see into"
    if c.kind in (Kind.UNKNOWN, Kind.PRIVILEGED):
        return f"a {c.kind.value} statement ({c.reason or 'not classified'})"
    return None


_PIN_LABELS = {
    "a temporary": "temp_object",
    "the pg_temp": "temp_object",
    "LISTEN": "listen",
    "a session-level advisory": "advisory_lock",
    "a WITH HOLD": "hold_cursor",
    "a SQL prepared": "sql_prepare",
    "a DO block": "do_block",
    "LOAD": "load",
    "a call of": "function",
    "a fast-path": "function",
}


def _pin_label(why: str) -> str:
    """The metric label for a pin reason (a fixed set)."""
    for prefix, label in _PIN_LABELS.items():
        if why.startswith(prefix):
            return label
    return "opaque_statement"


def _unsupported_encoding(pg_name: str) -> pgp.ProtocolViolation:
    return pgp.ProtocolViolation(
        f"client_encoding {pg_name} is not supported through QueryBase (its multibyte characters can "
        "contain the bytes of a backslash or quote, so QueryBase could read a statement differently "
        "from the server): use UTF8 or a single-byte encoding"
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _execution_result(view: RequestDetail, extended: bool, encoding: str) -> bytes:
    """What the statement would have answered, rebuilt from the recorded execution: command tags
    and (simple protocol only) the RETURNING rows as text columns."""
    ex = view.execution
    statements = (ex.rows_affected or {}).get("statements", []) if ex is not None else []
    out = bytearray()
    rows = ex.returning_rows if ex is not None and not extended else None
    for index, statement in enumerate(statements or [{"tag": "OK"}]):
        last = index == len(statements) - 1
        if last and rows:
            columns = list(rows[0]) if isinstance(rows[0], dict) else []
            out += pgp.make_row_description(columns)
            for row in rows:
                out += pgp.make_data_row(
                    [None if v is None else str(v).encode(encoding, "replace") for v in row.values()]
                )
        out += pgp.make_command_complete(str(statement.get("tag") or "OK"))
    return bytes(out)


@dataclass(frozen=True)
class HeldStatementDraft:
    """A refused statement as the session saw it; parameters are decoded only if it is held."""

    text: str
    classification: Classification
    bind_raw: bytes | None
    param_types: tuple[int, ...]

    def parameters(self, encoding: str) -> list[dict[str, Any]] | None:
        if self.bind_raw is None:
            return None
        bind = pgp.parse_bind(self.bind_raw[5:], encoding)
        formats = bind.param_formats
        out = []
        for i, value in enumerate(bind.params):
            fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
            out.append(
                {
                    "type_oid": self.param_types[i] if i < len(self.param_types) else 0,
                    "format": fmt,
                    "value_b64": None if value is None else base64.b64encode(value).decode(),
                }
            )
        return out


_STOP = object()
# Transaction pooling: server-side statement names start with this (SQL names that do are refused).
SERVER_STATEMENT_PREFIX = b"_qb_"
MAX_SERVER_STATEMENTS = 250  # per server connection; the oldest are deallocated beyond it
# A Close of a statement that never exists: the server answers CloseComplete and does nothing.
_CLOSE_NOTHING = pgp.make_close(b"S", SERVER_STATEMENT_PREFIX + b"none")
_ABORT_TRANSACTION = "DO $$BEGIN RAISE EXCEPTION 'statement refused by QueryBase'; END$$"
_HANDLERS: dict[bytes, Callable[[PgSession, bytes], object]] = {
    b"Q": PgSession._on_query,
    b"P": PgSession._on_parse,
    b"B": PgSession._on_bind,
    b"E": PgSession._on_execute,
    b"S": PgSession._on_sync,
    b"C": PgSession._on_close,
    b"D": PgSession._on_describe,
    b"H": PgSession._on_forward,  # Flush: no reply, and it neither opens nor ends a batch
    b"d": PgSession._on_forward,
    b"c": PgSession._on_forward,
    b"f": PgSession._on_forward,
    b"F": PgSession._on_function_call,
    b"X": PgSession._on_terminate,
    b"p": PgSession._on_password,
}

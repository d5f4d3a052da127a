"""MySQL/MariaDB client sessions: greeting, TLS, caching_sha2/native login, then a policy-checked relay.

Theory of operation. A session is an `asyncio.Protocol`. A login coroutine sends the greeting,
reads the HandshakeResponse41 (after an SSLRequest and `start_tls` when the client asks), checks
the scramble against the user's stored verifier (caching_sha2_password always takes the fast
path; other plugins are switched to mysql_native_password), picks the source from the handshake
database, and checks out an upstream connection opened with the client's capabilities, so
terminators and multi-result flags match end to end.

The relay is request/response: one client command at a time goes upstream, its response is
relayed as it arrives and followed with a `ResultScanner`; the next buffered command is handled
when the response is complete. COM_QUERY and COM_STMT_EXECUTE are decided by policy (classified
at COM_QUERY / COM_STMT_PREPARE); a held or denied command is answered with an ERR by QueryBase
and never reaches the upstream. Every command byte has an explicit handler (`_HANDLERS`). KILL, in
any spelling the classifier recognises, and COM_PROCESS_KILL are never relayed: a QueryBase
connection id (or upstream thread id) of the same user's own session is translated to that
session's upstream thread; everything else is refused.

Session state the classifier depends on is tracked here: the current schema (USE, COM_INIT_DB;
for the source's schema allowlist) and how the server lexes (`sql_mode`, `character_set_client`),
which QueryBase reads back from the upstream with its own hidden query (`_Hidden.LEXING`) after
login, COM_CHANGE_USER, COM_RESET_CONNECTION and any statement that may change them. COM_QUERY
bytes are decoded in the client character set with invalid bytes as U+FFFD for classification;
the exact bytes are forwarded, and held (`statement_b64`) when the text is not exact.

Metrics and the statement log (proxy/observe/metrics.py, docs/observability.md): a COM_QUERY or
COM_STMT_EXECUTE (and a COM_STMT_PREPARE refused at once) is counted in a pre-bound counter when
decided; its clock starts when its handling starts, and it is observed (and logged: reads,
transaction and session statements sampled by `[log] read_sample_rate`) when its response
ends (`_answered`), or when QueryBase has answered it with a denial or a hold.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import itertools
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import structlog

from policies.cache import classify_mysql_cached, classify_mysql_in_mode
from policies.decide import as_decided, with_prepared_kind
from policies.decide import decide_cached as decide
from policies.mysql import (
    CLIENT_CHARSET,
    DEFAULT_MODE,
    SAFE_CLIENT_CHARSETS,
    SQL_MODE,
    UNSUPPORTED_MODE_FLAGS,
    count_placeholders,
    lexing_mode,
    sql_mode_flags,
)
from policies.types import Action, Classification, Kind, Level, SourcePolicy, Verdict
from proxy.audit.log import AuditWriter, audit_login, audit_statement
from proxy.auth.limits import LoginFailed, LoginLimiter
from proxy.auth.verifiers import verify_caching_sha2_scramble, verify_native_scramble
from proxy.config import Settings
from proxy.errors import (
    ApprovedButFailed,
    AuditUnavailable,
    Denied,
    DeniedPrivileged,
    Held,
    HoldFailed,
    NotFound,
    QueryBaseError,
    WaitCancelled,
)
from proxy.observe import metrics
from proxy.observe.logging import ReadSampler
from proxy.observe.sessions import IDLE, SessionRegistry
from proxy.store.catalog import Catalog, SourceCredentials
from proxy.store.db import Store
from proxy.store.requests import HeldStatement, create_request
from proxy.upstream.base import Params, UpstreamTarget, source_pool
from proxy.upstream.mysql import CACHING_SHA2, NATIVE, READ_ONLY_SQL, UpstreamConnection
from proxy.upstream.pool import Pool
from proxy.wire.mysql import protocol as my
from proxy.wire.relay import RelaySession

if TYPE_CHECKING:
    from proxy.changes.service import ChangeService

log = structlog.get_logger("querybase.mysql")

LOGIN_TIMEOUT = 60.0
PROTOCOL = "mysql"
_ACCEPTED = metrics.CLIENT_CONNECTIONS_ACCEPTED.labels(PROTOCOL)
_OPEN = metrics.CLIENT_CONNECTIONS_OPEN.labels(PROTOCOL)
# Forwarded statements of these kinds are logged as sampled by `[log] read_sample_rate`.
_SAMPLED_KINDS = frozenset({Kind.READ, Kind.TRANSACTION, Kind.SESSION})
READ_SIZE = 256 * 1024
MAX_BACKLOG = 4 * 1024 * 1024  # client bytes buffered while a command runs, before reading pauses
LOGIN_READ_SIZE = 16 * 1024  # the most read at once before login (then exactly up to a packet's end)
MAX_LOGIN_PACKET = 64 * 1024  # SSLRequest, HandshakeResponse41 and auth answers are far smaller
DEFAULT_SERVER_VERSION = "8.0.36-QueryBase"
ER_ACCESS_DENIED = 1045
ER_DBACCESS_DENIED = 1044
ER_BAD_DB = 1049
ER_TABLEACCESS_DENIED = 1142
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_NOT_SUPPORTED = 1235
ER_SECURE_TRANSPORT_REQUIRED = 3159
ER_NO_SUCH_THREAD = 1094
ER_UNKNOWN_STMT_HANDLER = 1243
ER_WRONG_ARGUMENTS = 1210
MAX_LONG_DATA = my.DEFAULT_MAX_PAYLOAD  # COM_STMT_SEND_LONG_DATA kept for one held execute
# Capabilities that change what the server sends, so the upstream must be opened with the client's.
_UPSTREAM_CAPS = (
    my.Capability.CLIENT_DEPRECATE_EOF
    | my.Capability.CLIENT_MULTI_STATEMENTS
    | my.Capability.CLIENT_MULTI_RESULTS
    | my.Capability.CLIENT_PS_MULTI_RESULTS
    | my.Capability.CLIENT_FOUND_ROWS
    | my.Capability.CLIENT_IGNORE_SPACE
    | my.Capability.CLIENT_LONG_FLAG
)


def _role(level: Level) -> str:
    return "write" if level is Level.WRITE else "read"


# What the session asks the upstream on its own behalf (answers never reach the client).
LEXING_SQL = "SELECT @@SESSION.sql_mode, @@SESSION.character_set_client"


class _Hidden(enum.Enum):
    """QueryBase's own queries on the client's upstream session."""

    READ_ONLY = READ_ONLY_SQL  # restore the read-only backstop after COM_RESET_CONNECTION
    LEXING = LEXING_SQL  # learn sql_mode and the client character set: how the server lexes


@dataclass(frozen=True, slots=True)
class _Effects:
    """What a forwarded command does to the session state QueryBase tracks, applied when its
    response ends: the schema it switches to (on success), whether the lexing settings may
    have changed (then they are read back from the server)."""

    schema: str | None = None
    relex: bool = False


class MySQLError(QueryBaseError):
    """An error QueryBase answers with an ERR packet; the errno is per instance."""

    def __init__(self, errno: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.mysql_errno = errno
        self.sqlstate = sqlstate


class MySQLFrontend:
    """What all MySQL sessions share: settings, store, pools, connection ids, the version shown."""

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
        self.tls = tls if settings.tls.mode != "disable" else None
        self.server_version = DEFAULT_SERVER_VERSION
        self.pools: dict[tuple[str, str, str], Pool[UpstreamConnection]] = {}
        self.sessions: dict[int, MySQLSession] = {}
        self.limiter = LoginLimiter(protocol=PROTOCOL)
        self._ids = itertools.count(1)
        self.draining = False  # shutting down: sessions end once their running command is answered
        # The change-request service (notifications, waiting mode), the live-session registry of
        # the admin API, the audit writer for logins and statement verdicts.
        self.changes = changes
        self.registry = registry
        self.audit = audit
        self._emptied = asyncio.Event()

    def protocol(self) -> MySQLSession:
        return MySQLSession(self)

    async def learn_server_version(self) -> None:
        """Greet clients with the version a MySQL source reports (drivers pick code paths from it).

        Reads the first source's greeting without logging in; later upstream logins refresh it.
        """
        for view in await self.catalog.list_sources():
            if view.engine != "mysql":
                continue
            try:
                async with asyncio.timeout(3):
                    reader, writer = await asyncio.open_connection(view.host, view.port)
                    try:
                        packets = my.PacketReader()
                        while (found := packets.next()) is None:
                            chunk = await reader.read(4096)
                            if not chunk:
                                break
                            packets.feed(chunk)
                    finally:
                        writer.close()
                if found is not None and found[1][:1] == b"\x0a":
                    self.server_version = my.parse_handshake_v10(found[1]).server_version
                    return
            except (OSError, TimeoutError, QueryBaseError) as exc:
                log.warning("mysql_version_probe_failed", source=view.name, error=str(exc))

    def new_id(self, session: MySQLSession) -> int:
        connection_id = next(self._ids)
        self.sessions[connection_id] = session
        return connection_id

    def pool(self, creds: SourceCredentials, role: str) -> Pool[UpstreamConnection]:
        async def connect(target: UpstreamTarget, params: Params) -> UpstreamConnection:
            conn = await UpstreamConnection.connect(target, params)
            self.server_version = conn.server_version  # show what the databases report
            return conn

        return source_pool(self.pools, creds, role, connect)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - the shutdown budget
        """Graceful shutdown: end idle sessions now (ERR 1053) and the others as soon as their
        running command has been answered, for up to `timeout` seconds; then close everything."""
        self.draining = True
        for session in list(self.sessions.values()):
            session.end_if_idle()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout)
        await self.close()

    def session_ended(self, connection_id: int) -> None:
        self.sessions.pop(connection_id, None)
        if self.draining and not self.sessions:
            self._emptied.set()

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            session.shutdown()
        for pool in self.pools.values():
            await pool.close()


@dataclass
class _Prepared:
    sql: str
    classification: Classification
    params: int = 0
    types: bytes | None = None
    virtual: bool = False  # prepared by QueryBase only: a write to hold, never sent upstream
    raw: bytes | None = None  # the exact text bytes, when `sql` is not (bytes invalid in the charset)
    # Virtual statements only: COM_STMT_SEND_LONG_DATA chunks per parameter until the next
    # execute or reset, and the first problem with them (reported at execute, as MySQL does).
    long_data: dict[int, bytearray] = field(default_factory=dict)
    long_data_error: str | None = None


VIRTUAL_STATEMENT_BASE = 0x7F000000  # virtual statement ids, far above what servers hand out


class MySQLSession(RelaySession, asyncio.BufferedProtocol):
    """One client connection."""

    def __init__(self, frontend: MySQLFrontend) -> None:
        super().__init__()
        self.f = frontend
        self.reader = my.PacketReader()
        self.allowed_schemas: tuple[str, ...] | None = None
        self.connection_id = 0
        self.capabilities = my.Capability(0)
        self.upstream: UpstreamConnection | None = None
        self.pool: Pool[UpstreamConnection] | None = None
        self.log = log
        self._waiter: asyncio.Future[None] | None = None
        self._login_task: asyncio.Task[None] | None = None
        self._scanner: my.ResultScanner | None = None
        self._upstream_reader = my.PacketReader()
        self._in_flight: my.Command | None = None
        self._pending_prepare: _Prepared | None = None
        self._statements: dict[int, _Prepared] = {}
        self._next_virtual = VIRTUAL_STATEMENT_BASE
        self._last_prepared = -1  # what MariaDB's statement id 0xFFFFFFFF means
        self._lost = False  # connection_lost ran (the login may have to run it: see _login)
        self._hidden: _Hidden | None = None  # the response in flight answers QueryBase's own query
        self._hidden_queue: list[_Hidden] = []
        self._hidden_row: bytes | None = None
        self._effects: _Effects | None = None  # of the forwarded command in flight
        self._schema = ""  # the upstream session's current schema (USE, COM_INIT_DB)
        self._mode = DEFAULT_MODE  # how the server lexes: from sql_mode, read back from the server
        self._charset = "utf8mb4"  # character_set_client, read back from the server
        self._read_buffer = bytearray()
        self._reply_seq = 2  # the sequence id an ERR during login must carry
        self._scramble = b""  # the greeting's: COM_CHANGE_USER answers are computed with it
        # metrics and the statement log (see the module docstring)
        self._m: metrics.StatementMetrics = metrics.statement_metrics(PROTOCOL, "")
        self._session_open: metrics.Gauge | None = None  # this session's querybase_client_sessions_open
        self._timed: tuple[float, Kind] | None = None  # the forwarded statement in flight
        self._overhead_due = 1  # statements until the next overhead sample
        self._sample_reads = ReadSampler(frontend.settings.log.read_sample_rate)

    # --------------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.connection_id = self.f.new_id(self)
        self.log = log.bind(connection_id=self.connection_id, protocol=PROTOCOL, client=self.peer)
        _ACCEPTED.inc()
        _OPEN.inc()
        if self.f.registry is not None:
            self.entry = self.f.registry.register("mysql", self.peer, self.terminate_by_admin)
        self._login_task = asyncio.get_running_loop().create_task(self._login())

    # Bytes arrive through BufferedProtocol so that, before TLS, QueryBase reads exactly one packet
    # at a time: a client sends its TLS ClientHello right behind the SSLRequest without waiting
    # for an answer, and those bytes must stay in the socket for the TLS layer — never be read as
    # plaintext, nor lost.
    def get_buffer(self, sizehint: int) -> bytearray:
        if not self._ready and not self.on_tls:
            # Up to the packet's end, never more than LOGIN_READ_SIZE at once: what a header
            # declares is not allocated before it arrives.
            wanted = min(self.reader.bytes_to_next_packet(), LOGIN_READ_SIZE)
            self._read_buffer = bytearray(max(wanted, 1))
        elif len(self._read_buffer) != READ_SIZE:
            self._read_buffer = bytearray(READ_SIZE)
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except my.ProtocolViolation as exc:
            self._fatal(exc)
            return
        if self._ready:
            # Reading goes on while a command runs, so a client that hangs up is noticed at once
            # (and its upstream statement stopped); only a large backlog of commands pauses it.
            if self.reader.buffered > MAX_BACKLOG:
                self._pause("backlog")
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)  # COM_CHANGE_USER waits for the client's auth answer
            self._process()
            return
        if self.reader.buffered + self.reader.bytes_to_next_packet() > MAX_LOGIN_PACKET:
            self._fatal(my.ProtocolViolation(f"a login packet of more than {MAX_LOGIN_PACKET} bytes"))
            return
        if not self.on_tls and self.reader.bytes_to_next_packet() <= 0:
            self._pause("login")  # a whole packet is here: read nothing more until it is handled
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closed = True
        _OPEN.dec()
        if self._session_open is not None:
            self._session_open.dec()
            self._session_open = None
        self.f.session_ended(self.connection_id)
        if self.entry is not None and self.f.registry is not None:
            self.f.registry.unregister(self.entry)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        login = self._login_task
        if login is not None and not login.done() and login is not asyncio.current_task():
            login.cancel()
        self._cancel_tasks()
        if self.upstream is not None and self.pool is not None:
            upstream, pool, self.upstream = self.upstream, self.pool, None
            busy = self._in_flight is not None or self._busy
            self._spawn(self._give_back(upstream, pool, busy))
        if self._ready:
            self.log.info("disconnected")

    def upstream_data(self, data: bytes) -> None:
        if self.transport is not None and self._hidden is None and not self.transport.is_closing():
            self.transport.write(data)
        try:
            self._upstream_reader.feed(data)
            while (found := self._upstream_reader.next()) is not None:
                self._upstream_payload(found[1])
        except my.ProtocolViolation as exc:
            self._fatal(exc)

    def _upstream_payload(self, payload: bytes) -> None:
        scanner = self._scanner
        if scanner is None or self._in_flight is None:
            return  # an unsolicited packet (the server closing the connection): relayed as is
        rows = scanner.rows
        event = scanner.feed(payload)
        if self._hidden is not None and scanner.rows > rows:
            self._hidden_row = payload
        if event is my.ScanEvent.LOCAL_INFILE:
            self._fatal(
                my.ProtocolViolation("upstream asked for a LOCAL INFILE upload, which QueryBase never allows")
            )
            return
        if event is not my.ScanEvent.DONE:
            return
        command, self._in_flight = self._in_flight, None
        timed = self._timed
        if timed is not None:
            self._timed = None
            self._answered(timed, scanner.error)
        hidden, self._hidden = self._hidden, None
        if hidden is not None:
            if not self._hidden_answered(hidden, scanner.error):
                return
        else:
            self._command_answered(command, scanner)
        if self._hidden_queue and not self._closed:
            self._start_hidden(self._hidden_queue.pop(0))
            return
        if self.f.draining:
            self.end_if_idle()
            return
        self._process()

    def _command_answered(self, command: my.Command, scanner: my.ResultScanner) -> None:
        """A client command's response ended: apply what it did to the tracked session state."""
        effects, self._effects = self._effects, None
        if command is my.Command.COM_RESET_CONNECTION:
            if scanner.error is None:
                # The upstream dropped its statements; the virtual ones go too, as on a server.
                self._statements.clear()
                self._sql_prepared.clear()
            if self.upstream is not None and self.upstream.target.read_only:
                # The reset also reset the session's read-only flag: set it again first.
                self._hidden_queue.append(_Hidden.READ_ONLY)
            self._hidden_queue.append(_Hidden.LEXING)  # and sql_mode, character set
        if command is my.Command.COM_STMT_PREPARE and self._pending_prepare is not None:
            if scanner.prepare_ok is not None:
                prepared = replace(self._pending_prepare, params=scanner.prepare_ok.num_params)
                self._statements[scanner.prepare_ok.statement_id] = prepared
                self._last_prepared = scanner.prepare_ok.statement_id
            self._pending_prepare = None
        if effects is not None:
            if effects.schema is not None and scanner.error is None:
                self._schema = effects.schema
            if effects.relex and _Hidden.LEXING not in self._hidden_queue:
                self._hidden_queue.append(_Hidden.LEXING)

    def _start_hidden(self, hidden: _Hidden) -> None:
        """Send QueryBase's own query on the upstream session; its answer is not relayed."""
        assert self.upstream is not None
        scanner = self._scanner_for(self.upstream)
        scanner.start(my.Command.COM_QUERY)
        self._hidden, self._hidden_row = hidden, None
        self.upstream.transport.write(my.make_packets(my.make_query(hidden.value), 0)[0])
        self._in_flight = my.Command.COM_QUERY

    def _hidden_answered(self, hidden: _Hidden, error: my.ErrPacket | None) -> bool:
        """QueryBase's own query was answered; False when the session had to end."""
        if hidden is _Hidden.READ_ONLY:
            if error is not None:
                self._fatal(
                    MySQLError(1105, "HY000", f"could not restore the read-only session: {error.message}")
                )
                return False
            return True
        values: list[bytes | None] = []
        row = self._hidden_row
        pos = 0
        while row is not None and pos < len(row):
            value, pos = my.read_lenenc_str(row, pos)
            values.append(value)
        if error is not None or len(values) != 2 or values[0] is None or values[1] is None:
            reason = error.message if error is not None else "no answer"
            self._fatal(MySQLError(1105, "HY000", f"could not read the session's sql_mode: {reason}"))
            return False
        sql_mode, charset = values[0].decode("ascii", "replace"), values[1].decode("ascii", "replace").lower()
        self._mode, self._charset = lexing_mode(sql_mode), charset
        problem = self._setting_problem(SQL_MODE, sql_mode) or self._setting_problem(CLIENT_CHARSET, charset)
        if problem is not None:
            self.log.warning("unsupported_session_setting", sql_mode=sql_mode, charset=charset)
            self._fatal(MySQLError(ER_NOT_SUPPORTED, "42000", f"{problem}; the connection is closed"))
            return False
        return True

    def _setting_problem(self, name: str, value: str | None) -> str | None:
        """Why QueryBase cannot classify statements under this lexing setting, or None."""
        if value is None:
            return None
        if name == CLIENT_CHARSET and value.lower() not in SAFE_CLIENT_CHARSETS:
            return (
                f"client character set '{value}' is not supported through QueryBase: in some character "
                "sets a multibyte character can contain the byte of a backslash or quote, so QueryBase "
                "and the server could read a statement differently; use utf8mb4"
            )
        if name == SQL_MODE and self.level is not Level.WRITE:
            unsupported = sql_mode_flags(value) & UNSUPPORTED_MODE_FLAGS
            if unsupported:
                return (
                    f"sql_mode {', '.join(sorted(unsupported))} is not supported through QueryBase for "
                    f"{self.level} users: the server parses another language in it"
                )
        return None

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._closed or self.transport is None:
            return
        self.log.warning("upstream_lost", source=self.source, error=str(exc) if exc else "EOF")
        self._send_err(
            MySQLError(2013, "HY000", f"lost the connection to the upstream of source {self.source!r}"), 1
        )
        self.transport.close()

    def terminate_by_admin(self) -> None:
        if self.transport is not None and not self._closed:
            self.log.info("terminated_by_admin")
            self._send_err(MySQLError(1927, "70100", "Connection was killed by a QueryBase administrator"), 0)
            self.transport.close()

    def end_if_idle(self) -> None:
        """During a graceful shutdown: end the session unless a command is still running."""
        if not self._ready or (self._in_flight is None and not self._busy):
            self.shutdown()

    def shutdown(self) -> None:
        if self.transport is not None and not self._closed:
            self._send_err(MySQLError(1053, "08S01", "QueryBase is shutting down"), 0)
            self.transport.close()
        if not self._ready and self._login_task is not None and not self._login_task.done():
            self._login_task.cancel()  # e.g. waiting in a TLS handshake the client abandoned

    def _send_err(self, exc: QueryBaseError, seq: int) -> None:
        if self.transport is not None and not self._closed and not self.transport.is_closing():
            self.transport.write(my.make_packets(my.err_payload(exc), seq)[0])

    def _fatal(self, exc: QueryBaseError, seq: int = 0) -> None:
        self.log.warning("session_error", errno=exc.mysql_errno, error=exc.message)
        self._send_err(exc, seq)
        if self.transport is not None:
            self.transport.close()
        self._closed = True

    # ---------------------------------------------------------------------------------- login

    async def _read(self) -> tuple[int, bytes]:
        while True:
            found = self.reader.next()
            if found is not None:
                return found
            if self._closed:
                raise ConnectionResetError
            self._resume("login")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def _login(self) -> None:
        try:
            await self._login_steps()
        finally:
            # A TLS handshake that failed or was cancelled leaves the socket to the TLS layer,
            # which never reports the loss to this protocol: end the session here then.
            if (
                not self._ready
                and not self._lost
                and (self._closed or self.transport is None or self.transport.is_closing())
            ):
                self.connection_lost(None)

    async def _login_steps(self) -> None:
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT):
                seq = await self._authenticate()
                await self._attach_source(seq)
        except ConnectionResetError:
            return
        except TimeoutError:
            metrics.login_failed(PROTOCOL, "protocol")
            self._fatal(my.ProtocolViolation("login timed out"), self._reply_seq)
        except OSError as exc:
            # A TLS handshake that is not one (ssl.SSLError), a peer that vanished mid-login:
            # hostile or broken input, an expected event — one line, no traceback.
            metrics.login_failed(PROTOCOL, "protocol")
            self.log.warning("login_aborted", error=f"{type(exc).__name__}: {exc}", tls=self.on_tls)
            self._closed = True
            if self.transport is not None:
                self.transport.abort()
        except MySQLError as exc:
            _count_login_failure(exc)
            self._audit_login_failure(exc)
            self._fatal(exc, self._reply_seq)
        except QueryBaseError as exc:
            _count_login_failure(exc)
            self._audit_login_failure(exc)
            self._fatal(MySQLError(exc.mysql_errno, "HY000", exc.message), self._reply_seq)
        except Exception as exc:
            metrics.login_failed(PROTOCOL, "internal")
            self.log.exception("login_crashed")
            self._fatal(
                MySQLError(1105, "HY000", f"internal error during login: {type(exc).__name__}"),
                self._reply_seq,
            )

    def _audit_login_failure(self, exc: QueryBaseError) -> None:
        audit_login(self.f.audit, protocol=PROTOCOL, user=self.user, client=self.peer, failure=exc.message)

    async def _authenticate(self) -> int:
        assert self.transport is not None
        scramble = bytes(secrets.choice(range(1, 128)) for _ in range(my.SCRAMBLE_LENGTH))
        caps = my.server_capabilities(self.f.tls is not None)
        greeting = my.make_handshake_v10(
            self.f.server_version,
            self.connection_id,
            scramble,
            caps,
            my.UTF8MB4_GENERAL_CI,
            my.ServerStatus.SERVER_STATUS_AUTOCOMMIT,
            CACHING_SHA2,
        )
        self.transport.write(my.make_packets(greeting, 0)[0])
        seq, payload = await self._read()
        response = my.parse_handshake_response41(payload, caps)
        if isinstance(response, my.SSLRequest):
            if self.reader.buffered:
                raise my.ProtocolViolation("bytes received after SSLRequest before the TLS handshake")
            assert self.f.tls is not None
            new = await asyncio.get_running_loop().start_tls(
                self.transport, self, self.f.tls, server_side=True
            )
            self.transport, self.on_tls = cast(asyncio.Transport, new), True
            seq, payload = await self._read()
            response = my.parse_handshake_response41(payload, caps)
            if isinstance(response, my.SSLRequest):
                raise my.ProtocolViolation("a second SSLRequest")
        self._reply_seq = my.next_seq(seq)
        if self.f.settings.tls.mode == "require" and not self.on_tls:
            raise MySQLError(
                ER_SECURE_TRANSPORT_REQUIRED, "HY000", "QueryBase requires TLS on this port: connect with SSL"
            )
        self.capabilities = response.capabilities
        self.user = response.user
        self.source = response.database or ""
        self.log = self.log.bind(user=self.user)
        self._scramble = scramble
        return await self._check_password(
            self.user, response.auth_plugin, response.auth_response, scramble, seq
        )

    async def _check_password(self, user: str, plugin: str, answer: bytes, nonce: bytes, seq: int) -> int:
        """Verify `user`'s scramble `answer` (the plugin flow of login and COM_CHANGE_USER): a
        plugin other than caching_sha2/native is switched to native with a fresh scramble.
        `seq` is the sequence id of the client packet answered. Returns the sequence id the next
        server packet (OK) must carry; raises MySQLError 1045 on a wrong password."""
        assert self.transport is not None
        address = self.peer.rpartition(":")[0]
        try:
            self.f.limiter.check(user, address)
        except LoginFailed as exc:
            raise MySQLError(ER_ACCESS_DENIED, "28000", exc.message) from None
        login = await self.f.catalog.user_login(user)
        usable = login is not None and login.active
        plugin = plugin or NATIVE
        if plugin not in (CACHING_SHA2, NATIVE):
            # Switch to the plugin every client has; the new scramble guards against replay.
            nonce = bytes(secrets.choice(range(1, 128)) for _ in range(my.SCRAMBLE_LENGTH))
            seq = my.next_seq(seq)
            self.transport.write(
                my.make_packets(my.make_auth_switch_request(NATIVE, nonce + b"\x00"), seq)[0]
            )
            seq, answer = await self._read()
            plugin = NATIVE
        ok = False
        if login is not None and usable:
            if plugin == CACHING_SHA2:
                ok = verify_caching_sha2_scramble(login.sha256_sha256, nonce, answer)
            else:
                ok = verify_native_scramble(login.sha1_sha1, nonce, answer)
        seq = my.next_seq(seq)
        self._reply_seq = seq
        if not ok:
            self.f.limiter.failure(user, address, "wrong_password" if usable else "unknown_user")
            self.log.info(
                "login_failed", user=user, reason="wrong password" if usable else "unknown or disabled user"
            )
            used = "YES" if answer else "NO"
            raise MySQLError(
                ER_ACCESS_DENIED,
                "28000",
                f"Access denied for user '{user}'@'{address}' (using password: {used})",
            )
        if plugin == CACHING_SHA2:
            self.transport.write(my.make_packets(my.make_auth_more_data(b"\x03"), seq)[0])
            seq = my.next_seq(seq)
            self._reply_seq = seq
        return seq

    async def _choose_source(self, user: str, source: str) -> SourceCredentials:
        """The source the handshake (or COM_CHANGE_USER) database names; without one, the only
        MySQL source `user` can reach."""
        if source:
            try:
                creds = await self.f.catalog.source_credentials(source)
            except NotFound:
                raise MySQLError(
                    ER_BAD_DB, "42000", f"Unknown database '{source}' (no QueryBase source of that name)"
                ) from None
            if creds.view.engine != "mysql":
                raise MySQLError(
                    ER_BAD_DB, "42000", f"source '{source}' is a PostgreSQL source: use the PostgreSQL port"
                )
            return creds
        reachable = []
        for view in await self.f.catalog.list_sources():
            if view.engine == "mysql" and (await self.f.catalog.levels(user, view.name))[0] is not None:
                reachable.append(view.name)
        if len(reachable) != 1:
            names = ", ".join(reachable) or "none"
            raise MySQLError(1046, "3D000", f"No database selected: name a source; yours are: {names}")
        return await self.f.catalog.source_credentials(reachable[0])

    async def _grant(self, user: str, source: str) -> tuple[SourceCredentials, Level]:
        creds = await self._choose_source(user, source)
        level, _ = await self.f.catalog.levels(user, creds.view.name)
        if level is None:
            raise MySQLError(
                ER_DBACCESS_DENIED,
                "42000",
                f"Access denied for user '{user}' to database '{creds.view.name}'",
            )
        return creds, level

    def _upstream_for(
        self, creds: SourceCredentials, level: Level
    ) -> tuple[Pool[UpstreamConnection], Params]:
        """The pool and the connection parameters for an upstream of `creds`' source at `level`."""
        params = (
            ("capabilities", str(int(self.capabilities & _UPSTREAM_CAPS))),
            ("charset", str(my.UTF8MB4_GENERAL_CI)),
            ("schema", creds.view.database),
        )
        return self.f.pool(creds, _role(level)), params

    def _become(self, user: str, creds: SourceCredentials, level: Level) -> None:
        self.user, self.source, self.level = user, creds.view.name, level
        self.policy = SourcePolicy(
            block_ddl=creds.view.block_ddl,
            # MySQL function names are case-insensitive: the classifier lists them in lower case.
            trusted_functions=frozenset(name.lower() for name in creds.view.trusted_functions),
        )
        self.hold_wait = creds.view.hold_wait_seconds
        if self.entry is not None:
            self.entry.user, self.entry.source, self.entry.state = user, creds.view.name, IDLE
        self.allowed_schemas = creds.view.allowed_schemas
        self._schema = creds.view.database
        self.log = self.log.bind(user=user, source=self.source)

    def _session_started(self) -> None:
        """Logged in (or changed user) and attached to the source: count it, bind its metrics."""
        self._m = metrics.statement_metrics(PROTOCOL, self.source)
        tls = metrics.tls_label(self.on_tls)
        metrics.CLIENT_SESSIONS.labels(PROTOCOL, self.source, tls).inc()
        if self._session_open is not None:
            self._session_open.dec()
        self._session_open = metrics.CLIENT_SESSIONS_OPEN.labels(PROTOCOL, self.source, tls)
        self._session_open.inc()

    async def _attach_source(self, seq: int) -> None:
        assert self.transport is not None
        creds, level = await self._grant(self.user, self.source)
        self._become(self.user, creds, level)
        self.pool, params = self._upstream_for(creds, level)
        upstream = await self.pool.acquire(params)
        if self._closed:
            await self.pool.release(upstream)
            return
        self.upstream = upstream
        self.transport.write(my.make_packets(my.make_ok(status=upstream.status), seq)[0])
        upstream.attach(self)
        self._session_started()
        self._ready = True
        self._resume("login")
        audit_login(self.f.audit, protocol=PROTOCOL, user=self.user, client=self.peer, source=self.source)
        self.log.info("connected", level=level.value, role=_role(level), tls=self.on_tls)
        self._start_hidden(_Hidden.LEXING)  # the first command waits for it

    # ---------------------------------------------------------------------------------- relay

    def _process(self) -> None:
        """Handle the next buffered command if no response is outstanding."""
        if "backlog" in self._paused and self.reader.buffered <= MAX_BACKLOG:
            self._resume("backlog")
        while not self._closed and not self._busy and self._in_flight is None:
            try:
                found = self.reader.next()
                if found is None:
                    return
                _, payload = found
                if not payload:
                    raise my.ProtocolViolation("empty command packet")
                command, body = my.parse_command(payload)
            except my.UnknownCommand as exc:
                self._send_err(MySQLError(1047, "08S01", exc.message), 1)
                continue
            except my.ProtocolViolation as exc:
                self._fatal(exc)
                return
            handler = _HANDLERS[command]
            try:
                handler(self, command, body, payload)
            except my.ProtocolViolation as exc:
                self._fatal(exc)
                return
            except QueryBaseError as exc:  # answered in place of the server: the session goes on
                self._send_err(exc, 1)

    def _scanner_for(self, upstream: UpstreamConnection) -> my.ResultScanner:
        if self._scanner is None:
            deprecate = bool(upstream.capabilities & my.Capability.CLIENT_DEPRECATE_EOF)
            self._scanner = my.ResultScanner(deprecate, upstream.status)
        return self._scanner

    def _forward(self, command: my.Command, payload: bytes, effects: _Effects | None = None) -> None:
        assert self.upstream is not None
        scanner = self._scanner_for(self.upstream)
        try:
            expects_reply = scanner.start(command)
        except ValueError:
            raise MySQLError(
                ER_NOT_SUPPORTED, "42000", f"{command.name} is not supported through QueryBase"
            ) from None
        self.upstream.transport.write(my.make_packets(payload, 0)[0])
        if expects_reply:
            self._in_flight = command
            self._effects = effects

    def _decide(self, c: Classification, sql: str, *, prepare: bool = False, quiet: bool = False) -> Verdict:
        """The verdict, recorded in the audit log (a PREPARE, and a `quiet` housekeeping command
        such as COM_PING, only when it is denied: a PREPARE's executes are recorded); an audit log
        that cannot record it refuses the statement (1105)."""
        c = with_prepared_kind(c, self._sql_prepared)
        assert self.level is not None
        verdict = decide(c, self.level, self.policy)
        refusal = audit_statement(
            self.f.audit,
            protocol=PROTOCOL,
            user=self.user,
            source=self.source,
            connection=f"{PROTOCOL}:{self.connection_id}",
            verdict=verdict,
            text=sql,
            record=not (prepare or quiet) or verdict.action is Action.DENY,
        )
        if refusal is not None:
            raise AuditUnavailable(refusal)
        self._audit_backpressure(self.f.audit)
        return verdict

    def _count(self, verdict: Verdict) -> None:
        self._m.counted[(verdict.kind, verdict.action)].inc()

    def _forward_statement(
        self, command: my.Command, payload: bytes, t0: float, kind: Kind, effects: _Effects | None = None
    ) -> None:
        """Forward a decided statement and start its timing; every OVERHEAD_SAMPLE-th one is
        also timed up to its write to the upstream."""
        self._forward(command, payload, effects)
        self._timed = (t0, kind)
        self._overhead_due -= 1
        if not self._overhead_due:
            self._overhead_due = metrics.OVERHEAD_SAMPLE
            self._m.overhead.observe(time.perf_counter() - t0)

    def _answered(self, timed: tuple[float, Kind], error: my.ErrPacket | None) -> None:
        """A forwarded statement's response ended: observe it, log it (reads sampled)."""
        t0, kind = timed
        seconds = time.perf_counter() - t0
        self._m.duration[Action.FORWARD].observe(seconds)
        if error is not None:
            self.log.info(
                "statement",
                kind=kind.value,
                verdict="forward",
                duration_ms=_ms(seconds),
                errno=error.errno,
                sqlstate=error.sqlstate,
            )
        elif kind not in _SAMPLED_KINDS or self._sample_reads():
            self.log.info("statement", kind=kind.value, verdict="forward", duration_ms=_ms(seconds))

    def _decode(self, body: bytes) -> tuple[str, bool]:
        """The statement text to classify (and show), and whether it is exactly the bytes sent.

        Bytes that are not valid in the client character set (the raw bytes of a `_binary'…'`
        literal, as PyMySQL and the mariadb client send them) become U+FFFD in the text: they are
        data inside a literal, never quotes or backslashes (those are ASCII, and both UTF-8 and
        the server leave ASCII bytes alone inside an invalid sequence). The exact bytes are what
        goes upstream, and what a held request keeps."""
        codec = SAFE_CLIENT_CHARSETS.get(self._charset, "utf-8")
        try:
            text = body.decode(codec)
        except UnicodeDecodeError:
            return body.decode(codec, "replace"), False
        return text, codec == "utf-8" or text.isascii()

    def _classify(self, sql: str) -> Classification:
        if self._mode == DEFAULT_MODE:
            return classify_mysql_cached(sql)
        return classify_mysql_in_mode(sql, self._mode)

    def _refuse_now(
        self, c: Classification, sql: str, reason: str, errno: int = ER_SPECIFIC_ACCESS_DENIED
    ) -> None:
        """Deny `c` whatever the user's level (KILL forms, the source's schemas, lexing settings):
        audited, counted and logged like any denial, then raised as the client's error."""
        verdict = Verdict(action=Action.DENY, kind=c.kind, reason=reason)
        audit_statement(
            self.f.audit,
            protocol=PROTOCOL,
            user=self.user,
            source=self.source,
            connection=f"{PROTOCOL}:{self.connection_id}",
            verdict=verdict,
            text=sql,
        )
        self._count(verdict)
        self.log.info("statement_denied", kind=c.kind.value, verdict="deny", reason=reason)
        raise Denied(
            f"permission denied: {reason} (user '{self.user}' on source '{self.source}')", mysql_errno=errno
        )

    def _check_scope(self, c: Classification, sql: str) -> None:
        """The source's schema allowlist, on every table and schema the statement names: a table
        without a schema is in the session's current one (none known: refused)."""
        allowed = self.allowed_schemas
        if allowed is None:
            return
        for schema in c.schemas:
            if schema == "*":
                self._refuse_now(
                    c, sql, f"the statement lists every schema; this source allows only {', '.join(allowed)}",
                    ER_DBACCESS_DENIED,
                )  # fmt: skip
            if schema not in allowed:
                self._refuse_now(
                    c, sql, f"schema '{schema}' is not allowed on this source", ER_DBACCESS_DENIED
                )
        for table in c.tables:
            schema = table.rpartition(".")[0] or self._schema
            if not schema:
                self._refuse_now(
                    c, sql, f"table '{table}' has no schema and none is selected", ER_DBACCESS_DENIED
                )
            if schema not in allowed:
                self._refuse_now(
                    c, sql, f"table '{table}' is in schema '{schema}', which is not allowed on this source",
                    ER_TABLEACCESS_DENIED,
                )  # fmt: skip
        if c.uses is not None and c.statements != 1:
            self._refuse_now(c, sql, "USE must be sent alone on a source with a schema allowlist")

    def _check_special(self, c: Classification, sql: str) -> None:
        """What no level may do: an unresolved KILL, a schema outside the allowlist, a lexing
        setting QueryBase cannot classify under."""
        if c.kill is not None:
            self._refuse_now(
                c, sql, f"{c.kill.form} may only be sent alone, as a statement of its own (never prepared)"
            )
        self._check_scope(c, sql)
        for name, value in c.sets:
            problem = self._setting_problem(name, value)
            if problem is not None:
                self._refuse_now(c, sql, problem, ER_NOT_SUPPORTED)

    def _on_query(self, command: my.Command, body: bytes, payload: bytes) -> None:
        t0 = time.perf_counter()
        sql, exact = self._decode(body)
        c = self._classify(sql)
        if c.kill is not None and c.statements == 1 and c.prepares is None:
            self._kill_statement(c, sql)
            return
        self._check_special(c, sql)
        verdict = self._decide(c, sql)
        self._count(verdict)
        if verdict.action is Action.FORWARD:
            if c.prepares is not None:
                self._sql_prepared[c.prepares] = c.kind
            relex = bool(c.sets) or c.executes is not None
            effects = _Effects(c.uses, relex) if relex or c.uses is not None else None
            self._forward_statement(command, payload, t0, verdict.kind, effects)
            return
        self._refuse(verdict, sql, c, None, t0, None if exact else body)

    def _on_prepare(self, command: my.Command, body: bytes, payload: bytes) -> None:
        t0 = time.perf_counter()
        sql, exact = self._decode(body)
        c = self._classify(sql)
        self._check_special(c, sql)
        if c.uses is not None:
            self._refuse_now(c, sql, "USE cannot be prepared")
        verdict = self._decide(c, sql, prepare=True)
        if verdict.action is Action.FORWARD:
            self._pending_prepare = _Prepared(sql, c, raw=None if exact else body)
            self._forward(command, payload)
        elif verdict.action is Action.DENY:
            self._count(verdict)  # refused at once: the client never gets to execute it
            self._refuse(verdict, sql, c, None, t0)
        else:
            self._prepare_virtual(sql, c, None if exact else body)

    def _prepare_virtual(self, sql: str, c: Classification, raw: bytes | None) -> None:
        """A write to be held at COM_STMT_EXECUTE: the read-only upstream would refuse even to
        prepare it (MariaDB does), so QueryBase answers the PREPARE itself with its own id."""
        params = count_placeholders(sql)
        if params < 0:
            raise MySQLError(1064, "42000", "QueryBase could not read the statement's parameters")
        statement_id, self._next_virtual = self._next_virtual, self._next_virtual + 1
        self._statements[statement_id] = _Prepared(sql, c, params, virtual=True, raw=raw)
        self._last_prepared = statement_id
        deprecate_eof = bool(self.capabilities & my.Capability.CLIENT_DEPRECATE_EOF)
        payloads = [my.make_stmt_prepare_ok(statement_id, 0, params)]
        payloads += [my.make_column_definition("?") for _ in range(params)]
        if params and not deprecate_eof:
            payloads.append(my.make_eof(status=self._status()))
        assert self.transport is not None
        self.transport.write(b"".join(my.make_packets(p, seq)[0] for seq, p in enumerate(payloads, start=1)))

    def _status(self) -> my.ServerStatus:
        return self.upstream.status if self.upstream is not None else my.ServerStatus.SERVER_STATUS_AUTOCOMMIT

    def _on_execute(self, command: my.Command, body: bytes, payload: bytes) -> None:
        t0 = time.perf_counter()
        statement_id = int.from_bytes(body[:4], "little") if len(body) >= 4 else -1
        if statement_id == my.MARIADB_LAST_PREPARED_STATEMENT:
            statement_id = self._last_prepared
        prepared = self._statements.get(statement_id)
        if prepared is None:
            # Never prepared here (or dropped by a reset / change of user): nothing to run or hold.
            raise MySQLError(
                ER_UNKNOWN_STMT_HANDLER,
                "HY000",
                f"Unknown prepared statement handler ({statement_id}) given to mysqld_stmt_execute",
            )
        verdict = self._decide(prepared.classification, prepared.sql)
        self._count(verdict)
        if verdict.action is Action.FORWARD:
            if prepared.virtual:
                # Prepared while the user could not write, executed now that they can: not upstream.
                raise MySQLError(
                    ER_UNKNOWN_STMT_HANDLER,
                    "HY000",
                    "the statement was prepared while writes were held: prepare it again",
                )
            effects = _Effects(relex=True) if prepared.classification.sets else None
            self._forward_statement(command, payload, t0, verdict.kind, effects)
            return
        parameters = self._held_parameters(prepared, body) if verdict.action is Action.HOLD else None
        self._refuse(verdict, prepared.sql, prepared.classification, parameters, t0, prepared.raw)

    def _held_parameters(self, prepared: _Prepared, body: bytes) -> list[dict[str, Any]]:
        """The bound values of a held COM_STMT_EXECUTE, as binary-protocol wire bytes with their
        types; a parameter sent by COM_STMT_SEND_LONG_DATA gets its whole value as a
        length-encoded string. An execute consumes the long data, as in MySQL."""
        long_data, error = prepared.long_data, prepared.long_data_error
        prepared.long_data, prepared.long_data_error = {}, None
        if error is not None:
            raise MySQLError(
                ER_WRONG_ARGUMENTS, "HY000", f"Incorrect arguments to mysqld_stmt_execute: {error}"
            )
        try:
            execute = my.parse_stmt_execute(body, prepared.params, prepared.types, frozenset(long_data))
        except my.ProtocolViolation as exc:
            raise MySQLError(
                ER_WRONG_ARGUMENTS, "HY000", f"Incorrect arguments to mysqld_stmt_execute: {exc.message}"
            ) from None
        prepared.types = execute.types or prepared.types
        parameters: list[dict[str, Any]] = []
        for index, ((kind, unsigned), raw) in enumerate(
            zip(execute.param_types(), execute.values, strict=True)
        ):
            if index in long_data:
                raw = my.make_lenenc_str(bytes(long_data[index]))
                if not my.is_length_encoded_type(kind):
                    kind = my.ColumnType.MYSQL_TYPE_BLOB  # what the long data was sent for
            parameters.append(
                {
                    "type": int(kind),
                    "unsigned": unsigned,
                    "value_b64": None if raw is None else base64.b64encode(raw).decode(),
                }
            )
        return parameters

    def _on_close_statement(self, command: my.Command, body: bytes, payload: bytes) -> None:
        prepared = self._statements.pop(my.parse_statement_id(body), None)
        if prepared is None or not prepared.virtual:
            self._forward(command, payload)

    def _on_statement_command(self, command: my.Command, body: bytes, payload: bytes) -> None:
        # COM_STMT_RESET / SEND_LONG_DATA / FETCH on a virtual statement stay with QueryBase.
        prepared = self._statements.get(my.parse_statement_id(body[:4], command.name))
        if prepared is None or not prepared.virtual:
            self._forward(command, payload)
        elif command is my.Command.COM_STMT_SEND_LONG_DATA:
            self._long_data(prepared, body)  # no reply, ever: problems show at the execute
        elif command is my.Command.COM_STMT_RESET:
            prepared.long_data, prepared.long_data_error = {}, None
            self._reply_ok()
        elif command is my.Command.COM_STMT_FETCH:
            raise MySQLError(1421, "HY000", "the statement was held for approval: it has no cursor")

    @staticmethod
    def _long_data(prepared: _Prepared, body: bytes) -> None:
        _, index, chunk = my.parse_stmt_send_long_data(body)
        if prepared.long_data_error is not None:
            return
        if index >= prepared.params:
            prepared.long_data_error = f"long data for parameter {index}; the statement has {prepared.params}"
            return
        total = sum(len(data) for data in prepared.long_data.values()) + len(chunk)
        if total > MAX_LONG_DATA:
            prepared.long_data, prepared.long_data_error = {}, f"long data over {MAX_LONG_DATA} bytes"
            return
        prepared.long_data.setdefault(index, bytearray()).extend(chunk)

    def _on_init_db(self, command: my.Command, body: bytes, payload: bytes) -> None:
        schema = my.parse_init_db(body)
        if self.allowed_schemas is not None and schema not in self.allowed_schemas:
            raise MySQLError(
                ER_DBACCESS_DENIED, "42000", f"schema '{schema}' is not allowed on source '{self.source}'"
            )
        self._forward(command, payload, _Effects(schema=schema))

    def _on_schema_command(self, command: my.Command, body: bytes, payload: bytes) -> None:
        """COM_CREATE_DB / COM_DROP_DB: DDL by command byte. Forwarded for `write` (inside the
        allowlist); denied below, since a command byte cannot be held as a change request."""
        schema = my.parse_init_db(body)
        c = Classification(Kind.DDL, reason=f"{command.name} {schema}", schemas=(schema,))
        text = f"<{command.name} {schema}>"
        self._check_scope(c, text)
        self._on_decided(c, text, command, payload)

    def _on_decided(self, c: Classification, text: str, command: my.Command, payload: bytes) -> None:
        """A command byte with a fixed kind: forwarded when the verdict says so, else refused.
        Session commands without SQL (ping, multi-statement option, reset) are housekeeping:
        audited and counted only when refused."""
        quiet = c.kind is Kind.SESSION
        verdict = self._decide(c, text, quiet=quiet)
        if not quiet or verdict.action is not Action.FORWARD:
            self._count(verdict)
        if verdict.action is Action.FORWARD:
            self._forward(command, payload)
            return
        raise DeniedPrivileged(
            f"permission denied: {command.name} ({c.reason}) needs write "
            f"(user '{self.user}' has {self.level} on source '{self.source}')"
        )

    def _on_unsupported(self, command: my.Command, body: bytes, payload: bytes) -> None:
        raise MySQLError(ER_NOT_SUPPORTED, "42000", f"{command.name} is not supported through QueryBase")

    def _on_internal(self, command: my.Command, body: bytes, payload: bytes) -> None:
        # Server-internal commands: a server answers them as unknown commands, so does QueryBase.
        raise MySQLError(1047, "08S01", f"Unknown command {command.name}")

    def _on_quit(self, command: my.Command, body: bytes, payload: bytes) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def _on_change_user(self, command: my.Command, body: bytes, payload: bytes) -> None:
        request = my.parse_change_user(body, self.capabilities)
        self._busy = True
        self._spawn(self._change_user(request))

    async def _change_user(self, request: my.ChangeUser) -> None:
        """COM_CHANGE_USER: re-authenticate (answers are computed with the greeting's scramble),
        check the grant on the (possibly other) source, then start a fresh upstream session and
        forget the client's prepared statements, as MySQL does. On any refusal the session stays
        what it was (MariaDB keeps the old user after a failed change, too)."""
        self._reply_seq = 1
        try:
            try:
                async with asyncio.timeout(LOGIN_TIMEOUT):
                    seq = await self._check_password(
                        request.user, request.auth_plugin, request.auth_response, self._scramble, 0
                    )
                    creds, level = await self._grant(request.user, request.database or "")
                    await self._switch_upstream(*self._upstream_for(creds, level))
            except MySQLError as exc:
                _count_login_failure(exc)
                audit_login(
                    self.f.audit, protocol=PROTOCOL, user=request.user, client=self.peer, failure=exc.message
                )
                self._send_err(exc, self._reply_seq)
                return
            except (TimeoutError, ConnectionResetError):
                self._fatal(my.ProtocolViolation("COM_CHANGE_USER did not complete"), self._reply_seq)
                return
            except QueryBaseError as exc:  # no upstream for the new user (pool full, upstream down)
                _count_login_failure(exc)
                audit_login(
                    self.f.audit, protocol=PROTOCOL, user=request.user, client=self.peer, failure=exc.message
                )
                error = MySQLError(exc.mysql_errno, "HY000", exc.message)
                if self.upstream is None:
                    self._fatal(error, self._reply_seq)  # the old one is gone too: cannot go on
                else:
                    self._send_err(error, self._reply_seq)
                return
            if self._closed or self.upstream is None:
                return
            previous = (self.user, self.source)
            self._become(request.user, creds, level)
            self._session_started()
            audit_login(self.f.audit, protocol=PROTOCOL, user=self.user, client=self.peer, source=self.source)
            self.log.info(
                "user_changed", previous_user=previous[0], previous_source=previous[1], level=level.value
            )
            assert self.transport is not None
            self.transport.write(my.make_packets(my.make_ok(status=self.upstream.status), seq)[0])
            self._start_hidden(_Hidden.LEXING)
        finally:
            self._busy = False
            self._process()

    async def _switch_upstream(self, pool: Pool[UpstreamConnection], params: Params) -> None:
        """A fresh upstream session from `pool`: the current one reset in place when it comes from
        the same pool, else a new one (the old one goes back to its pool). Client-side statement
        state is dropped: the upstream forgot its statements, user variables and settings too."""
        old, old_pool = self.upstream, self.pool
        self.upstream = None  # while switching, a client hang-up must not release it twice
        new: UpstreamConnection | None = None
        try:
            if old is not None and old_pool is pool:
                if await old.reset():
                    new, old = old, None
                else:
                    await pool.release(old, reusable=False)
                    old = None
            if new is None:
                new = await pool.acquire(params)
        except BaseException:
            if old is not None and old_pool is not None:
                if old_pool is pool or self._closed:
                    self._spawn(old_pool.release(old))
                else:
                    self.upstream = old  # the new source is unreachable: keep the old session
            raise
        if old is not None and old_pool is not None:
            old.detach()
            self._spawn(old_pool.release(old))
        if self._closed:
            await pool.release(new)
            return
        self.upstream, self.pool = new, pool
        self._statements.clear()
        self._sql_prepared.clear()
        self._pending_prepare = None
        self._scanner = None
        self._hidden, self._hidden_queue, self._effects = None, [], None
        self._upstream_reader = my.PacketReader()
        new.attach(self)

    # ------------------------------------------------------------------------ KILL, refusals

    def _kill_statement(self, c: Classification, sql: str) -> None:
        """A KILL statement, whatever its spelling: translated, never relayed (the upstream login is
        shared by every user of the source)."""
        kill = c.kill
        assert kill is not None
        if kill.thread is None:
            self._refuse_now(
                c,
                sql,
                f"{kill.form} of anything but a connection id is not allowed through QueryBase; "
                "use KILL [QUERY] <connection id> of one of your own QueryBase sessions",
            )
            return
        self._decide(c, sql)  # audited like any session statement
        self._kill(kill.query_only, kill.thread)

    def _on_process_kill(self, command: my.Command, body: bytes, payload: bytes) -> None:
        target_id = my.parse_process_kill(body)
        self._decide(
            Classification(Kind.SESSION, reason="COM_PROCESS_KILL"), f"<COM_PROCESS_KILL {target_id}>"
        )
        self._kill(False, target_id)

    def _kill(self, query_only: bool, target_id: int) -> None:
        """KILL [QUERY] `target_id`: a QueryBase connection id (or the upstream thread id) of one of
        this user's own sessions; anything else is an unknown thread, as MySQL says."""
        target = self.f.sessions.get(target_id)
        if target is None or target.user != self.user:
            # Not a QueryBase connection id of this user: perhaps the upstream thread id that
            # CONNECTION_ID() and SHOW PROCESSLIST show, of this user's session on this source.
            target = next(
                (
                    s
                    for s in self.f.sessions.values()
                    if s.user == self.user
                    and s.source == self.source
                    and s.upstream is not None
                    and s.upstream.thread_id == target_id
                ),
                None,
            )
        if target is None or target.upstream is None:
            raise MySQLError(
                ER_NO_SUCH_THREAD,
                "HY000",
                f"Unknown thread id: {target_id} (KILL takes the connection id of one of your own sessions)",
            )
        if query_only and target.waiting is not None:
            target.waiting.set()  # it waits for a change request: withdraw that instead
            self._reply_ok()
            return
        if query_only:
            self._busy = True
            self._spawn(self._finish_kill(target))
        else:
            target.shutdown()
            self._reply_ok()

    async def _finish_kill(self, target: MySQLSession) -> None:
        try:
            if target.upstream is not None:
                await target.upstream.stop_running()
            self._reply_ok()
        finally:
            self._busy = False
        self._process()

    def _reply_ok(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(my.make_packets(my.make_ok(status=self._status()), 1)[0])

    def _refuse(
        self,
        verdict: Verdict,
        sql: str,
        c: Classification,
        parameters: list[dict[str, Any]] | None,
        t0: float,
        raw: bytes | None = None,
    ) -> None:
        if verdict.action is Action.DENY:
            seconds = time.perf_counter() - t0
            self._m.duration[Action.DENY].observe(seconds)
            self.log.info(
                "statement_denied",
                kind=verdict.kind.value,
                verdict="deny",
                duration_ms=_ms(seconds),
                reason=verdict.reason,
            )
            refused = DeniedPrivileged if verdict.kind is Kind.PRIVILEGED else Denied
            raise refused(
                f"permission denied: {verdict.reason} "
                f"(user '{self.user}' has {self.level} on source '{self.source}')"
            )
        self._busy = True
        self._pause("refuse")
        self._spawn(self._hold(sql, as_decided(c, verdict), parameters, t0, raw))

    async def _hold(
        self,
        sql: str,
        c: Classification,
        parameters: list[dict[str, Any]] | None,
        t0: float,
        raw: bytes | None,
    ) -> None:
        facts: dict[str, Any] = {
            "protocol": "mysql",
            "client_addr": self.peer,
            "connection_id": self.connection_id,
            "schema": self._schema,
            "tls": self.on_tls,
            "character_set_client": self._charset,
        }
        if raw is not None:
            # The text shows invalid bytes as U+FFFD; the executor runs these exact bytes.
            facts["statement_b64"] = base64.b64encode(raw).decode()
        held = HeldStatement(sql, c, parameters, facts)
        request_id: int | None = None
        try:
            try:
                if self.f.changes is not None:
                    request_id = await self.f.changes.created(user=self.user, source=self.source, held=held)
                else:
                    request_id = await create_request(
                        self.f.store, user=self.user, source=self.source, held=held
                    )
            except Exception as exc:
                self.log.exception("hold_failed")
                self._send_err(HoldFailed(str(exc)), 1)
            else:
                in_transaction = self._status() & my.ServerStatus.SERVER_STATUS_IN_TRANS
                if self.hold_wait > 0 and self.f.changes is not None and not in_transaction:
                    try:
                        await self._wait_for_decision(request_id)
                    except Exception as exc:  # the request stands; only the wait failed
                        self.log.exception("held_wait_failed", request=request_id)
                        reason = f"waiting failed: {type(exc).__name__}"
                        self._send_err(Held(request_id, self.source, reason), 1)
                else:
                    why = c.reason if c.kind is Kind.UNKNOWN else ""
                    self._send_err(Held(request_id, self.source, why=why), 1)
        finally:
            self._busy = False
            self._resume("refuse")
            seconds = time.perf_counter() - t0
            self._m.duration[Action.HOLD].observe(seconds)
            self.log.info(
                "statement_held",
                kind=c.kind.value,
                verdict="hold",
                duration_ms=_ms(seconds),
                request=request_id,
            )
        if self.f.draining:
            self.end_if_idle()
            return
        self._process()

    async def _wait_for_decision(self, request_id: int) -> None:
        """Waiting mode: the client's command waits for the request to be decided and executed.
        Success answers OK with the rows affected; anything else an ERR."""
        changes = self.f.changes
        assert changes is not None
        waited = await self._wait_for_request(changes, request_id, "cancelled by KILL QUERY while waiting")
        if waited.cancelled:
            self.log.info("held_wait_cancelled", request=request_id)
            cancelled = f"Query execution was interrupted; change request #{request_id} cancelled"
            self._send_err(WaitCancelled(cancelled), 1)
            return
        view = waited.view
        if view is None:
            self._send_err(Held(request_id, self.source, f"still pending after {self.hold_wait}s"), 1)
            return
        ex = view.execution
        if view.status == "succeeded" and self.transport is not None:
            total = (ex.rows_affected or {}).get("total") if ex is not None else None
            self.transport.write(
                my.make_packets(my.make_ok(affected_rows=total or 0, status=self._status()), 1)[0]
            )
        elif view.status == "failed" and ex is not None:
            message = f"change request #{request_id} was approved but failed: {ex.error_message}"
            self._send_err(ApprovedButFailed(message, sqlstate=ex.sqlstate, mysql_errno=ex.mysql_errno), 1)
        else:
            self._send_err(Held(request_id, self.source, f"it was {view.status}; it did not run"), 1)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _count_login_failure(exc: QueryBaseError) -> None:
    """Count a refused login or COM_CHANGE_USER by reason (password failures: the limiter does)."""
    if isinstance(exc, MySQLError):
        reason = _LOGIN_FAILURE_REASONS.get(exc.mysql_errno, "protocol")
    elif isinstance(exc, my.ProtocolViolation):
        reason = "protocol"
    else:
        reason = "upstream"  # no upstream connection: pool timeout or the upstream refused
    if reason is not None:
        metrics.login_failed(PROTOCOL, reason)


_LOGIN_FAILURE_REASONS: dict[int, str | None] = {
    ER_ACCESS_DENIED: None,  # wrong password, unknown user, rate limited: counted by the limiter
    ER_BAD_DB: "unknown_source",
    1046: "unknown_source",  # no database named and not exactly one reachable
    ER_DBACCESS_DENIED: "no_grant",
    ER_SECURE_TRANSPORT_REQUIRED: "tls_required",
}


_Handler = Callable[[MySQLSession, my.Command, bytes, bytes], None]


def _fixed(kind: Kind, reason: str) -> _Handler:
    def handle(session: MySQLSession, command: my.Command, body: bytes, payload: bytes) -> None:
        session._on_decided(Classification(kind, reason=reason), f"<{command.name}>", command, payload)

    return handle


# Every command byte, decided explicitly (bytes that are no Command are refused by parse_command).
_HANDLERS: dict[my.Command, _Handler] = {
    my.Command.COM_QUERY: MySQLSession._on_query,
    my.Command.COM_STMT_PREPARE: MySQLSession._on_prepare,
    my.Command.COM_STMT_EXECUTE: MySQLSession._on_execute,
    my.Command.COM_STMT_CLOSE: MySQLSession._on_close_statement,
    my.Command.COM_STMT_RESET: MySQLSession._on_statement_command,
    my.Command.COM_STMT_SEND_LONG_DATA: MySQLSession._on_statement_command,
    my.Command.COM_STMT_FETCH: MySQLSession._on_statement_command,
    my.Command.COM_INIT_DB: MySQLSession._on_init_db,
    my.Command.COM_QUIT: MySQLSession._on_quit,
    my.Command.COM_CHANGE_USER: MySQLSession._on_change_user,
    my.Command.COM_PROCESS_KILL: MySQLSession._on_process_kill,
    my.Command.COM_CREATE_DB: MySQLSession._on_schema_command,
    my.Command.COM_DROP_DB: MySQLSession._on_schema_command,
    # reads and session state
    my.Command.COM_PING: _fixed(Kind.SESSION, "ping"),
    my.Command.COM_STATISTICS: _fixed(Kind.READ, "server statistics"),
    my.Command.COM_FIELD_LIST: _fixed(Kind.READ, "columns of a table in the current schema"),
    my.Command.COM_PROCESS_INFO: _fixed(
        Kind.PRIVILEGED, "COM_PROCESS_INFO (SHOW PROCESSLIST) shows other sessions' statements"
    ),
    my.Command.COM_SET_OPTION: _fixed(Kind.SESSION, "multi-statements on/off"),
    my.Command.COM_RESET_CONNECTION: _fixed(Kind.SESSION, "reset the session"),
    # privileged: relayed for write only
    my.Command.COM_REFRESH: _fixed(Kind.PRIVILEGED, "FLUSH"),
    my.Command.COM_SHUTDOWN: _fixed(Kind.PRIVILEGED, "SHUTDOWN"),
    my.Command.COM_DEBUG: _fixed(Kind.PRIVILEGED, "debug output to the server log"),
    # replication streams and bulk execution: never through QueryBase
    my.Command.COM_BINLOG_DUMP: MySQLSession._on_unsupported,
    my.Command.COM_BINLOG_DUMP_GTID: MySQLSession._on_unsupported,
    my.Command.COM_REGISTER_SLAVE: MySQLSession._on_unsupported,
    my.Command.COM_TABLE_DUMP: MySQLSession._on_unsupported,
    my.Command.COM_CLONE: MySQLSession._on_unsupported,
    my.Command.COM_SUBSCRIBE_GROUP_REPLICATION_STREAM: MySQLSession._on_unsupported,
    my.Command.COM_STMT_BULK_EXECUTE: MySQLSession._on_unsupported,
    # server-internal
    my.Command.COM_SLEEP: MySQLSession._on_internal,
    my.Command.COM_CONNECT: MySQLSession._on_internal,
    my.Command.COM_TIME: MySQLSession._on_internal,
    my.Command.COM_DELAYED_INSERT: MySQLSession._on_internal,
    my.Command.COM_CONNECT_OUT: MySQLSession._on_internal,
    my.Command.COM_DAEMON: MySQLSession._on_internal,
}
assert set(_HANDLERS) == set(my.Command), set(my.Command) - set(_HANDLERS)

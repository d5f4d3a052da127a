"""What both protocols' relays share: upstream targets and pools, guarded connects, flow control.

Each protocol keeps its own codec, login and message handling (`proxy.pg`, `proxy.mysql`); this
module holds the parts that are the same for both, so they are written once.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from policies.types import Kind, Level, SourcePolicy
from proxy.errors import QueryBaseError
from proxy.observe.sessions import IDLE, WAITING, LiveSession
from proxy.store.catalog import SourceCredentials
from proxy.tlsfiles import describe_tls_failure, upstream_context
from proxy.upstream.pool import Pool, Pooled, UpstreamConnectError

if TYPE_CHECKING:
    from proxy.audit.log import AuditWriter
    from proxy.changes.service import ChangeService, Waited

CONNECT_TIMEOUT = 10.0
Params = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class UpstreamTarget:
    """Where and how to log in: one source's host and one of its logins."""

    source: str
    host: str
    port: int
    database: str
    user: str
    password: str | None
    tls: str  # disable | prefer | require | verify-ca | verify-full (proxy.tlsfiles.TLS_MODES)
    read_only: bool
    tls_ca: str | None = field(default=None, repr=False)  # PEM CA bundle (verify modes); None: the system's

    def ssl_context(self) -> ssl.SSLContext:
        """The client-side TLS context for this target's mode and CA bundle (cached)."""
        return upstream_context(self.tls, self.tls_ca)


def upstream_target(creds: SourceCredentials, role: str) -> UpstreamTarget:
    """The read role uses the read login, read-only; the write role the write login (the read
    login without the read-only flag when the source has no write login)."""
    view = creds.view
    writer = role == "write" and view.write_user is not None
    return UpstreamTarget(
        source=view.name,
        host=view.host,
        port=view.port,
        database=view.database,
        user=view.write_user if writer and view.write_user else view.read_user,
        password=creds.write_password if writer else creds.read_password,
        tls=view.tls,
        read_only=role == "read",
        tls_ca=creds.tls_ca_pem,
    )


C = TypeVar("C", bound=Pooled)


def source_pool(
    pools: dict[tuple[str, str, str], Pool[C]],
    creds: SourceCredentials,
    role: str,
    connect: Callable[[UpstreamTarget, Params], Awaitable[C]],
    mode: str = "session",
) -> Pool[C]:
    """The pool for (source, role) in pool mode `mode`, created on first use with the source's size
    and timeout. Transaction-pooled connections are never handed to session-pooled clients (they
    keep the last client's settings), so a source whose mode changed has one pool per mode until
    the older sessions end."""
    view = creds.view
    pool = pools.get((view.name, role, mode))
    if pool is None:
        target = upstream_target(creds, role)

        async def open_one(params: Params) -> C:
            return await connect(target, params)

        pool = Pool(f"{view.name}/{role}", open_one, size=view.pool_size, timeout=view.pool_timeout_seconds)
        pools[(view.name, role, mode)] = pool
    return pool


async def guarded_open(
    target: UpstreamTarget, open_: Callable[[], Awaitable[None]], close: Callable[[], None]
) -> None:
    """Run an upstream login with a timeout; every failure becomes UpstreamConnectError (08001 /
    2003), so an upstream refusing QueryBase never looks like the client's own login failing."""
    where = f"upstream {target.host}:{target.port} of source {target.source!r}"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await open_()
    except TimeoutError:
        close()
        raise UpstreamConnectError(f"{where} did not answer within {CONNECT_TIMEOUT:g}s") from None
    except ssl.SSLError as exc:  # before OSError, its base: say what TLS refused
        close()
        raise UpstreamConnectError(f"{where}: {describe_tls_failure(exc, target.tls)}") from None
    except OSError as exc:
        close()
        raise UpstreamConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    except QueryBaseError as exc:
        close()
        raise UpstreamConnectError(f"{where} refused QueryBase's login: {exc.message}") from None
    except BaseException:
        close()
        raise


class RelayUpstream(Pooled, Protocol):
    @property
    def transport(self) -> asyncio.Transport: ...

    async def stop_running(self) -> None: ...


class RelaySession(asyncio.BaseProtocol):
    """Flow control and task bookkeeping for a client session relaying to one upstream.

    Subclasses add `asyncio.Protocol` or `asyncio.BufferedProtocol` for how they receive bytes.
    """

    upstream: Any  # the protocol's upstream connection (a RelayUpstream)

    def __init__(self) -> None:
        self._paused: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # What every protocol's session knows about itself.
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.user = ""
        self.source = ""
        self.level: Level | None = None
        self.policy = SourcePolicy()
        self.on_tls = False
        self.hold_wait = 0  # the source's hold_wait_seconds (waiting mode)
        self.waiting: asyncio.Event | None = None  # set (cancel, KILL QUERY) to withdraw a waited request
        self.entry: LiveSession | None = None  # this session in the admin API's registry
        self._ready = False
        self._closed = False
        self._busy = False
        self._sql_prepared: dict[str, Kind] = {}  # SQL PREPARE names → the kind they were prepared as

    async def _wait_for_request(self, changes: ChangeService, request_id: int, reason: str) -> Waited:
        """Waiting mode: wait for the held request to end (or be withdrawn through `waiting`),
        showing the session as waiting in the registry meanwhile."""
        self.waiting = asyncio.Event()
        if self.entry is not None:
            self.entry.state = WAITING
        try:
            return await changes.wait_for_decision(
                self.user, request_id, self.hold_wait, self.waiting, reason
            )
        finally:
            self.waiting = None
            if self.entry is not None:
                self.entry.state = IDLE

    # The client's write buffer is full: stop reading the upstream, and the other way round.
    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.broken:
            self.upstream.transport.resume_reading()

    def upstream_pause_writing(self) -> None:
        self._pause("upstream")

    def upstream_resume_writing(self) -> None:
        self._resume("upstream")

    def _pause(self, reason: str) -> None:
        """Stop reading from the client until every reason given is resumed."""
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def _process(self) -> None:
        """Act on what the client sent (the protocol's own session implements it)."""
        raise NotImplementedError

    def _audit_backpressure(self, writer: AuditWriter | None) -> None:
        """The audit writer is congested: stop reading this client until it has room again."""
        if writer is not None and writer.congested and "audit" not in self._paused:
            self._pause("audit")
            self._spawn(self._await_audit_room(writer))

    async def _await_audit_room(self, writer: AuditWriter) -> None:
        await writer.room()
        self._resume("audit")
        self._process()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    @staticmethod
    async def _give_back(upstream: RelayUpstream, pool: Pool[Any], busy: bool) -> None:
        """Return the upstream to its pool; if the client left mid-statement, stop that statement
        upstream and close the connection instead of reusing it."""
        if busy and not upstream.broken:
            await upstream.stop_running()
        await pool.release(upstream, reusable=not busy)


M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)


class Framer(Protocol[M_co]):
    """A sans-IO reader that frames a byte stream into messages (PostgreSQL or MySQL)."""

    def feed(self, data: bytes) -> None: ...

    def next(self) -> M_co | None: ...

    @property
    def buffered(self) -> int: ...


class UpstreamSink(Protocol):
    """The client session an attached upstream connection relays to."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_pause_writing(self) -> None: ...

    def upstream_resume_writing(self) -> None: ...


class UpstreamLost(QueryBaseError):
    sqlstate = "08006"  # connection_failure
    mysql_errno = 2013  # CR_SERVER_LOST
    code = "upstream"


class UpstreamProtocol(asyncio.Protocol, Generic[M]):
    """The asyncio side of an upstream connection, in control mode (whole messages for login and
    reset, read with `read()`) or relay mode (every chunk handed to the attached sink)."""

    def __init__(self, new_reader: Callable[[], Framer[M]]) -> None:
        self.new_reader = new_reader
        self.reader = new_reader()
        self.transport: asyncio.Transport | None = None
        self.sink: UpstreamSink | None = None
        self.lost = False
        self.lost_exc: Exception | None = None
        self.raw_waiter: asyncio.Future[bytes] | None = None  # a raw answer (PostgreSQL's 'S'/'N')
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.upstream_data(data)
        elif self.raw_waiter is not None and not self.raw_waiter.done():
            self.raw_waiter.set_result(data)
        else:
            self.reader.feed(data)
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.lost_exc = True, exc
        if self.raw_waiter is not None and not self.raw_waiter.done():
            self.raw_waiter.set_exception(UpstreamLost("upstream closed the connection"))
        self._wake()
        if self.sink is not None:
            self.sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> M:
        """The next whole message in control mode."""
        while True:
            found = self.reader.next()
            if found is not None:
                return found
            if self.lost:
                raise UpstreamLost(f"upstream closed the connection: {self.lost_exc or 'EOF'}")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


UB = TypeVar("UB", bound="UpstreamBase[Any]")


class UpstreamBase(Generic[M]):
    """What both protocols' upstream connections share: the guarded connect, the transport,
    relay attach/detach. Subclasses implement `_open` (the login) and `close`."""

    @classmethod
    async def connect(cls: type[UB], target: UpstreamTarget, params: Params) -> UB:
        conn = cls(target, params)  # type: ignore[call-arg]  # subclasses take (target, params)
        await guarded_open(target, conn._open, conn.close)
        return conn

    async def _open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __init__(self, target: UpstreamTarget, params: Params, new_reader: Callable[[], Framer[M]]) -> None:
        self.target = target
        self.params = params
        self._protocol: UpstreamProtocol[M] = UpstreamProtocol(new_reader)
        self._transport: asyncio.Transport | None = None

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    @property
    def broken(self) -> bool:
        """Gone, closing, or it sent something while idle (nothing may arrive unasked for)."""
        protocol = self._protocol
        return (
            protocol.lost
            or self._transport is None
            or self._transport.is_closing()
            or (protocol.sink is None and protocol.reader.buffered > 0)
        )

    async def read(self) -> M:
        """Control mode: the next whole message from the upstream (UpstreamLost when it is gone)."""
        return await self._protocol.read()

    def attach(self, sink: UpstreamSink) -> None:
        """Relay mode: every byte from now on goes to `sink`."""
        if self._protocol.reader.buffered:
            raise UpstreamLost("upstream sent unsolicited data while idle")
        self._protocol.sink = sink
        if self._protocol.lost:
            sink.upstream_lost(self._protocol.lost_exc)

    def detach(self) -> None:
        """Back to control mode (for the reset), with a fresh reader."""
        self._protocol.sink = None
        self._protocol.reader = self._protocol.new_reader()

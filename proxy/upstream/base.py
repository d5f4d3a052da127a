"""What both protocols' upstream connections share: targets, pools, guarded connects, the
connection base with its control and relay modes.

Each protocol keeps its own login (`proxy.upstream.pg`, `proxy.upstream.mysql`); the client
sessions' shared base is `proxy.wire.relay`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from proxy.errors import QueryBaseError, UpstreamConnectError
from proxy.store.catalog import SourceCredentials
from proxy.tlsfiles import describe_tls_failure, upstream_context
from proxy.upstream.pool import Pool, Pooled

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

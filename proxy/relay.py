"""What both protocols' relays share: upstream targets and pools, guarded connects, flow control.

Each protocol keeps its own codec, login and message handling (`proxy.pg`, `proxy.mysql`); this
module holds the parts that are the same for both, so they are written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from proxy.errors import QueryBaseError
from proxy.pool import Pool, Pooled, UpstreamConnectError
from proxy.store.catalog import SourceCredentials

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
    tls: str  # disable | prefer | require
    read_only: bool


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
    )


C = TypeVar("C", bound=Pooled)


def source_pool(
    pools: dict[tuple[str, str], Pool[C]],
    creds: SourceCredentials,
    role: str,
    connect: Callable[[UpstreamTarget, Params], Awaitable[C]],
) -> Pool[C]:
    """The pool for (source, role), created on first use with the source's size and timeout."""
    view = creds.view
    pool = pools.get((view.name, role))
    if pool is None:
        target = upstream_target(creds, role)

        async def open_one(params: Params) -> C:
            return await connect(target, params)

        pool = Pool(f"{view.name}/{role}", open_one, size=view.pool_size, timeout=view.pool_timeout_seconds)
        pools[(view.name, role)] = pool
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

    transport: asyncio.Transport | None
    upstream: Any  # the protocol's upstream connection (a RelayUpstream)
    _closed: bool

    def __init__(self) -> None:
        self._paused: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

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

"""Pools of upstream connections per (source, role, pool mode), for both protocols.

A client holds one upstream connection for its whole session (`acquire`) and gives it back on
disconnect (`release`), which resets it (DISCARD ALL / COM_RESET_CONNECTION) before anyone else
gets it, and closes it instead if the reset fails or the connection is broken. A connection is
only handed to a client whose startup parameters equal the ones it was opened with, so every
parameter a client sends is applied by the upstream itself at connect time; when the pool is full,
an idle connection with other parameters is closed to make room. A client that cannot get a
connection within the pool's timeout gets `PoolTimeout`.

Every pool reports itself in `proxy.observe.metrics` under the (source, role) its name `SOURCE/ROLE`
gives: size, idle, in use, opening, waiting clients (gauges moved by this pool's own deltas, so
they sum correctly over pools and processes), checkout wait, checkout timeouts, connect errors.
These move per checkout and release, never per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import structlog

from proxy.errors import PoolTimeout, UpstreamConnectError
from proxy.observe import metrics

log = structlog.get_logger("querybase.pool")


class Pooled(Protocol):
    """What the pool needs from an upstream connection."""

    params: tuple[tuple[str, str], ...]

    @property
    def broken(self) -> bool: ...

    async def reset(self) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)
Key = tuple[tuple[str, str], ...]


class Pool(Generic[C]):
    """A bounded set of upstream connections for one (source, role)."""

    def __init__(
        self,
        name: str,
        connect: Callable[[Key], Awaitable[C]],
        *,
        size: int,
        timeout: float,
    ) -> None:
        self.name = name
        self._connect = connect
        self.size = size
        self.timeout = timeout
        self._idle: deque[C] = deque()
        self._busy: set[C] = set()
        self._opening = 0
        self._changed = asyncio.Condition()
        self._closed = False
        source, slash, role = name.rpartition("/")
        labels = (source, role) if slash else (name, "")
        self._m_idle = metrics.POOL_IDLE.labels(*labels)
        self._m_in_use = metrics.POOL_IN_USE.labels(*labels)
        self._m_opening = metrics.POOL_OPENING.labels(*labels)
        self._m_waiting = metrics.POOL_WAITING.labels(*labels)
        self._m_size = metrics.POOL_SIZE.labels(*labels)
        self._m_wait = metrics.POOL_CHECKOUT_WAIT.labels(*labels)
        self._m_timeouts = metrics.POOL_CHECKOUT_TIMEOUTS.labels(*labels)
        self._m_connect_errors = metrics.POOL_CONNECT_ERRORS.labels(*labels)
        self._shown = (0, 0, 0)  # (idle, in use, opening) as last added to the gauges
        self._m_size.inc(size)

    @property
    def total(self) -> int:
        return len(self._idle) + len(self._busy) + self._opening

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def in_use(self) -> int:
        return len(self._busy)

    def _report(self) -> None:
        """Move the gauges by what changed in this pool since the last report."""
        now = (len(self._idle), len(self._busy), self._opening)
        shown, self._shown = self._shown, now
        if now[0] != shown[0]:
            self._m_idle.inc(now[0] - shown[0])
        if now[1] != shown[1]:
            self._m_in_use.inc(now[1] - shown[1])
        if now[2] != shown[2]:
            self._m_opening.inc(now[2] - shown[2])

    async def acquire(self, params: Key, prefer: Callable[[C], bool] | None = None) -> C:
        """A connection opened with exactly `params` (an idle one `prefer` likes first); waits up
        to `timeout` for capacity."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._acquire(params, prefer)
            self._m_wait.observe(time.perf_counter() - started)
            return conn
        except TimeoutError:
            self._m_timeouts.inc()
            raise PoolTimeout(
                f"no upstream connection for {self.name} became free within {self.timeout:g}s "
                f"(pool size {self.size})"
            ) from None

    def _take_idle(self, params: Key, prefer: Callable[[C], bool] | None) -> C | None:
        found: C | None = None
        for conn in self._idle:
            if conn.params == params and not conn.broken:
                if prefer is None or prefer(conn):
                    found = conn
                    break
                if found is None:
                    found = conn
        if found is not None:
            self._idle.remove(found)
            self._busy.add(found)
            self._report()
        return found

    async def _acquire(self, params: Key, prefer: Callable[[C], bool] | None) -> C:
        self._m_waiting.inc()
        try:
            async with self._changed:
                while True:
                    if self._closed:
                        raise UpstreamConnectError(f"pool {self.name} is closed")
                    idle = self._take_idle(params, prefer)
                    if idle is not None:
                        return idle
                    self._drop_broken_idle()
                    if self.total >= self.size and self._idle:
                        self._idle.popleft().close()  # other parameters: make room
                    if self.total < self.size:
                        self._opening += 1
                        self._report()
                        break
                    self._report()
                    await self._changed.wait()
        finally:
            self._m_waiting.dec()
        try:
            conn = await self._connect(params)
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._m_connect_errors.inc()
            async with self._changed:
                self._opening -= 1
                self._report()
                self._changed.notify_all()
            raise
        async with self._changed:
            self._opening -= 1
            self._busy.add(conn)
            self._report()
        return conn

    def _drop_broken_idle(self) -> None:
        for conn in [c for c in self._idle if c.broken]:
            self._idle.remove(conn)
            conn.close()

    async def release(self, conn: C, *, reusable: bool = True, reset: bool = True) -> None:
        """Give a connection back: reset and keep it, or close it. `reset=False`: it is clean
        already (transaction pooling returns connections between transactions as they are)."""
        keep = reusable and not conn.broken and not self._closed
        if keep and reset:
            try:
                keep = await conn.reset()
            except Exception as exc:  # a failed reset is a broken connection, whatever the cause
                log.warning("upstream_reset_failed", pool=self.name, error=str(exc))
                keep = False
        async with self._changed:
            self._busy.discard(conn)
            if keep and not conn.broken:
                self._idle.append(conn)
            else:
                conn.close()
            self._report()
            # notify_all: a waiter woken by notify() and cancelled before it runs would swallow the
            # wake-up (asyncio.Condition on 3.11), leaving the others asleep next to an idle connection.
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            if not self._closed:
                self._m_size.dec(self.size)
            self._closed = True
            while self._idle:
                self._idle.popleft().close()
            for conn in list(self._busy):
                with contextlib.suppress(Exception):
                    conn.close()
            self._report()
            self._changed.notify_all()

"""Pool logic (proxy.upstream.pool.Pool) with fake connections: reuse, limits, resets, waiting, close."""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy.errors import PoolTimeout, UpstreamConnectError
from proxy.upstream.pool import Key, Pool

P: Key = (("application_name", "psql"), ("database", "analytics"), ("user", "alice"))
Q: Key = (("application_name", "dbeaver"), ("database", "analytics"), ("user", "alice"))


class FakeConn:
    """Implements the Pooled protocol and records what the pool did to it."""

    def __init__(self, params: Key, number: int) -> None:
        self.params = params
        self.number = number
        self.closed = 0
        self.resets = 0
        self.dead = False
        self.reset_result: bool = True
        self.reset_error: Exception | None = None
        self.break_during_reset = False

        self.close_breaks = True

    @property
    def broken(self) -> bool:
        return self.dead or (self.closed > 0 and self.close_breaks)

    async def reset(self) -> bool:
        self.resets += 1
        await asyncio.sleep(0)
        if self.break_during_reset:
            self.dead = True
        if self.reset_error is not None:
            raise self.reset_error
        return self.reset_result

    def close(self) -> None:
        self.closed += 1

    def __repr__(self) -> str:
        return f"FakeConn#{self.number}{dict(self.params).get('application_name')}"


class Connector:
    """The pool's `connect` callable: opens FakeConns, can fail, and tracks how many are open."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.opened: list[FakeConn] = []
        self.fail_next = 0
        self.max_open = 0

    @property
    def open_now(self) -> int:
        return sum(1 for c in self.opened if not c.closed)

    async def __call__(self, params: Key) -> FakeConn:
        await asyncio.sleep(self.delay)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("connection refused")
        conn = FakeConn(params, len(self.opened))
        self.opened.append(conn)
        self.max_open = max(self.max_open, self.open_now)
        return conn


def make_pool(connector: Connector, size: int = 2, timeout: float = 1.0) -> Pool[FakeConn]:
    return Pool("pg:analytics/alice", connector, size=size, timeout=timeout)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_release_then_acquire_reuses_the_connection() -> None:
    connector = Connector()
    pool = make_pool(connector)
    first = await pool.acquire(P)
    assert (pool.in_use, pool.idle, pool.total) == (1, 0, 1)
    await pool.release(first)
    assert first.resets == 1
    assert not first.closed
    assert (pool.in_use, pool.idle, pool.total) == (0, 1, 1)
    again = await pool.acquire(P)
    assert again is first
    assert len(connector.opened) == 1


async def test_equal_params_is_what_counts_not_identity() -> None:
    connector = Connector()
    pool = make_pool(connector)
    await pool.release(await pool.acquire(P))
    assert await pool.acquire(tuple(list(P))) is connector.opened[0]


async def test_different_params_open_a_new_connection() -> None:
    connector = Connector()
    pool = make_pool(connector, size=2)
    first = await pool.acquire(P)
    await pool.release(first)
    other = await pool.acquire(Q)
    assert other is not first
    assert other.params == Q
    assert not first.closed  # room to spare: the idle one stays
    assert (pool.idle, pool.in_use, pool.total) == (1, 1, 2)


async def test_full_pool_waits_and_proceeds_on_release() -> None:
    connector = Connector()
    pool = make_pool(connector, size=1)
    held = await pool.acquire(P)
    waiter = asyncio.create_task(pool.acquire(P))
    await settle()
    assert not waiter.done()
    await pool.release(held)
    assert await asyncio.wait_for(waiter, 1) is held
    assert len(connector.opened) == 1


async def test_waiter_with_other_params_gets_room_when_one_is_released() -> None:
    connector = Connector()
    pool = make_pool(connector, size=1)
    held = await pool.acquire(P)
    waiter = asyncio.create_task(pool.acquire(Q))
    await settle()
    assert not waiter.done()
    await pool.release(held)
    got = await asyncio.wait_for(waiter, 1)
    assert got.params == Q
    assert held.closed == 1
    assert pool.total == 1


async def test_pool_timeout_names_the_pool_and_timeout() -> None:
    connector = Connector()
    pool = make_pool(connector, size=1, timeout=0.05)
    await pool.acquire(P)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire(P)
    assert loop.time() - started >= 0.04
    assert "pg:analytics/alice" in info.value.message
    assert "0.05s" in info.value.message
    assert "pool size 1" in info.value.message
    assert info.value.sqlstate == "53300"
    assert pool.total == 1  # the timed-out waiter left nothing behind


async def test_slow_connect_counts_against_the_timeout() -> None:
    connector = Connector(delay=1.0)
    pool = make_pool(connector, size=1, timeout=0.05)
    with pytest.raises(PoolTimeout):
        await pool.acquire(P)
    assert pool.total == 0  # the abandoned connect gave its slot back
    connector.delay = 0
    assert (await pool.acquire(P)).params == P


@pytest.mark.parametrize("failure", ["false", "raises"])
async def test_failed_reset_closes_and_frees_capacity(failure: str) -> None:
    connector = Connector()
    pool = make_pool(connector, size=1)
    conn = await pool.acquire(P)
    if failure == "false":
        conn.reset_result = False
    else:
        conn.reset_error = RuntimeError("DISCARD ALL failed")
    waiter = asyncio.create_task(pool.acquire(P))
    await settle()
    await pool.release(conn)
    assert conn.closed == 1
    fresh = await asyncio.wait_for(waiter, 1)
    assert fresh is not conn
    assert (pool.idle, pool.in_use, pool.total) == (0, 1, 1)


async def test_not_reusable_release_closes_without_reset() -> None:
    connector = Connector()
    pool = make_pool(connector)
    conn = await pool.acquire(P)
    await pool.release(conn, reusable=False)
    assert conn.closed == 1
    assert conn.resets == 0
    assert pool.total == 0


async def test_broken_busy_connection_is_closed_on_release() -> None:
    connector = Connector()
    pool = make_pool(connector)
    conn = await pool.acquire(P)
    conn.dead = True
    await pool.release(conn)
    assert conn.closed == 1
    assert conn.resets == 0
    assert pool.total == 0


async def test_broken_idle_connection_is_never_handed_out() -> None:
    connector = Connector()
    pool = make_pool(connector, size=1)
    conn = await pool.acquire(P)
    await pool.release(conn)
    conn.dead = True  # the server went away while it sat idle
    fresh = await pool.acquire(P)
    assert fresh is not conn
    assert conn.closed == 1
    assert (pool.idle, pool.in_use, pool.total) == (0, 1, 1)


async def test_connection_broken_during_reset_is_not_kept() -> None:
    connector = Connector()
    pool = make_pool(connector, size=1)
    conn = await pool.acquire(P)
    conn.break_during_reset = True
    await pool.release(conn)
    assert pool.total == 0
    assert (await pool.acquire(P)) is not conn


async def test_full_pool_closes_an_idle_connection_with_other_params() -> None:
    connector = Connector()
    pool = make_pool(connector, size=2)
    a, b = await pool.acquire(P), await pool.acquire(P)
    await pool.release(a)
    other = await pool.acquire(Q)
    assert a.closed == 1
    assert not b.closed
    assert other.params == Q
    assert pool.total == 2
    assert connector.max_open == 2


async def test_connect_failure_frees_the_slot() -> None:
    connector = Connector()
    connector.fail_next = 1
    pool = make_pool(connector, size=1)
    with pytest.raises(OSError, match="connection refused"):
        await pool.acquire(P)
    assert pool.total == 0
    assert (await pool.acquire(P)).params == P


async def test_connect_failure_wakes_a_waiter() -> None:
    connector = Connector(delay=0.01)
    connector.fail_next = 1
    pool = make_pool(connector, size=1)
    first = asyncio.create_task(pool.acquire(P))
    await settle()
    second = asyncio.create_task(pool.acquire(P))
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 1)
    assert isinstance(results[0], OSError)
    assert isinstance(results[1], FakeConn)
    assert pool.total == 1


async def test_close_closes_idle_and_busy_and_refuses_acquires() -> None:
    connector = Connector()
    pool = make_pool(connector, size=3)
    idle, busy = await pool.acquire(P), await pool.acquire(Q)
    await pool.release(idle)
    await pool.close()
    assert idle.closed == 1
    assert busy.closed == 1
    assert pool.idle == 0
    with pytest.raises(UpstreamConnectError, match=r"pool pg:analytics/alice is closed"):
        await pool.acquire(P)
    await pool.release(busy)  # a session ending after close() puts nothing back
    assert pool.idle == 0
    assert busy.resets == 0
    assert len(connector.opened) == 2


async def test_release_after_close_never_keeps_the_connection() -> None:
    connector = Connector()
    pool = make_pool(connector)
    conn = await pool.acquire(P)
    conn.close_breaks = False  # however the connection reports itself, the pool is gone
    await pool.close()
    await pool.release(conn)
    assert pool.idle == 0
    assert conn.resets == 0
    assert conn.closed >= 1


async def test_close_fails_waiting_acquirers() -> None:
    connector = Connector()
    pool = make_pool(connector, size=1)
    await pool.acquire(P)
    waiter = asyncio.create_task(pool.acquire(P))
    await settle()
    await pool.close()
    with pytest.raises(UpstreamConnectError, match="closed"):
        await asyncio.wait_for(waiter, 1)


@pytest.mark.parametrize("mixed", [False, True], ids=["same-params", "mixed-params"])
async def test_many_concurrent_acquirers_share_a_small_pool(mixed: bool) -> None:
    connector = Connector(delay=0.001)
    pool = make_pool(connector, size=5, timeout=5)
    rng = random.Random(7)
    peak = 0

    async def session(i: int) -> int:
        nonlocal peak
        params = Q if mixed and i % 3 == 0 else P
        conn = await pool.acquire(params)
        assert conn.params == params
        assert not conn.broken
        peak = max(peak, pool.total, connector.open_now)
        await asyncio.sleep(rng.random() / 200)
        await pool.release(conn)
        return i

    done = await asyncio.wait_for(asyncio.gather(*(session(i) for i in range(50))), 10)
    assert sorted(done) == list(range(50))
    assert connector.max_open <= 5
    assert peak <= 5
    assert pool.in_use == 0
    assert pool.total == pool.idle <= 5
    assert connector.open_now == pool.idle


async def test_cancelled_waiter_does_not_swallow_the_wakeup() -> None:
    connector = Connector()
    pool = make_pool(connector, size=1, timeout=0.3)
    held = await pool.acquire(P)
    first = asyncio.create_task(pool.acquire(P))
    await settle()
    second = asyncio.create_task(pool.acquire(P))
    await settle()
    await pool.release(held)  # wakes `first` ...
    first.cancel()  # ... which goes away before it runs
    assert await second is held

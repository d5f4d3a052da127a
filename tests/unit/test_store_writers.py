"""SQLite writers of one process queue for the store instead of racing for its lock (issue 10: the
fuzzer's propose sessions made held writes fail with "database is locked")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from proxy.store.db import Store


async def test_a_writer_waits_for_a_long_write_instead_of_failing(tmp_path: Path) -> None:
    """A write transaction held longer than busy_timeout (5 s) does not make another writer of the
    same process fail: it waits for its turn."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    try:
        async with store.write_session() as session, session.begin():
            await session.execute(text("CREATE TABLE t (v int)"))
        started = asyncio.Event()

        async def long_writer() -> None:
            async with store.write_session() as session, session.begin():
                await session.execute(text("INSERT INTO t VALUES (1)"))
                started.set()
                await asyncio.sleep(6)

        async def second_writer() -> None:
            await started.wait()
            async with store.write_session() as session, session.begin():
                await session.execute(text("INSERT INTO t VALUES (2)"))

        await asyncio.gather(long_writer(), second_writer())
        async with store.session() as session:
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 2
    finally:
        await store.close()


async def test_many_concurrent_writers_all_succeed(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    try:
        async with store.write_session() as session, session.begin():
            await session.execute(text("CREATE TABLE t (v int)"))

        async def writer(n: int) -> None:
            for i in range(20):
                async with store.write_session() as session, session.begin():
                    await session.execute(text("INSERT INTO t VALUES (:v)"), {"v": n * 100 + i})

        await asyncio.gather(*(writer(n) for n in range(30)))
        async with store.session() as session:
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 600
    finally:
        await store.close()

"""Graceful shutdown: SIGTERM during a long-running query lets it finish, idle sessions are told.

A real `querybase serve` in front of the test PostgreSQL (and MariaDB): the running statement
completes and its client sees the result, an idle client gets the protocol's shutdown error
(PostgreSQL FATAL 57P01, MySQL ERR 1053), no new connection is accepted, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import threading
import time
from pathlib import Path

import asyncpg
import pymysql
import pytest

from tests.support import myfront, pgfront
from tests.support.localdb import MariaDBServer, PostgresCluster
from tests.support.querybase import init_home, start_serve

pytestmark = pytest.mark.integration


async def _pg_connect(gw: pgfront.Gateway, user: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=gw.host, port=gw.port, user=user, password=gw.passwords[user], database=pgfront.SOURCE, ssl=False
    )


async def _pg_sigterm_during_query(gw: pgfront.Gateway) -> None:
    busy = await _pg_connect(gw, "carol")
    idle = await _pg_connect(gw, "carol")
    try:
        running = asyncio.ensure_future(busy.fetchval("SELECT 42 FROM pg_sleep(2)"))
        await asyncio.sleep(0.5)
        gw.serve.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running, 10) == 42  # the running statement finished
        # The idle session was ended with the admin-shutdown error.
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await idle.fetchval("SELECT 1")
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await _pg_connect(gw, "carol")  # no longer accepting
    finally:
        await busy.close()
        await idle.close()


def test_sigterm_lets_a_running_postgresql_query_finish(pg_server: PostgresCluster, tmp_path: Path) -> None:
    with pgfront.running_gateway(pg_server, tmp_path / "qb", tls_mode="disable", users=["carol"]) as gw:
        asyncio.run(_pg_sigterm_during_query(gw))
        assert gw.serve.process.wait(20) == 0
        log = gw.serve.log
        assert '"stopped"' in log
        assert log.index('"stopping"') < log.index('"stopped"')
        # The audit queue was flushed before exit: the long statement's event is in the store.
        with contextlib.closing(sqlite3.connect(pgfront.store_path(gw.config))) as db:
            recorded = db.execute(
                "SELECT count(*) FROM audit_events WHERE kind = 'statement' AND payload LIKE '%pg_sleep(2)%'"
            ).fetchone()[0]
        assert recorded == 1


def test_sigterm_timeout_ends_statements_that_run_too_long(
    pg_server: PostgresCluster, tmp_path: Path
) -> None:
    home = tmp_path / "qb"
    config = init_home(home, tls_mode="disable", extra="[server]\nshutdown_timeout = 1\n")
    pgfront.provision(config, pg_server, users=["carol"])
    serve = start_serve(config)
    gw = pgfront.Gateway(config, serve, pg_server, port=pgfront.listen_port(config))

    async def run() -> None:
        conn = await _pg_connect(gw, "carol")
        try:
            running = asyncio.ensure_future(conn.fetchval("SELECT 1 FROM pg_sleep(30)"))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await asyncio.wait_for(running, 15)
            assert time.monotonic() - started < 10
        finally:
            await conn.close()

    try:
        asyncio.run(run())
        assert serve.process.wait(20) == 0
    finally:
        serve.kill()


def test_sigterm_with_mysql_sessions(mariadb_server: MariaDBServer, tmp_path: Path) -> None:
    with myfront.running_gateway(mariadb_server, tmp_path / "qb", tls_mode="disable", users=["carol"]) as gw:
        busy = pymysql.connect(**gw.connect_args("carol"))
        idle = pymysql.connect(**gw.connect_args("carol"))
        result: list[object] = []

        def query() -> None:
            with busy.cursor() as cur:
                cur.execute("SELECT SLEEP(2), 42")
                result.append(cur.fetchone())

        worker = threading.Thread(target=query)
        worker.start()
        time.sleep(0.5)
        gw.serve.process.send_signal(signal.SIGTERM)
        worker.join(15)
        assert result == [(0, 42)]
        with pytest.raises(pymysql.err.MySQLError) as caught:
            idle.cursor().execute("SELECT 1")
        assert caught.value.args[0] in (1053, 2006, 2013)
        assert gw.serve.process.wait(20) == 0
        busy.close()

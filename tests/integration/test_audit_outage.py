"""The audit store going away under a running AuditWriter on real PostgreSQL (the database stops
accepting connections and its sessions are terminated), and `serve` wiring the writer in, with
GET /api/v1/audit/verify checking the anchor."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import select

from proxy.audit import log as audit
from proxy.store.db import Store
from proxy.store.models import AuditEvent
from tests.support.localdb import PostgresCluster
from tests.support.querybase import ADMIN_PASSWORD, init_home, start_serve

pytestmark = pytest.mark.integration

API = "/api/v1"
WAIT = 20.0
_db_names = itertools.count()


@pytest.fixture
async def pg_store(pg_server: PostgresCluster) -> AsyncIterator[tuple[Store, str]]:
    name = f"audit_outage_{next(_db_names)}"
    pg_server.execute_sql(f"DROP DATABASE IF EXISTS {name}")
    pg_server.execute_sql(f"CREATE DATABASE {name}")
    store = Store(pg_server.dsn("qb_admin", name).replace("postgresql://", "postgresql+asyncpg://", 1))
    await store.migrate()
    try:
        yield store, name
    finally:
        await store.close()
        pg_server.execute_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


def take_database_away(server: PostgresCluster, name: str) -> None:
    server.execute_sql(
        f"ALTER DATABASE {name} ALLOW_CONNECTIONS false;\n"
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
    )


def give_database_back(server: PostgresCluster, name: str) -> None:
    server.execute_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def actors(store: Store) -> list[str | None]:
    async with store.session() as session:
        return list((await session.scalars(select(AuditEvent.actor).order_by(AuditEvent.id))).all())


async def test_postgresql_store_going_away_stops_writes_until_it_returns(
    pg_store: tuple[Store, str], pg_server: PostgresCluster, tmp_path: Path
) -> None:
    store, name = pg_store
    anchor = audit.Anchor(tmp_path / "audit.anchor")
    changes: list[tuple[bool, str | None]] = []
    writer = audit.AuditWriter(
        store, anchor=anchor, on_health_change=lambda ok, why: changes.append((ok, why)), retry_max=0.2
    )
    await writer.start()
    writer.record("pg.login", actor="first")
    assert await writer.flush(5)

    take_database_away(pg_server, name)
    try:
        writer.record("pg.verdict", actor="during", payload={"verdict": "hold"})
        await until(lambda: not writer.healthy, "the writer to notice")
        assert writer.reason is not None
        assert "refuses audit writes" in writer.reason
        assert name in writer.reason  # the store, named (without its password)
        assert "qb-admin-secret" not in writer.reason
        with pytest.raises(
            audit.AuditUnavailable, match="writes and approvals are refused until it recovers"
        ):
            writer.check(read=False)
        assert writer.admits(read=True) is False  # on_failure = "block"
        writer.record("pg.verdict", actor="during-2")
        await asyncio.sleep(0.5)  # several retries fail meanwhile
        assert writer.depth == 2
        assert not writer.healthy
    finally:
        give_database_back(pg_server, name)

    await until(lambda: writer.healthy, "the writer to recover")
    assert await writer.flush(WAIT)
    writer.check()
    assert await actors(store) == ["first", "during", "during-2"]
    async with store.session() as session:
        result = await audit.verify(session, anchor)
    assert result.ok, result.describe()
    assert result.anchored_id == 3
    assert changes[0][0] is False
    assert changes[-1] == (True, None)
    await writer.close(5)


async def test_close_while_the_store_is_away_reports_what_was_not_written(
    pg_store: tuple[Store, str], pg_server: PostgresCluster
) -> None:
    store, name = pg_store
    writer = audit.AuditWriter(store, retry_max=0.1)
    await writer.start()
    take_database_away(pg_server, name)
    try:
        with structlog.testing.capture_logs() as logs:
            writer.record("pg.login", actor="lost")
            await until(lambda: not writer.healthy, "the writer to notice")
            started = time.monotonic()
            await writer.close(0.3)
            assert time.monotonic() - started < 0.3 + audit.CLOSE_GRACE
    finally:
        give_database_back(pg_server, name)
    lost = [e for e in logs if e["event"] == "audit.events_not_written"]
    assert len(lost) == 1
    assert lost[0]["count"] == 1
    assert await actors(store) == []


async def test_a_retried_batch_that_had_committed_is_not_appended_twice_on_postgresql(
    pg_store: tuple[Store, str],
) -> None:
    store, _ = pg_store
    writer = audit.AuditWriter(store)
    batch = [audit.PendingEvent("pg.login", "alice", "shop", None, {"tls": True}, time.time())]
    async with store.write_session() as session, session.begin():
        committed = await audit.append_batch(session, batch)
    assert await writer._commit(batch, True) == committed  # timestamptz round-trips exactly
    assert await actors(store) == ["alice"]


# serve ---------------------------------------------------------------------------------------


def test_serve_anchors_and_the_api_verifies_against_the_anchor(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    anchor = config.parent / "querybase.db.audit-anchor"
    anchor.unlink()  # as after an upgrade: serve anchors the chain it finds
    serve = start_serve(config)
    try:
        # init's user.created (#1), then serve's config.changed (#2), anchored as it was appended
        assert audit.Anchor(anchor).read() == audit.AnchorRecord(2, _hash_of(config, 2))
        with httpx.Client(base_url=serve.admin_url, timeout=30) as client:
            login = client.post(f"{API}/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD})
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            for group in ("g1", "g2"):
                assert client.post(f"{API}/groups", json={"name": group}, headers=headers).status_code == 201
            report = client.get(f"{API}/audit/verify", headers=headers).json()
            assert report["ok"] is True, report
            assert report["events"] == report["head_id"] == report["anchored_id"] == 5  # + api.login
            assert report["anchor_file"] == str(anchor)
            assert report["note"] is None

            with sqlite3.connect(config.parent / "querybase.db") as db:  # SQL access to the store only
                db.execute("DELETE FROM audit_events WHERE id = 5")
            report = client.get(f"{API}/audit/verify", headers=headers).json()
            assert report["ok"] is False
            assert report["first_bad_id"] == 5
            assert report["description"].startswith("audit chain broken at event #5: event(s) #5 removed")
    finally:
        assert serve.stop() == 0, serve.log
    assert '"audit.anchor_created"' in serve.log
    assert "audit.events_not_written" not in serve.log


def _hash_of(config: Path, event_id: int) -> str:
    with sqlite3.connect(config.parent / "querybase.db") as db:
        row = db.execute("SELECT hash FROM audit_events WHERE id = ?", (event_id,)).fetchone()
    return str(row[0])

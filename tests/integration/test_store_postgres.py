"""The catalog store on real databases: migrations from empty, schema equals the models, shared PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from policies.types import Level
from proxy.audit import log as audit
from proxy.store.catalog import Catalog, SourceSpec
from proxy.store.crypto import SecretBox
from proxy.store.db import Store
from proxy.store.models import Base, Engine
from tests.support.localdb import PostgresCluster, free_port
from tests.support.querybase import ADMIN_PASSWORD, run_cli_in_process, start_serve, write_config

pytestmark = pytest.mark.integration

_db_names = itertools.count()


def pg_store_url(server: PostgresCluster, database: str) -> str:
    return server.dsn("qb_admin", database).replace("postgresql://", "postgresql+asyncpg://", 1)


def fresh_database(server: PostgresCluster) -> str:
    name = f"store_{next(_db_names)}"
    server.execute_sql(f"DROP DATABASE IF EXISTS {name}")
    server.execute_sql(f"CREATE DATABASE {name}")
    return name


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        server: PostgresCluster = request.getfixturevalue("pg_server")
        url = pg_store_url(server, fresh_database(server))
    store = Store(url)
    yield store
    await store.close()


def _schema_diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


async def test_migrations_from_empty_match_the_models(empty_store: Store) -> None:
    assert await empty_store.current_revision() is None
    await empty_store.migrate()
    assert await empty_store.current_revision() == Store.head_revision()
    async with empty_store.engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []
        tables = await conn.run_sync(_tables)
    assert {
        "users",
        "groups",
        "memberships",
        "sources",
        "grants",
        "change_requests",
        "reviews",
        "executions",
        "audit_events",
        "alembic_version",
    } <= tables
    await empty_store.migrate()  # idempotent
    assert await empty_store.current_revision() == Store.head_revision()


async def test_sqlite_store_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        await store.migrate()
        async with store.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            fks = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
        assert mode == "wal"
        assert fks == 1
    finally:
        await store.close()


async def test_concurrent_migrations_on_postgresql(pg_server: PostgresCluster) -> None:
    url = pg_store_url(pg_server, fresh_database(pg_server))
    stores = [Store(url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        assert await stores[0].current_revision() == Store.head_revision()
    finally:
        for store in stores:
            await store.close()


async def test_catalog_and_audit_chain_on_postgresql(pg_server: PostgresCluster) -> None:
    store = Store(pg_store_url(pg_server, fresh_database(pg_server)))
    try:
        await store.migrate()
        catalog = Catalog(store, SecretBox(b"k" * 32))
        await catalog.add_user("alice", "alice-password", actor="test")
        await catalog.add_group("analysts", actor="test")
        await catalog.add_member("analysts", "alice", actor="test")
        spec = SourceSpec(
            name="shop", engine=Engine.POSTGRESQL, host="h", port=5432, database="d", read_user="r"
        )
        await catalog.add_source(spec, read_password="pg-read-pw", write_password=None, actor="test")
        await catalog.grant("analysts", "shop", Level.PROPOSE, actor="test")
        assert await catalog.levels("alice", "shop") == (Level.PROPOSE, False)
        assert (await catalog.source_credentials("shop")).read_password == "pg-read-pw"
        # Appends from concurrent transactions still form one chain (advisory lock on PostgreSQL).
        await asyncio.gather(*(catalog.add_group(f"g{i}", actor="test") for i in range(8)))
        async with store.session() as session:
            result = await audit.verify(session)
        assert result.ok, result.describe()
        assert result.events == 5 + 8
    finally:
        await store.close()


def test_cli_and_serve_on_a_shared_postgresql_store(tmp_path: Path, localdb_dir: Path) -> None:
    # A private cluster, because this test stops it to prove /readyz notices.
    with PostgresCluster(localdb_dir, port=free_port()) as server:  # fixed port: it restarts
        url = pg_store_url(server, "qbtest")
        config = write_config(tmp_path / "qb", extra=f'[store]\nurl = "{url}"\n')
        env = {"QUERYBASE_ADMIN_PASSWORD": ADMIN_PASSWORD}
        assert run_cli_in_process(config, "init", env=env).returncode == 0
        added = run_cli_in_process(config, "group", "add", "analysts")
        assert added.returncode == 0, added.stderr
        listed = json.loads(run_cli_in_process(config, "group", "list", "--json").stdout)
        assert listed == [{"name": "analysts", "members": []}]
        serve = start_serve(config)
        try:
            server.stop()
            response = httpx.get(f"{serve.admin_url}/readyz", timeout=10)
            assert response.status_code == 503
            assert response.json()["code"] == "store"
            assert "is unreachable" in response.json()["message"]
            server.start()
            assert httpx.get(f"{serve.admin_url}/readyz", timeout=10).status_code == 200
        finally:
            assert serve.stop() == 0, serve.log
        verified = run_cli_in_process(config, "audit", "verify")
        # user.created (init), group.created, and serve's config.changed at its first start
        assert verified.stdout.strip() == "audit chain intact: 3 events"

"""The read-only backstop: with the classifier forced to call every statement a read, the database
itself still refuses the writes of a `propose` user, because they run on the read role.

This is the one test that replaces a part: the classifier, which is the thing under suspicion.
Everything else — the PostgreSQL front end in this process, the store, asyncpg, PostgreSQL — is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from policies.types import Classification, Kind
from proxy.config import load_settings
from proxy.store.catalog import Catalog
from proxy.store.crypto import SecretBox, load_key
from proxy.store.db import Store
from proxy.wire.pg.session import PgFrontend
from tests.support.localdb import PostgresCluster
from tests.support.pgfront import ITEMS, PASSWORDS, provision, setup_items
from tests.support.querybase import init_home

pytestmark = pytest.mark.integration


@pytest.fixture
def config(pg_server: PostgresCluster, tmp_path: Path) -> Path:
    # The CLI runs its own event loop, so the catalog is set up before the test's loop starts.
    setup_items(pg_server)
    config = init_home(tmp_path / "qb", tls_mode="disable")
    provision(config, pg_server, users=["alice"])
    return config


@pytest.fixture
async def frontend_port(config: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr("proxy.wire.pg.session.classify_pg_cached", lambda sql: Classification(Kind.READ))
    settings = load_settings(config, {})
    store = Store(settings.store.url)
    frontend = PgFrontend(settings, store, Catalog(store, SecretBox(load_key(settings, {}))), None)
    server = await asyncio.get_running_loop().create_server(frontend.protocol, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await frontend.close()
        await store.close()


@pytest.mark.parametrize(
    ("statements", "sqlstate"),
    [
        (["DELETE FROM items"], "25006"),  # read_only_sql_transaction
        (["UPDATE items SET name = 'x'"], "25006"),
        (["CALL wipe_items()"], "25006"),
        # Even with the transaction made writable, the read login's grants stop the write.
        (["BEGIN READ WRITE", "DELETE FROM items"], "42501"),
    ],
    ids=["delete", "update", "call", "read-write-transaction"],
)
async def test_database_rejects_writes_the_classifier_missed(
    frontend_port: int, pg_server: PostgresCluster, statements: list[str], sqlstate: str
) -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=frontend_port, user="alice", password=PASSWORDS["alice"],
        database="shop", ssl=False,
    )  # fmt: skip
    try:
        *setup, write = statements
        for sql in setup:
            await conn.execute(sql)
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.execute(write)
        assert caught.value.sqlstate == sqlstate
    finally:
        await conn.close()
    rows = pg_server.execute_sql("SELECT count(*) FROM items").strip()
    assert rows == str(len(ITEMS))


async def test_a_read_session_that_stops_being_read_only_is_ended(
    frontend_port: int, pg_server: PostgresCluster
) -> None:
    """Issue 10 class 5: PostgreSQL reports default_transaction_read_only (ParameterStatus); when a
    read-role connection reports it off, QueryBase ends the session at once, whatever the classifier
    said (here it was made to call everything a read), and the connection is not reused."""
    conn = await asyncpg.connect(
        host="127.0.0.1", port=frontend_port, user="alice", password=PASSWORDS["alice"],
        database="shop", ssl=False,
    )  # fmt: skip
    try:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.execute("SET default_transaction_read_only = off")
        assert "stopped being read-only" in str(caught.value)
        with pytest.raises(asyncpg.exceptions.InterfaceError):
            await conn.execute("DELETE FROM items")
    finally:
        await conn.close()
    assert int(pg_server.execute_sql("SELECT count(*) FROM items").strip()) == len(ITEMS)

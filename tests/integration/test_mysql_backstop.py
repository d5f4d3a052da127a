"""The read-only backstop on MariaDB: with the classifier forced to call every statement a read, the
database itself still refuses a `propose` user's writes, because they run on the read role.

As in test_pg_backstop.py, the classifier is the one part replaced; the MySQL front end runs in this
process against the real store and MariaDB, and PyMySQL is the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pymysql
import pytest

from policies.types import Classification, Kind
from proxy.config import load_settings
from proxy.store.catalog import Catalog
from proxy.store.crypto import SecretBox, load_key
from proxy.store.db import Store
from proxy.wire.mysql.session import MySQLFrontend
from tests.support.localdb import MARIADB_PASSWORDS, MariaDBServer
from tests.support.myfront import ITEMS, PASSWORDS, SOURCE, provision, setup_items
from tests.support.querybase import init_home, run_cli_in_process

pytestmark = pytest.mark.integration


@pytest.fixture
def config(mariadb_server: MariaDBServer, tmp_path: Path) -> Path:
    setup_items(mariadb_server)
    config = init_home(tmp_path / "qb", tls_mode="disable")
    provision(config, mariadb_server, users=["alice"])
    # A source whose *read* login could write (full DML grants): only the session's READ ONLY flag
    # stands between a misclassified write and the table.
    run_cli_in_process(
        config, "source", "add", "dml_login", "--engine", "mysql", "--host", mariadb_server.host,
        "--port", str(mariadb_server.port), "--database", "qbtest", "--user", "qb_native",
        "--password-env", "PW", "--tls", "disable", env={"PW": MARIADB_PASSWORDS["qb_native"]},
    )  # fmt: skip
    run_cli_in_process(config, "grant", "analysts", "dml_login", "propose")
    return config


@pytest.fixture
async def frontend_port(config: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(
        "proxy.wire.mysql.session.classify_mysql_cached", lambda sql: Classification(Kind.READ)
    )
    settings = load_settings(config, {})
    store = Store(settings.store.url)
    frontend = MySQLFrontend(settings, store, Catalog(store, SecretBox(load_key(settings, {}))), None)
    server = await asyncio.get_running_loop().create_server(frontend.protocol, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await frontend.close()
        await store.close()


def _attempt(port: int, source: str, statements: list[str]) -> int:
    conn = pymysql.connect(
        host="127.0.0.1", port=port, user="alice", password=PASSWORDS["alice"], database=source,
        ssl_disabled=True, autocommit=True,
    )  # fmt: skip
    try:
        with conn.cursor() as cur:
            *setup, write = statements
            for sql in setup:
                cur.execute(sql)
            with pytest.raises(pymysql.MySQLError) as caught:
                cur.execute(write)
            return int(caught.value.args[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("source", "statements", "errno"),
    [
        # The session is READ ONLY at the database: 1792 ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION.
        ("dml_login", ["DELETE FROM items"], 1792),
        ("dml_login", ["UPDATE items SET name = 'x'"], 1792),
        ("dml_login", ["INSERT INTO items VALUES (99, 'x')"], 1792),
        # With a proper read-only login, even lifting the flag leaves its grants in the way.
        (SOURCE, ["SET SESSION TRANSACTION READ WRITE", "DELETE FROM items"], 1142),
    ],
    ids=["delete", "update", "insert", "flag-lifted"],
)
async def test_mariadb_rejects_writes_the_classifier_missed(
    frontend_port: int, mariadb_server: MariaDBServer, source: str, statements: list[str], errno: int
) -> None:
    got = await asyncio.to_thread(_attempt, frontend_port, source, statements)
    assert got == errno
    count = mariadb_server.execute_sql("SELECT COUNT(*) FROM items").split()[-1]
    assert int(count) == len(ITEMS)

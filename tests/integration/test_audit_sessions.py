"""The wire sessions' audit events, through a real `querybase serve` on a SQLite store.

Logins (succeeded and failed) and every statement verdict reach the hash chain through the
batching writer; when the store stops taking writes (another connection holds SQLite's write lock),
statements are refused with a clear error instead of running unrecorded, and service resumes by
itself when the store is back.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from tests.support import myfront, pgfront
from tests.support.changes import Api
from tests.support.localdb import MariaDBServer, PostgresCluster
from tests.support.querybase import init_home, start_serve

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(pg_server: PostgresCluster, tmp_path: Path) -> Iterator[pgfront.Gateway]:
    pgfront.setup_items(pg_server)
    with pgfront.running_gateway(
        pg_server, tmp_path / "qb", tls_mode="disable", users=["carol", "dave"]
    ) as gw:
        yield gw


def _events(gw_admin: str, **filters: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = Api.admin(gw_admin).ok("GET", "/audit", limit=500, **filters)["events"]
    return events


def _wait_events(
    admin_url: str, predicate: Any, timeout: float = 10.0, **filters: Any
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in _events(admin_url, **filters) if predicate(e)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _connect(gw: pgfront.Gateway, user: str) -> psycopg.Connection[Any]:
    return psycopg.connect(gw.conninfo(user), autocommit=True)


def test_logins_and_verdicts_are_audited(gateway: pgfront.Gateway) -> None:
    url = gateway.serve.admin_url
    with _connect(gateway, "carol") as conn:
        conn.execute("SELECT count(*) FROM items").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM items WHERE id = 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gateway.conninfo("carol", password="wrong-password-here"))
    statements = _wait_events(url, lambda e: e["actor"] == "carol", kind="statement")
    verdicts = {
        (e["payload"]["statement"], e["payload"]["verdict"], e["payload"]["kind"]) for e in statements
    }
    assert ("SELECT count(*) FROM items", "forward", "read") in verdicts
    assert ("DELETE FROM items WHERE id = 1", "deny", "write") in verdicts
    assert all(e["source"] == pgfront.SOURCE and e["subject"].startswith("postgresql:") for e in statements)
    logins = _wait_events(url, lambda e: e["actor"] == "carol", kind="login.*")
    kinds = [e["kind"] for e in logins]
    assert "login.succeeded" in kinds
    failed = [e for e in logins if e["kind"] == "login.failed"]
    assert failed
    assert "password authentication failed" in failed[0]["payload"]["reason"]
    assert "wrong-password-here" not in str(logins)
    assert Api.admin(url).ok("GET", "/audit/verify")["ok"] is True


@contextlib.contextmanager
def _store_locked(config: Path) -> Iterator[None]:
    """Another connection holds the SQLite store's write lock: QueryBase can read, not write."""
    db = sqlite3.connect(pgfront.store_path(config), timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def _read_refused(gw: pgfront.Gateway) -> str:
    try:
        with _connect(gw, "carol") as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        return f"{exc.sqlstate} {exc}"
    return ""


def test_unavailable_audit_store_refuses_statements_then_recovers(gateway: pgfront.Gateway) -> None:
    with _connect(gateway, "dave") as dave:
        dave.execute("UPDATE items SET name = 'before' WHERE id = 1")
        with _store_locked(gateway.config):
            # The writer notices when its next batch cannot be written (SQLite waits 5 s for the lock).
            refused = _until(lambda: _read_refused(gateway))
            assert refused.startswith("58000"), refused
            assert "audit log unavailable" in refused
            with pytest.raises(psycopg.Error) as caught:
                dave.execute("UPDATE items SET name = 'unrecorded' WHERE id = 1")
            assert caught.value.sqlstate == "58000"
            assert "writes are refused until it recovers" in str(caught.value)
            assert gateway.rows("SELECT name FROM items WHERE id = 1") == [["before"]]  # nothing ran
        assert _until(lambda: not _read_refused(gateway)), "service did not resume after the store came back"
        dave.execute("UPDATE items SET name = 'after' WHERE id = 1")
    assert gateway.rows("SELECT name FROM items WHERE id = 1") == [["after"]]
    url = gateway.serve.admin_url
    updates = _wait_events(
        url, lambda e: e["payload"].get("statement", "").startswith("UPDATE"), kind="statement"
    )
    texts = [e["payload"]["statement"] for e in updates]
    assert "UPDATE items SET name = 'before' WHERE id = 1" in texts  # queued before the outage, written after
    assert "UPDATE items SET name = 'after' WHERE id = 1" in texts
    assert not any("unrecorded" in t for t in texts)
    assert Api.admin(url).ok("GET", "/audit/verify")["ok"] is True


def test_mysql_logins_and_verdicts_are_audited(mariadb_server: MariaDBServer, tmp_path: Path) -> None:
    myfront.setup_items(mariadb_server)
    config = init_home(tmp_path / "qb", tls_mode="disable")
    myfront.provision(config, mariadb_server, users=["alice"])
    serve = start_serve(config)
    try:
        gw = myfront.Gateway(config, serve, mariadb_server, port=pgfront.listen_port(config, "mysql"))
        conn = pymysql.connect(**gw.connect_args("alice"))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM items")
                with pytest.raises(pymysql.err.MySQLError):
                    cur.execute("DELETE FROM items")  # held
        finally:
            conn.close()
        statements = _wait_events(serve.admin_url, lambda e: e["actor"] == "alice", kind="statement")
        verdicts = {(e["payload"]["statement"], e["payload"]["verdict"]) for e in statements}
        assert ("SELECT count(*) FROM items", "forward") in verdicts
        assert ("DELETE FROM items", "hold") in verdicts
        assert all(e["payload"]["protocol"] == "mysql" for e in statements)
        logins = _wait_events(serve.admin_url, lambda e: e["actor"] == "alice", kind="login.*")
        assert [e["kind"] for e in logins] == ["login.succeeded"]
    finally:
        serve.stop()

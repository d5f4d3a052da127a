"""Exactly once across crashes: the executor is SIGKILLed at each step between claim and final record.

`QUERYBASE_TEST_FAULT=<point>` makes `querybase serve` kill itself at that point while running an
approved request (proxy/changes/executor.py). A fresh `serve` on the same store then resolves the request
from the database itself — PostgreSQL `txid_status()`, MySQL `XA RECOVER` — and never runs it
again. The statement appends a character, so running it twice would show in the data.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pymysql
import pytest

from tests.integration.test_pg_clients import psql
from tests.support import myfront, pgfront
from tests.support.changes import Api, held_id
from tests.support.localdb import MariaDBServer, PostgresCluster
from tests.support.querybase import ServeProcess, init_home, start_serve

pytestmark = pytest.mark.integration

# point → what the database must say afterwards (applied, request status)
PG_POINTS = {
    "after_claim": (False, "failed"),
    "after_begin": (False, "failed"),
    "after_statement": (False, "failed"),
    "after_commit": (True, "succeeded"),
}
MY_POINTS = {
    "after_claim": (False, "failed"),
    "after_begin": (False, "failed"),
    "after_statement": (False, "failed"),
    "after_prepare": (True, "succeeded"),
    "after_commit": (True, "succeeded"),
}


def _wait_dead(serve: ServeProcess, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while serve.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert serve.process.poll() is not None, f"serve did not crash at the fault point:\n{serve.log}"
    return serve.process.returncode


def _approve_and_crash(config: Path, point: str, hold: object) -> tuple[int, ServeProcess]:
    crashing = start_serve(config, env={"QUERYBASE_TEST_FAULT": point})
    try:
        request_id = hold()  # type: ignore[operator]
        bob = Api(crashing.admin_url, "bob", BOB[config])
        try:
            answer = bob.call("POST", f"/requests/{request_id}/approve")
            assert answer.status_code == 200, answer.text
        except httpx.TransportError:
            pass  # the process died before it answered
    except Exception:
        crashing.kill()
        raise
    assert _wait_dead(crashing) == -9  # SIGKILL
    assert "test_fault" in crashing.log
    assert point in crashing.log
    return request_id, start_serve(config)


BOB: dict[Path, str] = {}


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="module")
def pg_home(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> pgfront.Gateway:
    config = init_home(tmp_path_factory.mktemp("crash-pg"), tls_mode="disable")
    pgfront.provision(config, pg_server, users=["alice", "bob"])
    BOB[config] = pgfront.PASSWORDS["bob"]
    return pgfront.Gateway(config, None, pg_server, port=pgfront.listen_port(config))  # type: ignore[arg-type]


@pytest.mark.parametrize("point", list(PG_POINTS))
def test_postgresql_request_survives_a_crash_at(pg_home: pgfront.Gateway, point: str) -> None:
    gw = pg_home
    pgfront.setup_items(gw.pg)

    def hold() -> int:
        result = psql(gw, "alice", "-c", "UPDATE items SET name = name || '!' WHERE id = 1")
        assert "QB001" in result.stderr, result.stderr
        return held_id(result.stderr)

    request_id, serve = _approve_and_crash(gw.config, point, hold)
    try:
        final = Api(serve.admin_url, "bob", BOB[gw.config]).wait_final(request_id, timeout=60)
    finally:
        serve.stop()
    applied, status = PG_POINTS[point]
    assert final["status"] == status, final
    assert gw.rows("SELECT name FROM items WHERE id = 1") == [["apple!" if applied else "apple"]]
    assert final["execution"]["executor"]


# ----------------------------------------------------------------------------------- MySQL


@pytest.fixture(scope="module")
def my_home(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> myfront.Gateway:
    config = init_home(tmp_path_factory.mktemp("crash-my"), tls_mode="disable")
    myfront.provision(config, mariadb_server, users=["alice", "bob"])
    BOB[config] = myfront.PASSWORDS["bob"]
    port = pgfront.listen_port(config, "mysql")
    return myfront.Gateway(config, None, mariadb_server, port=port)  # type: ignore[arg-type]


@pytest.mark.parametrize("point", list(MY_POINTS))
def test_mysql_request_survives_a_crash_at(my_home: myfront.Gateway, point: str) -> None:
    gw = my_home
    myfront.setup_items(gw.server)

    def hold() -> int:
        conn = pymysql.connect(**gw.connect_args("alice"))
        try:
            with pytest.raises(pymysql.err.MySQLError) as caught:
                conn.cursor().execute("UPDATE items SET name = CONCAT(name, '!') WHERE id = 1")
            return held_id(str(caught.value))
        finally:
            conn.close()

    request_id, serve = _approve_and_crash(gw.config, point, hold)
    try:
        final = Api(serve.admin_url, "bob", BOB[gw.config]).wait_final(request_id, timeout=60)
    finally:
        serve.stop()
    applied, status = MY_POINTS[point]
    assert final["status"] == status, final
    assert gw.rows("SELECT name FROM items WHERE id = 1") == [["apple!" if applied else "apple"]]
    assert gw.root_sql("XA RECOVER").strip() == ""  # nothing left prepared

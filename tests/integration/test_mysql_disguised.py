"""Disguised writes from a `propose` user, through a real `querybase serve` in front of MariaDB.

Each statement below reads like something else, or writes by a side door (a procedure, a function,
a server file, a prepared statement built from a variable, a lock, a transaction mode). Every one
must be held (errno 9001, a change request with the exact text) or denied (1227/1142, no change
request) — never run. After each, a direct root connection checks that nothing changed: table
checksums and row counts, no file written by the server, no row or table lock left behind.
What the verdicts rest on is policies/mysql.py (see its "Deliberate choices").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.support.localdb import MariaDBServer
from tests.support.myfront import SOURCE, Gateway, running_gateway, setup_items

pytestmark = pytest.mark.integration

ER_HELD = 9001
DENIED = (1227, 1142)

ROUTINES_SQL = """
DROP PROCEDURE IF EXISTS qb_wipe;
DROP FUNCTION IF EXISTS qb_wipe_fn;
CREATE PROCEDURE qb_wipe() MODIFIES SQL DATA DELETE FROM items;
DELIMITER //
CREATE FUNCTION qb_wipe_fn() RETURNS INT MODIFIES SQL DATA
BEGIN
  DELETE FROM items;
  RETURN 1;
END//
DELIMITER ;
GRANT EXECUTE ON PROCEDURE qbtest.qb_wipe TO 'qb_reader'@'%';
GRANT EXECUTE ON FUNCTION qbtest.qb_wipe_fn TO 'qb_reader'@'%';
"""


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    mariadb_server.execute_sql(ROUTINES_SQL)
    # a file the server could read (LOAD DATA INFILE, LOAD_FILE) if it were let
    (mariadb_server.basedir / "files" / "qb-rows.tsv").write_text("100\tinjected\n")
    try:
        with running_gateway(mariadb_server, tmp_path_factory.mktemp("qb-mydisguised") / "home") as gw:
            yield gw
    finally:
        mariadb_server.execute_sql("DROP PROCEDURE IF EXISTS qb_wipe; DROP FUNCTION IF EXISTS qb_wipe_fn;")


def files_dir(gw: Gateway) -> Path:
    return gw.server.basedir / "files"  # the server's secure_file_priv


def snapshot(gw: Gateway) -> list[Any]:
    """What must not change: checksums and counts of both tables, the server's files."""
    return [
        gw.rows("CHECKSUM TABLE items, items_copy EXTENDED"),
        gw.count("items"),
        gw.count("items_copy"),
        sorted(p.name for p in files_dir(gw).iterdir()),
    ]


def assert_no_locks(gw: Gateway) -> None:
    """No row lock (FOR UPDATE NOWAIT succeeds) and no table lock (LOCK TABLES within 1 s)."""
    gw.root_sql(
        "SET SESSION lock_wait_timeout = 1; START TRANSACTION;"
        " SELECT id FROM items WHERE id = 1 FOR UPDATE NOWAIT; ROLLBACK;"
        " LOCK TABLES items WRITE; UNLOCK TABLES;"
    )


@pytest.fixture
def unchanged(gateway: Gateway) -> Iterator[None]:
    before = snapshot(gateway)
    yield
    assert snapshot(gateway) == before
    assert_no_locks(gateway)


def connect(gw: Gateway, user: str = "alice") -> pymysql.Connection:
    return pymysql.connect(
        **gw.connect_args(user, SOURCE),
        autocommit=True,
        ssl_disabled=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    )


def refusal(conn: pymysql.Connection, sql: str) -> tuple[int, str]:
    with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as info:
        cur.execute(sql)
    return info.value.args[0], info.value.args[1]


def scalar(conn: pymysql.Connection, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()[0][0]


HELD = [
    "INSERT INTO items_copy SELECT * FROM items",
    "SELECT * FROM items WHERE id = 1 FOR UPDATE",
    "SELECT * FROM items LOCK IN SHARE MODE",
    "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE items",
    "CALL qb_wipe()",
    "DO qb_wipe_fn()",
    "LOCK TABLES items WRITE",
    "HANDLER items OPEN",
    "SELECT 1; DELETE FROM items",
    "SELECT 1; SELECT qb_wipe_fn() FROM dual; DO qb_wipe_fn()",
    "/*!50000 DELETE FROM items */",
    "SELECT 1 /*!; DELETE FROM items */",
    "WITH x AS (SELECT 1) DELETE FROM items",
    "DELETE items FROM items JOIN items_copy",
    "ANALYZE DELETE FROM items",
    "SET @q = 'DELETE FROM items'; PREPARE s9 FROM @q; EXECUTE s9",
    "XA START 'qb'",
    "TRUNCATE items",
]
DENIED_SQL = [
    "SELECT * FROM items INTO OUTFILE '{files}/qb-outfile.csv'",
    "SELECT * FROM items INTO DUMPFILE '{files}/qb-dumpfile.bin'",
    "LOAD DATA INFILE '{files}/qb-rows.tsv' INTO TABLE items",
    "SELECT LOAD_FILE('{files}/qb-rows.tsv')",
    "SET SESSION TRANSACTION READ WRITE",
    "SET @@session.transaction_read_only = 0",
    "SET @@session.tx_read_only = OFF",
    "SET SESSION tx_read_only = @off",
    "START TRANSACTION READ WRITE",
    "PREPARE s1 FROM 'DELETE FROM items'",
    "PREPARE s2 FROM @q",
]


def _id(sql: str) -> str:
    return "_".join(sql.replace("'", "").split()[:4])[:40]


@pytest.mark.parametrize("sql", HELD, ids=_id)
def test_disguised_write_is_held(gateway: Gateway, unchanged: None, sql: str) -> None:
    before = gateway.last_request_id()
    with connect(gateway) as conn:
        errno, message = refusal(conn, sql)
        assert errno == ER_HELD, message
        assert "change request #" in message
        assert scalar(conn, "SELECT @@session.tx_read_only") == 1  # the session goes on, read-only
    assert [r["statement_text"] for r in gateway.new_requests(before)] == [sql]


@pytest.mark.parametrize("sql", DENIED_SQL, ids=_id)
def test_disguised_write_is_denied(gateway: Gateway, unchanged: None, sql: str) -> None:
    sql = sql.format(files=files_dir(gateway))
    before = gateway.last_request_id()
    with connect(gateway) as conn:
        errno, message = refusal(conn, sql)
        assert errno in DENIED, message
        assert "alice" in message
        assert scalar(conn, "SELECT @@session.tx_read_only") == 1
    assert gateway.new_requests(before) == []


def test_prepared_then_executed(gateway: Gateway, unchanged: None) -> None:
    """PREPARE of a write is denied; EXECUTE of it (or of a name prepared from a variable) has
    nothing visible to run and is held as unknown, never sent upstream."""
    before = gateway.last_request_id()
    with connect(gateway) as conn:
        assert refusal(conn, "PREPARE s1 FROM 'DELETE FROM items'")[0] in DENIED
        assert refusal(conn, "EXECUTE s1")[0] == ER_HELD
        with conn.cursor() as cur:
            cur.execute("SET @q = 'DELETE FROM items'")
        assert refusal(conn, "PREPARE s2 FROM @q")[0] in DENIED
        assert refusal(conn, "EXECUTE s2")[0] == ER_HELD
        # a prepared read still works, and so does executing it
        with conn.cursor() as cur:
            cur.execute("PREPARE s3 FROM 'SELECT count(*) FROM items'")
            cur.execute("EXECUTE s3")
            assert cur.fetchall() == ((5,),)
    assert [r["statement_text"] for r in gateway.new_requests(before)] == ["EXECUTE s1", "EXECUTE s2"]


def test_for_update_inside_a_transaction(gateway: Gateway, unchanged: None) -> None:
    with connect(gateway) as conn:
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION")
        assert refusal(conn, "SELECT * FROM items WHERE id = 1 FOR UPDATE")[0] == ER_HELD
        # no lock was taken upstream, while the transaction is still open
        assert_no_locks(gateway)
        assert scalar(conn, "SELECT count(*) FROM items") == 5
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")


def test_binary_protocol_call_is_held(gateway: Gateway, unchanged: None) -> None:
    before = gateway.last_request_id()
    conn = mysql.connector.connect(
        host=gateway.host,
        port=gateway.port,
        user="alice",
        password=gateway.passwords["alice"],
        database=SOURCE,
        use_pure=True,
        autocommit=True,
        ssl_disabled=True,
    )
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute("CALL qb_wipe()")
        assert info.value.errno == ER_HELD
    finally:
        conn.close()
    assert [r["statement_text"] for r in gateway.new_requests(before)] == ["CALL qb_wipe()"]


def test_stored_function_in_a_select_is_held(gateway: Gateway, unchanged: None) -> None:
    """`SELECT f()` calls a stored function, which is not on the allowlist of functions known to be
    safe (DESIGN.md §3): it fails closed — held for a `propose` user, the function named — and
    nothing runs (the read-only session would stop the DELETE inside too: test_mysql_backstop)."""
    before = gateway.last_request_id()
    with connect(gateway) as conn:
        errno, message = refusal(conn, "SELECT qb_wipe_fn()")
        assert errno == ER_HELD, message
        assert scalar(conn, "SELECT count(*) FROM items") == 5
    held = gateway.new_requests(before)
    assert [r["statement_text"] for r in held] == ["SELECT qb_wipe_fn()"]
    assert "qb_wipe_fn" in json.dumps(held[0]["classification"])

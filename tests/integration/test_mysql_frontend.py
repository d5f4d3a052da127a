"""The MySQL front end with real clients: PyMySQL, aiomysql, mysql-connector-python, the mariadb CLI.

Everything runs against one QueryBase (module fixture `gateway`) in front of the session's MariaDB
(tests/support/myfront.py); the TLS `require` test starts a second one.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiomysql
import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from proxy.wire.mysql import protocol as my
from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ITEMS,
    OTHER_SOURCE,
    SCHEMA,
    SOURCE,
    Gateway,
    running_gateway,
    setup_items,
)

ER_HELD = 9001


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with running_gateway(mariadb_server, tmp_path_factory.mktemp("qb-mysql") / "home") as gw:
        yield gw


@pytest.fixture
def items_unchanged(gateway: Gateway) -> Iterator[None]:
    """The test must leave `items` and `items_copy` exactly as they were (checked as root)."""
    before = gateway.rows("SELECT id, name FROM items ORDER BY id")
    yield
    assert gateway.rows("SELECT id, name FROM items ORDER BY id") == before
    assert gateway.count("items_copy") == 0


def connect(gateway: Gateway, user: str, database: str | None = SOURCE, **extra: Any) -> pymysql.Connection:
    """PyMySQL through QueryBase, in plaintext unless `ssl=` is given (PyMySQL 1.2 would otherwise
    try TLS whenever offered, which trips the SSLRequest race in test_tls_client_hello_coalesced)."""
    if "ssl" not in extra:
        extra["ssl_disabled"] = True
    return pymysql.connect(**gateway.connect_args(user, database), autocommit=True, **extra)


def tls_connect(args: dict[str, Any]) -> pymysql.Connection:
    """PyMySQL over TLS (no retries: a TLS login must work every time)."""
    return pymysql.connect(**args, autocommit=True, ssl=_insecure_context())


def query(conn: pymysql.Connection, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def my_error(conn: pymysql.Connection, sql: str) -> tuple[int, str]:
    """(errno, message) of the error `sql` raises through PyMySQL."""
    with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as info:
        cur.execute(sql)  # a held multi-statement is answered with one ERR, its first result
    errno, message = info.value.args[0], info.value.args[1]
    return errno, message


def assert_held(conn: pymysql.Connection, sql: str) -> None:
    errno, message = my_error(conn, sql)
    assert errno == ER_HELD, message
    assert "change request #" in message
    assert "held for approval" in message
    assert query(conn, "SELECT 1") == [(1,)]  # the session stays usable


def connector(gateway: Gateway, user: str, *, use_pure: bool = True) -> Any:
    return mysql.connector.connect(
        host=gateway.host,
        port=gateway.port,
        user=user,
        password=gateway.passwords[user],
        database=SOURCE,
        use_pure=use_pure,
        autocommit=True,
        ssl_disabled=True,
        connection_timeout=10,
    )


# ------------------------------------------------------------------------------------ reads


@pytest.mark.parametrize("user", ["alice", "carol", "dave"])
def test_pymysql_reads(gateway: Gateway, user: str) -> None:
    with connect(gateway, user) as conn:
        assert query(conn, "SELECT id, name FROM items ORDER BY id") == ITEMS
        assert query(conn, "SELECT @@version") == [(gateway.server.version,)]
        assert query(conn, "SELECT DATABASE()") == [(SCHEMA,)]
        comment = query(conn, "SELECT @@version_comment LIMIT 1")
        assert len(comment) == 1
        assert isinstance(comment[0][0], str)
        assert gateway.server.version in conn.get_server_info()  # the greeting shows upstream's


@pytest.mark.parametrize("user", ["alice", "carol", "dave"])
def test_aiomysql_reads(gateway: Gateway, user: str) -> None:
    async def run() -> tuple[list[Any], list[Any]]:
        conn = await aiomysql.connect(
            host=gateway.host,
            port=gateway.port,
            user=user,
            password=gateway.passwords[user],
            db=SOURCE,
            autocommit=True,
            connect_timeout=10,
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT id, name FROM items WHERE id > %s ORDER BY id", (2,))
                rows = list(await cur.fetchall())
                await cur.execute("SELECT @@version")
                version = list(await cur.fetchall())
            return rows, version
        finally:
            conn.close()

    rows, version = asyncio.run(asyncio.wait_for(run(), 20))
    assert [tuple(r) for r in rows] == ITEMS[2:]
    assert version == [(gateway.server.version,)]


@pytest.mark.parametrize(
    "use_pure",
    [
        True,
        pytest.param(
            False,
            marks=pytest.mark.skipif(not mysql.connector.HAVE_CEXT, reason="no C extension"),
        ),
    ],
    ids=["pure", "cext"],
)
@pytest.mark.parametrize("user", ["alice", "carol", "dave"])
def test_connector_reads(gateway: Gateway, user: str, use_pure: bool) -> None:
    conn = connector(gateway, user, use_pure=use_pure)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, name FROM items ORDER BY id")
        assert [tuple(r) for r in cur.fetchall()] == ITEMS
        cur.execute("SELECT @@version")
        assert cur.fetchall() == [(gateway.server.version,)]
        cur.close()
        prepared = conn.cursor(prepared=True)
        prepared.execute("SELECT name FROM items WHERE id = %s", (3,))
        assert prepared.fetchall() == [("cherry",)]
        prepared.execute("SELECT name FROM items WHERE id = %s", (4,))
        assert prepared.fetchall() == [("date",)]
        prepared.close()
    finally:
        conn.close()


# ---------------------------------------------------------------------------- propose: held


HELD_WRITES = [
    "INSERT INTO items VALUES (100, 'zucchini')",
    "UPDATE items SET name = 'x' WHERE id = 1",
    "DELETE FROM items",
    "REPLACE INTO items VALUES (1, 'apricot')",
    "INSERT INTO items_copy SELECT * FROM items",
]


@pytest.mark.parametrize("sql", HELD_WRITES, ids=lambda s: s.split()[0] + "_" + s.split()[1])
def test_propose_writes_are_held(gateway: Gateway, items_unchanged: None, sql: str) -> None:
    before = gateway.last_request_id()
    with connect(gateway, "alice") as conn:
        assert_held(conn, sql)
    new = gateway.new_requests(before)
    assert [r["statement_text"] for r in new] == [sql]


def test_propose_load_data_is_held_or_denied(gateway: Gateway, items_unchanged: None) -> None:
    """LOAD DATA INFILE (not LOCAL) reads a server file: classified privileged, so denied 1227 for
    propose (a hold, 9001, would also be acceptable)."""
    with connect(gateway, "alice") as conn:
        errno, message = my_error(conn, "LOAD DATA INFILE '/tmp/querybase-none.csv' INTO TABLE items")
        assert errno in (ER_HELD, 1227), message
        assert query(conn, "SELECT 1") == [(1,)]


def test_propose_hidden_write_in_multi_statement_is_held(gateway: Gateway, items_unchanged: None) -> None:
    before = gateway.last_request_id()
    sql = "SELECT 1; DELETE FROM items; SELECT 2"
    with connect(gateway, "alice", client_flag=CLIENT.MULTI_STATEMENTS) as conn:
        assert_held(conn, sql)
        # a harmless multi-statement still runs
        with conn.cursor() as cur:
            cur.execute("SELECT 1; SELECT 2")
            assert cur.fetchall() == ((1,),)
            assert cur.nextset()
            assert cur.fetchall() == ((2,),)
    assert [r["statement_text"] for r in gateway.new_requests(before)] == [sql]


def test_propose_held_sqlstate_via_connector(gateway: Gateway, items_unchanged: None) -> None:
    conn = connector(gateway, "alice")
    try:
        cur = conn.cursor()
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute("DELETE FROM items WHERE id = 2")
        assert info.value.errno == ER_HELD
        assert info.value.sqlstate == "HY000"
        assert "change request #" in info.value.msg
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchall() == [(len(ITEMS),)]
    finally:
        conn.close()


def test_propose_privileged_is_denied(gateway: Gateway, items_unchanged: None) -> None:
    before = gateway.last_request_id()
    with connect(gateway, "alice") as conn:
        errno, message = my_error(conn, "SET SESSION TRANSACTION READ WRITE")
        assert errno == 1227, message
        assert "alice" in message
        assert SOURCE in message
        assert query(conn, "SELECT @@session.tx_read_only") == [(1,)]
    assert gateway.new_requests(before) == []


def test_prepared_insert_is_held_with_parameters(gateway: Gateway, items_unchanged: None) -> None:
    before = gateway.last_request_id()
    conn = connector(gateway, "alice")
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (77, "kiwi"))
        assert info.value.errno == ER_HELD, info.value.msg
        assert info.value.sqlstate == "HY000"
        assert "change request #" in info.value.msg
        cur.close()
        check = conn.cursor(prepared=True)
        check.execute("SELECT name FROM items WHERE id = %s", (1,))
        assert check.fetchall() == [("apple",)]
        check.close()
    finally:
        conn.close()
    new = gateway.new_requests(before)
    assert len(new) == 1
    assert new[0]["statement_text"] == "INSERT INTO items (id, name) VALUES (?, ?)"
    params = new[0]["parameters"]
    assert len(params) == 2
    # the values are stored as their binary-protocol wire bytes, with the type to decode them
    values = [
        my.decode_binary_value(my.ColumnType(p["type"]), p["unsigned"], base64.b64decode(p["value_b64"]))
        for p in params
    ]
    assert values == [77, b"kiwi"]


# ------------------------------------------------------------------------------ read / write


@pytest.mark.parametrize(
    "sql",
    ["DELETE FROM items", "INSERT INTO items VALUES (9, 'x')", "UPDATE items SET name = 'y'"],
)
def test_read_user_writes_denied(gateway: Gateway, items_unchanged: None, sql: str) -> None:
    before = gateway.last_request_id()
    with connect(gateway, "carol") as conn:
        errno, message = my_error(conn, sql)
        assert errno in (1142, 1227), message
        assert "carol" in message
        assert query(conn, "SELECT count(*) FROM items") == [(len(ITEMS),)]
    assert gateway.new_requests(before) == []


def test_read_user_cannot_lift_read_only(gateway: Gateway) -> None:
    with connect(gateway, "carol") as conn:
        errno, message = my_error(conn, "SET SESSION TRANSACTION READ WRITE")
        assert errno == 1227, message


def test_write_user_insert_runs(gateway: Gateway) -> None:
    try:
        with connect(gateway, "dave") as conn:
            with conn.cursor() as cur:
                assert cur.execute("INSERT INTO items VALUES (50, 'fig')") == 1
            assert query(conn, "SELECT name FROM items WHERE id = 50") == [("fig",)]
        assert gateway.rows("SELECT name FROM items WHERE id = 50") == [["fig"]]
    finally:
        gateway.root_sql("DELETE FROM items WHERE id = 50")


# ------------------------------------------------------------------------------------ login


def test_login_errors(gateway: Gateway) -> None:
    def login_error(user: str, password: str, database: str | None = SOURCE) -> tuple[int, str]:
        args = gateway.connect_args(user, database)
        args["password"] = password
        with pytest.raises(pymysql.MySQLError) as info:
            pymysql.connect(**args, ssl_disabled=True)
        return info.value.args[0], info.value.args[1]

    wrong = login_error("alice", "not-the-password")
    unknown = login_error("nobody", "not-the-password")
    assert wrong[0] == unknown[0] == 1045
    assert wrong[1].replace("alice", "U") == unknown[1].replace("nobody", "U")
    assert login_error("carol", gateway.passwords["carol"], "no_such_source")[0] == 1049
    assert login_error("frank", gateway.passwords["frank"])[0] == 1044
    errno, message = login_error("dave", gateway.passwords["dave"], None)
    assert errno == 1046
    assert SOURCE in message
    assert OTHER_SOURCE in message


@pytest.mark.parametrize("user", ["alice", "carol"])
def test_no_database_picks_the_only_source(gateway: Gateway, user: str) -> None:
    with connect(gateway, user, database=None) as conn:
        assert query(conn, "SELECT DATABASE()") == [(SCHEMA,)]
        assert query(conn, "SELECT count(*) FROM items") == [(len(ITEMS),)]


def test_use_and_init_db(gateway: Gateway) -> None:
    with connect(gateway, "carol") as conn:
        conn.select_db(SCHEMA)
        assert query(conn, "SELECT DATABASE()") == [(SCHEMA,)]
        query(conn, f"USE {SCHEMA}")
        assert query(conn, "SELECT count(*) FROM items") == [(len(ITEMS),)]


# -------------------------------------------------------------------------------------- TLS


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_tls_allow(gateway: Gateway) -> None:
    with tls_connect(gateway.connect_args("carol")) as conn:
        assert isinstance(conn._sock, ssl.SSLSocket)
        assert query(conn, "SELECT count(*) FROM items") == [(len(ITEMS),)]
    with connect(gateway, "carol") as plain:
        assert not isinstance(plain._sock, ssl.SSLSocket)
        assert query(plain, "SELECT 1") == [(1,)]


def test_tls_require(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("qb-mysql-require") / "home"
    with running_gateway(mariadb_server, home, tls_mode="require", users=["carol"]) as gw:
        with pytest.raises(pymysql.MySQLError) as info:
            pymysql.connect(**gw.connect_args("carol"), ssl_disabled=True)
        assert info.value.args[0] == 3159
        with tls_connect(gw.connect_args("carol")) as conn:
            assert isinstance(conn._sock, ssl.SSLSocket)
            assert query(conn, "SELECT count(*) FROM items") == [(len(ITEMS),)]


# -------------------------------------------------------------------------- read-only backstop


def test_backstop_survives_ping_and_reset(gateway: Gateway) -> None:
    with connect(gateway, "alice") as conn:
        assert query(conn, "SELECT @@session.tx_read_only") == [(1,)]
        conn.ping(reconnect=False)
        assert query(conn, "SELECT @@session.tx_read_only") == [(1,)]
    conn2 = connector(gateway, "alice")
    try:
        cur = conn2.cursor()
        cur.execute("SELECT @@session.tx_read_only")
        assert cur.fetchall() == [(1,)]
        cur.close()
        conn2.cmd_reset_connection()
        cur = conn2.cursor()
        cur.execute("SELECT @@session.tx_read_only")
        assert cur.fetchall() == [(1,)]
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchall() == [(len(ITEMS),)]
        cur.close()
    finally:
        conn2.close()


# ------------------------------------------------------------------------------- KILL QUERY


def test_kill_query(gateway: Gateway) -> None:
    a = connect(gateway, "carol")
    b = connect(gateway, "carol")
    other = connect(gateway, "alice")
    outcome: dict[str, Any] = {}

    def sleeper() -> None:
        start = time.monotonic()
        try:
            outcome["rows"] = query(a, "SELECT SLEEP(20)")
        except pymysql.MySQLError as exc:
            outcome["error"] = exc.args
        outcome["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=sleeper, daemon=True)
    try:
        target = a.thread_id()
        thread.start()
        time.sleep(0.7)
        errno, message = my_error(other, f"KILL QUERY {target}")
        assert errno == 1094, message
        assert thread.is_alive()
        query(b, f"KILL QUERY {target}")
        thread.join(10)
        assert not thread.is_alive(), "SLEEP(20) was not interrupted"
        assert outcome["elapsed"] < 10
        assert outcome.get("rows") == [(1,)] or outcome.get("error", (0,))[0] in (1317, 1028)
        assert query(a, "SELECT 7") == [(7,)]
    finally:
        thread.join(25)
        for conn in (a, b, other):
            conn.close()


# ---------------------------------------------------------------------------- malformed input


def _read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_garbage_after_greeting_closes_connection(gateway: Gateway) -> None:
    with connect(gateway, "carol") as bystander:
        with socket.create_connection((gateway.host, gateway.port), timeout=10) as raw:
            greeting = raw.recv(65536)
            assert greeting[4:5] == b"\x0a"  # HandshakeV10
            raw.sendall(b"\x06\x00\x00\x01garbag")
            _read_until_eof(raw)  # closed (possibly after an ERR) within the timeout
        assert query(bystander, "SELECT count(*) FROM items") == [(len(ITEMS),)]


def test_garbage_after_login_closes_connection(gateway: Gateway) -> None:
    with connect(gateway, "carol") as bystander:
        victim = connect(gateway, "carol")
        try:
            victim._sock.settimeout(10)
            victim._sock.sendall(b"\x00\x00\x00\x00")  # an empty command packet
            _read_until_eof(victim._sock)
        finally:
            victim._sock.close()
        assert query(bystander, "SELECT count(*) FROM items") == [(len(ITEMS),)]


# ------------------------------------------------------------------------------- mariadb CLI


def _mariadb_cli(gateway: Gateway, user: str, sql: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("mariadb") or shutil.which("mysql")
    if binary is None:
        pytest.skip("no mariadb client")
    argv = [binary, "--no-defaults", "-h", "127.0.0.1", "-P", str(gateway.port), "-u", user]
    argv += [f"-p{gateway.passwords[user]}", SOURCE, "-e", sql]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_mariadb_cli(gateway: Gateway, items_unchanged: None) -> None:
    ok = _mariadb_cli(gateway, "alice", "select count(*) from items")
    assert ok.returncode == 0, ok.stderr
    assert str(len(ITEMS)) in ok.stdout.split()
    held = _mariadb_cli(gateway, "alice", "delete from items")
    assert held.returncode != 0
    assert "ERROR 9001 (HY000)" in held.stderr
    assert "held for approval" in held.stderr


def _read_packet(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        assert chunk, "connection closed"
        header += chunk
    size = int.from_bytes(header[:3], "little")
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        assert chunk, "connection closed"
        body += chunk
    return body


def test_tls_client_hello_coalesced(gateway: Gateway) -> None:
    """A client may send its ClientHello right behind the SSLRequest; both can arrive in one read."""
    with socket.create_connection((gateway.host, gateway.port), timeout=10) as raw:
        greeting = _read_packet(raw)
        assert greeting[:1] == b"\x0a"
        caps = int(
            my.Capability.CLIENT_LONG_PASSWORD
            | my.Capability.CLIENT_PROTOCOL_41
            | my.Capability.CLIENT_SSL
            | my.Capability.CLIENT_SECURE_CONNECTION
            | my.Capability.CLIENT_PLUGIN_AUTH
        )
        ssl_request = caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + bytes(23)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = _insecure_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        client_hello = outgoing.read()
        raw.sendall(len(ssl_request).to_bytes(3, "little") + b"\x01" + ssl_request + client_hello)
        first = raw.recv(5)
        assert first[:1] == b"\x16", f"expected a TLS handshake record, got {first!r}"

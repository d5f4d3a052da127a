"""MySQL session state through a real `querybase serve`: COM_CHANGE_USER, EOF vs OK terminators on a
shared pool, and COM_STMT_SEND_LONG_DATA in held prepared writes.

Clients: mysql-connector-python (pure; `cmd_change_user`, file-like parameters sent as long data),
PyMySQL (no CLIENT_DEPRECATE_EOF), and `RawMy` (QueryBase's codec on a socket) where the exact
packets are the point.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest

from proxy.upstream.mysql import scramble_native
from proxy.wire.mysql import protocol as my
from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ITEMS,
    OTHER_SOURCE,
    SOURCE,
    Gateway,
    RawMy,
    add_tiny_source,
    running_gateway,
    setup_items,
)

pytestmark = pytest.mark.integration

ER_HELD = 9001
TINY = "tiny_my"


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with running_gateway(mariadb_server, tmp_path_factory.mktemp("qb-mysession") / "home") as gw:
        add_tiny_source(gw.config, mariadb_server, TINY)
        yield gw


@pytest.fixture
def items_unchanged(gateway: Gateway) -> Iterator[None]:
    before = gateway.rows("SELECT id, name FROM items ORDER BY id")
    yield
    assert gateway.rows("SELECT id, name FROM items ORDER BY id") == before
    assert gateway.count("items_copy") == 0


def connector(gw: Gateway, user: str, database: str = SOURCE) -> Any:
    return mysql.connector.connect(
        host=gw.host,
        port=gw.port,
        user=user,
        password=gw.passwords[user],
        database=database,
        use_pure=True,
        autocommit=True,
        ssl_disabled=True,
        connection_timeout=10,
    )


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()


def errno_of(conn: Any, sql: str) -> tuple[int, str]:
    cur = conn.cursor()
    try:
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute(sql)
        return info.value.errno, info.value.msg
    finally:
        cur.close()


# ------------------------------------------------------------------------------ COM_CHANGE_USER


def test_change_user_switches_identity_role_and_discards_state(gateway: Gateway) -> None:
    conn = connector(gateway, "alice")
    try:
        assert rows(conn, "SELECT @@session.tx_read_only, CURRENT_USER()") == [(1, "qb_reader@%")]
        rows(conn, "SET @qb_marker = 42")
        held = conn.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as info:
            held.execute("INSERT INTO items VALUES (%s, %s)", (60, "held"))
        assert info.value.errno == ER_HELD
        reader = conn.cursor(prepared=True)
        reader.execute("SELECT name FROM items WHERE id = %s", (1,))
        assert reader.fetchall() == [("apple",)]

        conn.cmd_change_user(username="dave", password=gateway.passwords["dave"], database=SOURCE)

        # dave writes: the write login, no read-only flag, none of alice's session state.
        assert rows(conn, "SELECT @@session.tx_read_only, CURRENT_USER(), @qb_marker") == [
            (0, "qb_native@%", None)
        ]
        # alice's statements are gone, upstream and virtual alike (as on MySQL: 1243)
        with pytest.raises(mysql.connector.Error) as info:
            reader.execute("SELECT name FROM items WHERE id = %s", (2,))
        assert info.value.errno == 1243, info.value.msg
        with pytest.raises(mysql.connector.Error) as info:
            held.execute("INSERT INTO items VALUES (%s, %s)", (61, "x"))
        assert info.value.errno == 1243, info.value.msg
        try:
            cur = conn.cursor()
            cur.execute("INSERT INTO items VALUES (61, 'fig')")
            assert cur.rowcount == 1
            cur.close()
            assert gateway.rows("SELECT name FROM items WHERE id = 61") == [["fig"]]
        finally:
            gateway.root_sql("DELETE FROM items WHERE id = 61")

        conn.cmd_change_user(username="carol", password=gateway.passwords["carol"], database=SOURCE)
        assert rows(conn, "SELECT @@session.tx_read_only, CURRENT_USER()") == [(1, "qb_reader@%")]
        errno, message = errno_of(conn, "DELETE FROM items WHERE id = 1")
        assert errno == 1142, message
        assert "carol" in message
    finally:
        conn.close()
    assert gateway.count() == len(ITEMS)


def test_change_user_refused_keeps_the_session(gateway: Gateway, items_unchanged: None) -> None:
    """Wrong password (1045), no grant (1044), unknown source (1049): like MariaDB, the connection
    stays open as the previous user, with its session state."""
    conn = connector(gateway, "alice")
    try:
        rows(conn, "SET @qb_marker = 7")
        attempts = [
            ("dave", "not-the-password", SOURCE, 1045),
            ("nobody", "whatever", SOURCE, 1045),
            ("frank", gateway.passwords["frank"], SOURCE, 1044),
            ("carol", gateway.passwords["carol"], "no_such_source", 1049),
        ]
        for user, password, database, expected in attempts:
            with pytest.raises(mysql.connector.Error) as info:
                conn.cmd_change_user(username=user, password=password, database=database)
            assert info.value.errno == expected, (user, info.value.msg)
            assert rows(conn, "SELECT @qb_marker, @@session.tx_read_only") == [(7, 1)]
        errno, message = errno_of(conn, "DELETE FROM items WHERE id = 1")
        assert errno == ER_HELD, message  # still alice, still propose
    finally:
        conn.close()


def test_change_user_to_another_source(gateway: Gateway, items_unchanged: None) -> None:
    conn = connector(gateway, "dave")
    try:
        assert rows(conn, "SELECT @@session.tx_read_only") == [(0,)]
        conn.cmd_change_user(username="dave", password=gateway.passwords["dave"], database=OTHER_SOURCE)
        assert rows(conn, "SELECT @@session.tx_read_only") == [(1,)]  # read on other_my
        errno, message = errno_of(conn, "DELETE FROM items WHERE id = 1")
        assert errno == 1142, message
        assert OTHER_SOURCE in message
    finally:
        conn.close()


def test_change_user_auth_switch_and_wrong_answer(gateway: Gateway) -> None:
    """A COM_CHANGE_USER naming another plugin is switched to mysql_native_password with a fresh
    scramble (sequence ids 0, 1, 2, 3); a wrong answer to the switch is 1045 and the session
    goes on as before."""
    raw = RawMy(gateway)
    try:
        raw.login(gateway, "carol")
        for password, ok in (("wrong-password", False), (gateway.passwords["alice"], True)):
            raw.send(my.make_change_user("alice", b"\x01" * 32, SOURCE, auth_plugin="sha256_password"))
            seq, switch = raw.must_read()
            assert seq == 1
            request = my.parse_auth_switch_request(switch)
            assert request.plugin == "mysql_native_password"
            nonce = request.data.rstrip(b"\x00")
            assert len(nonce) == my.SCRAMBLE_LENGTH
            assert raw.hello is not None
            assert nonce != raw.hello.scramble
            raw.send(scramble_native(password, nonce), 2)
            seq, reply = raw.must_read()
            assert seq == 3
            if ok:
                assert reply[:1] == b"\x00", reply
            else:
                assert my.parse_err(reply).errno == 1045
            # still carol (read: denied) after the wrong answer; alice (propose: held) after the right one
            err = raw.query_one(b"DELETE FROM items WHERE id = 99")
            assert my.parse_err(err[0]).errno == (ER_HELD if ok else 1142)
    finally:
        raw.close()


# ------------------------------------------------------------------- EOF vs OK terminators


def _result_shape(payloads: list[bytes], deprecate: bool) -> list[str]:
    """Names for the packets of one text result: count, def, eof, row, end."""
    shape = ["count"]
    columns = payloads[0][0]
    shape += ["def"] * columns
    rest = payloads[1 + columns :]
    for payload in rest:
        if my.is_terminator(payload, deprecate):
            if deprecate:
                assert len(payload) >= 7  # an OK with the 0xFE header, not an EOF
                shape.append("ok_end")
            else:
                assert len(payload) == 5  # EOF: header, warnings, status
                shape.append("eof")
        else:
            shape.append("row")
    return shape


def test_terminators_follow_each_client_on_a_shared_pool(gateway: Gateway) -> None:
    """Pool `tiny_my` has one upstream connection. Clients with and without CLIENT_DEPRECATE_EOF
    take turns on it; each receives the terminators it negotiated, because QueryBase keys pooled
    connections by the capabilities that shape the response (the connection opened for the other
    kind of client is closed to make room), and reuses a connection only for the same kind."""
    sql = b"SELECT id, name FROM items WHERE id <= 3 ORDER BY id"

    def raw_session(deprecate: bool) -> tuple[list[str], bytes]:
        raw = RawMy(gateway)
        try:
            raw.login(
                gateway, "carol", extra=my.Capability.CLIENT_DEPRECATE_EOF if deprecate else 0, database=TINY
            )
            shape = _result_shape(raw.query_one(sql), deprecate)
            thread = raw.query_one(b"SELECT CONNECTION_ID()")
            return shape, thread[-2]  # the row, before the terminator
        finally:
            raw.send(my.make_command(my.Command.COM_QUIT))
            raw.close()

    def pymysql_session() -> int:
        conn = pymysql.connect(**gateway.connect_args("carol", TINY), ssl_disabled=True)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT id, name FROM items WHERE id <= 3 ORDER BY id")
            assert list(cur.fetchall()) == ITEMS[:3]
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchall()[0][0])

    plain = ["count", "def", "def", "eof", "row", "row", "row", "eof"]
    deprecated = ["count", "def", "def", "row", "row", "row", "ok_end"]
    first = pymysql_session()
    assert pymysql_session() == first  # the same kind of client reuses the pooled connection
    shape, thread_a = raw_session(deprecate=True)
    assert shape == deprecated
    shape, thread_b = raw_session(deprecate=True)
    assert shape == deprecated
    assert thread_a == thread_b
    after = pymysql_session()
    assert after != first  # the DEPRECATE_EOF connection was closed to make room, and back
    shape, thread_c = raw_session(deprecate=False)
    assert shape == plain
    assert thread_c != thread_a
    # the same pool still serves PyMySQL right away
    assert pymysql_session() > 0


# -------------------------------------------------------------------- COM_STMT_SEND_LONG_DATA


def _decoded(param: dict[str, Any]) -> Any:
    raw = base64.b64decode(param["value_b64"])
    return my.decode_binary_value(my.ColumnType(param["type"]), param["unsigned"], raw)


def test_held_prepared_write_keeps_long_data(gateway: Gateway, items_unchanged: None) -> None:
    """mysql-connector-python sends file-like parameters with COM_STMT_SEND_LONG_DATA (in chunks);
    the held request stores each whole value."""
    big = bytes(range(256)) * 12_000 + b"tail"  # ~3 MiB, several long-data packets
    small = "short ünïcode".encode()
    before = gateway.last_request_id()
    conn = connector(gateway, "alice")
    try:
        cur = conn.cursor(prepared=True)
        with pytest.raises(mysql.connector.Error) as info:
            cur.execute(
                "INSERT INTO items_copy (id, name) VALUES (%s, CONCAT(%s, LENGTH(%s)))",
                (70, io.BytesIO(small), io.BytesIO(big)),
            )
        assert info.value.errno == ER_HELD, info.value.msg
        # A read with long data goes upstream as it came.
        reader = conn.cursor(prepared=True)
        reader.execute("SELECT LENGTH(%s)", (io.BytesIO(big),))
        assert reader.fetchall() == [(len(big),)]
    finally:
        conn.close()
    new = gateway.new_requests(before)
    assert len(new) == 1
    params = new[0]["parameters"]
    assert [_decoded(p) for p in params] == [70, small, big]


def test_long_data_errors_and_reset_on_a_virtual_statement(gateway: Gateway, items_unchanged: None) -> None:
    raw = RawMy(gateway)
    before = gateway.last_request_id()
    try:
        raw.login(gateway, "alice")
        raw.send(my.make_command(my.Command.COM_STMT_PREPARE, b"INSERT INTO items_copy VALUES (?, ?)"))
        ok = my.parse_stmt_prepare_ok(raw.must_read()[1])
        assert ok.num_params == 2
        for _ in range(3):  # two parameter definitions, EOF
            raw.must_read()
        stmt = ok.statement_id.to_bytes(4, "little")
        types = bytes([my.ColumnType.MYSQL_TYPE_LONG, 0, my.ColumnType.MYSQL_TYPE_BLOB, 0])

        def long_data(index: int, chunk: bytes) -> None:
            raw.send(
                my.make_command(
                    my.Command.COM_STMT_SEND_LONG_DATA, stmt + index.to_bytes(2, "little") + chunk
                )
            )

        def execute(values: bytes) -> bytes:
            raw.send(
                my.make_command(
                    my.Command.COM_STMT_EXECUTE,
                    stmt + b"\x00" + (1).to_bytes(4, "little") + b"\x00\x01" + types + values,
                )
            )
            return raw.must_read()[1]

        # long data for a parameter the statement does not have: reported at the execute
        long_data(5, b"nope")
        err = my.parse_err(execute((1).to_bytes(4, "little") + b"\x03abc"))
        assert err.errno == 1210, err.message
        # chunks accumulate; the execute consumes them
        long_data(1, b"ab")
        long_data(1, b"cd")
        assert my.parse_err(execute((2).to_bytes(4, "little"))).errno == ER_HELD
        # COM_STMT_RESET drops long data sent so far
        long_data(1, b"dropped")
        raw.send(my.make_command(my.Command.COM_STMT_RESET, stmt))
        assert raw.must_read()[1][:1] == b"\x00"
        assert my.parse_err(execute((3).to_bytes(4, "little") + b"\x06inline")).errno == ER_HELD
        # a malformed execute is refused, not held with missing values
        assert my.parse_err(execute(b"\x01")).errno == 1210
        assert raw.query_one(b"SELECT 1")[-1][:1] == b"\xfe"
    finally:
        raw.close()
    held = gateway.new_requests(before)
    assert [[_decoded(p) for p in r["parameters"]] for r in held] == [[2, b"abcd"], [3, b"inline"]]

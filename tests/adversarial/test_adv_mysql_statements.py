"""Prepared-statement sequences no driver sends, through the MySQL listener (issue 10, "Build").

COM_STMT_PREPARE/EXECUTE/CLOSE/FETCH with reused and foreign statement ids, MariaDB's "last
prepared" id, cursor flags on a held statement, COM_SET_OPTION toggling multi-statements mid
session, COM_CHANGE_USER between a PREPARE and its EXECUTE, and SQL PREPARE names reused in
another case. The source's read login here can write on its own: each test checks, as root, that
the database is unchanged for `read` and `propose` users. Most of these guard rules that held
before issue 10's changes too (they pass on the code before d649c69): regression tests; the
case-insensitive SQL statement names fail there (`EXECUTE S` of a prepared `s` was refused).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from proxy.upstream.mysql import scramble_caching_sha2
from proxy.wire.mysql import protocol as my
from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ADV_SOURCE,
    ITEMS,
    Gateway,
    RawMy,
    adversarial_gateway,
    connect_raw,
    raw_error,
    results,
    setup_items,
)

pytestmark = pytest.mark.integration

ER_UNKNOWN_STMT = 1243
LAST_PREPARED = 0xFFFFFFFF


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with adversarial_gateway(mariadb_server, tmp_path_factory.mktemp("adv-stmt") / "home") as gw:
        yield gw


@pytest.fixture(autouse=True)
def items(gateway: Gateway) -> Iterator[None]:
    setup_items(gateway.server)
    yield
    assert gateway.count("qbtest.items") == len(ITEMS), "the database changed"


def prepare(raw: RawMy, sql: bytes) -> tuple[int, int]:
    """(errno, statement id) of a COM_STMT_PREPARE; the definitions that follow are read."""
    raw.send(b"\x16" + sql)
    first = raw.must_read()[1]
    if first[:1] == b"\xff":
        return raw_error(first)[0], -1
    ok = my.parse_stmt_prepare_ok(first)
    for count in (ok.num_params, ok.num_columns):
        for _ in range(count):
            raw.must_read()
        if count:
            raw.must_read()  # EOF
    return 0, ok.statement_id


def execute(raw: RawMy, statement_id: int, *, flags: int = 0, param: int | None = None) -> int:
    """errno of a COM_STMT_EXECUTE (0: it ran), its whole answer read."""
    body = struct.pack("<IBI", statement_id, flags, 1)
    if param is not None:
        body += b"\x00" + b"\x01" + bytes([my.ColumnType.MYSQL_TYPE_LONG, 0]) + struct.pack("<i", param)
    raw.send(b"\x17" + body)
    return raw_error(raw.read_result()[-1])[0]


def test_change_user_between_prepare_and_execute(gateway: Gateway) -> None:
    """Rule: COM_CHANGE_USER forgets the statements prepared before it (as MySQL does): a write
    dave prepared on the write login cannot be executed by carol after changing to her."""
    raw = connect_raw(gateway, "dave")
    try:
        errno, statement_id = prepare(raw, b"DELETE FROM items WHERE id = ?")
        assert errno == 0
        assert raw.hello is not None
        answer = scramble_caching_sha2(gateway.passwords["carol"], raw.hello.scramble)
        raw.send(my.make_change_user("carol", answer, ADV_SOURCE, auth_plugin="caching_sha2_password"))
        reply = raw.must_read()[1]
        if reply[:1] == b"\x01":
            reply = raw.must_read()[1]
        assert reply[:1] == b"\x00", reply
        assert execute(raw, statement_id, param=1) == ER_UNKNOWN_STMT
        assert execute(raw, LAST_PREPARED, param=1) == ER_UNKNOWN_STMT
        assert raw_error(results(raw, b"DELETE FROM items WHERE id = 1")[-1][-1])[0] == 1142
    finally:
        raw.close()


def test_foreign_and_reused_statement_ids(gateway: Gateway) -> None:
    """Rule: a statement id means what this session prepared under it, nothing else: another
    session's ids (upstream or QueryBase's virtual ones) and closed ids are unknown (1243); MariaDB's
    "last prepared" id after a held PREPARE holds that statement, it never reaches the upstream."""
    alice, carol = connect_raw(gateway, "alice"), connect_raw(gateway, "carol")
    try:
        errno, virtual = prepare(alice, b"DELETE FROM items WHERE id = ?")
        assert errno == 0
        assert virtual >= 0x7F000000  # held at execute: QueryBase's own id
        errno, read_id = prepare(carol, b"SELECT name FROM items WHERE id = ?")
        assert errno == 0
        assert execute(carol, virtual, param=1) == ER_UNKNOWN_STMT
        assert execute(alice, read_id, param=1) in (ER_UNKNOWN_STMT, 0)  # alice's own upstream id space
        errno, mine = prepare(alice, b"SELECT 1")
        alice.send(b"\x19" + struct.pack("<I", mine))  # COM_STMT_CLOSE: no answer
        errno, _ = prepare(alice, b"UPDATE items SET name = 'x' WHERE id = ?")
        assert execute(alice, mine) == ER_UNKNOWN_STMT
        assert execute(alice, LAST_PREPARED, param=2) == 9001
        assert execute(alice, virtual, param=3) == 9001
    finally:
        alice.close()
        carol.close()


def test_cursor_and_fetch_on_a_held_statement(gateway: Gateway) -> None:
    """Rule: a held statement runs nowhere, cursor or not: EXECUTE with CURSOR_TYPE_READ_ONLY is
    held, and COM_STMT_FETCH on it is refused."""
    raw = connect_raw(gateway, "alice")
    try:
        errno, statement_id = prepare(raw, b"DELETE FROM items WHERE id > ?")
        assert errno == 0
        assert execute(raw, statement_id, flags=int(my.CursorType.CURSOR_TYPE_READ_ONLY), param=0) == 9001
        raw.send(b"\x1c" + struct.pack("<II", statement_id, 10))
        assert raw_error(raw.must_read()[1])[0] == 1421
    finally:
        raw.close()


@pytest.mark.parametrize("user", ["carol", "alice"])
def test_set_option_toggles_multi_statements(gateway: Gateway, user: str) -> None:
    """Rule: a message with several statements gets the strictest verdict whether multi-statements
    were negotiated at login or switched on later by COM_SET_OPTION."""
    raw = connect_raw(gateway, user, multi=False)
    try:
        for option in (0, 1, 0):  # on, off, on
            raw.send(b"\x1b" + struct.pack("<H", option))
            assert raw_error(raw.must_read()[1]) == (0, "")
            errno, _ = raw_error(results(raw, b"SELECT 1; DELETE FROM items")[-1][-1])
            assert errno in (1142, 9001, 1064), errno
    finally:
        raw.close()


@pytest.mark.parametrize("user", ["carol", "alice"])
def test_sql_prepare_names_in_another_case(gateway: Gateway, user: str) -> None:
    """Rule: SQL statement names are case-insensitive, as on the server: re-preparing `S` after `s`
    replaces the same statement, and EXECUTE of either spelling is decided on what was prepared."""
    raw = connect_raw(gateway, user)
    try:
        assert raw_error(results(raw, b"PREPARE s FROM 'SELECT 1'")[-1][-1]) == (0, "")
        errno, _ = raw_error(results(raw, b"PREPARE S FROM 'DELETE FROM items'")[-1][-1])
        assert errno == 1142, errno  # a prepared write cannot be held: denied
        assert raw_error(results(raw, b"EXECUTE S")[-1][-1]) == (0, "")  # still the SELECT
        errno, _ = raw_error(results(raw, b"PREPARE s FROM 'SET SESSION TRANSACTION READ WRITE'")[-1][-1])
        assert errno == 1227, errno
    finally:
        raw.close()

"""Statement text is bytes (issue 10, "bytes that are not UTF-8", MySQL side).

MySQLdb, older PyMySQL, mysql-connector-python (without prepared statements) and the mariadb client
send `bytes` parameters inside COM_QUERY as `_binary'…'` / `'…'` literals holding the raw bytes,
which are not UTF-8 (the PyMySQL installed here sends `_binary X'…'`, which is ASCII; both kinds
are tested). QueryBase classifies such text
with the invalid bytes standing in as U+FFFD (they are data inside a literal), forwards the exact
bytes, and holds them exactly (`statement_b64` in the request's session facts) so that an approved
request runs them byte for byte. Real PyMySQL clients against a real `querybase serve`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest

from tests.support.changes import Api, held_id
from tests.support.localdb import MariaDBServer
from tests.support.myfront import SOURCE, Gateway, RawMy, raw_error, results, running_gateway, setup_items

pytestmark = pytest.mark.integration

ALL_BYTES = bytes(range(256))
INSERT = "INSERT INTO blobs VALUES (%s, %s)"


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with running_gateway(
        mariadb_server, tmp_path_factory.mktemp("adv-bytes") / "home", tls_mode="disable"
    ) as gw:
        yield gw


@pytest.fixture
def blobs(gateway: Gateway) -> None:
    gateway.root_sql("DROP TABLE IF EXISTS blobs; CREATE TABLE blobs (id int PRIMARY KEY, b blob)")


def connect(gw: Gateway, user: str) -> pymysql.Connection:
    return pymysql.connect(**gw.connect_args(user, SOURCE), autocommit=True, binary_prefix=True)


def connector(gw: Gateway, user: str) -> Any:
    """mysql-connector-python, pure: bytes parameters go into the text as raw bytes."""
    return mysql.connector.connect(
        host=gw.host,
        port=gw.port,
        user=user,
        password=gw.passwords[user],
        database=SOURCE,
        use_pure=True,
        autocommit=True,
        ssl_disabled=True,
    )


def binary_literal(data: bytes) -> bytes:
    """`_binary'…'` with the raw bytes, escaped as MySQLdb and mysql_real_escape_string do."""
    escapes = {0: b"\\0", 0x27: b"\\'", 0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x1A: b"\\Z"}
    return b"_binary'" + b"".join(escapes.get(byte, bytes([byte])) for byte in data) + b"'"


def stored(gw: Gateway, row: int) -> bytes:
    hexed = gw.rows(f"SELECT HEX(b) FROM qbtest.blobs WHERE id = {row}")
    assert hexed, f"row {row} is missing"
    return bytes.fromhex(hexed[0][0])


def test_write_user_inserts_and_reads_back_every_byte(gateway: Gateway, blobs: None) -> None:
    """Rule: non-UTF-8 literals are forwarded byte for byte (DESIGN.md §3 binding rules): all 256
    byte values, in one value and one per row, without prepared statements, for a `write` user."""
    with connect(gateway, "dave") as conn, conn.cursor() as cur:
        cur.execute(INSERT, (1, ALL_BYTES))
        cur.executemany(INSERT, [(100 + b, bytes([b])) for b in range(256)])
        cur.execute("SELECT b FROM blobs WHERE id = %s", (1,))
        assert cur.fetchone() == (ALL_BYTES,)
        cur.execute("SELECT b FROM blobs WHERE id >= 100 ORDER BY id")
        assert [row[0] for row in cur.fetchall()] == [bytes([b]) for b in range(256)]
    assert stored(gateway, 1) == ALL_BYTES


def test_write_user_sends_raw_bytes(gateway: Gateway, blobs: None) -> None:
    """Rule: raw non-UTF-8 bytes in COM_QUERY are forwarded byte for byte (mysql-connector-python
    and a hand-built `_binary'…'` as MySQLdb sends it), and read back exactly."""
    conn = connector(gateway, "dave")
    try:
        cur = conn.cursor()
        cur.execute(INSERT, (2, ALL_BYTES))
        cur.execute("SELECT b FROM blobs WHERE id = 2")
        assert cur.fetchall() == [(bytearray(ALL_BYTES),)]
    finally:
        conn.close()
    raw = RawMy(gateway)
    try:
        raw.login(gateway, "dave")
        answer = results(raw, b"INSERT INTO blobs VALUES (3, " + binary_literal(ALL_BYTES) + b")")
        assert raw_error(answer[-1][-1]) == (0, "")
    finally:
        raw.close()
    assert stored(gateway, 2) == ALL_BYTES
    assert stored(gateway, 3) == ALL_BYTES


def test_read_user_reads_binary_literals(gateway: Gateway) -> None:
    """Rule: a read whose text carries raw bytes is classified (as a read) and relayed exactly."""
    with connect(gateway, "carol") as conn, conn.cursor() as cur:
        cur.execute("SELECT %s, LENGTH(%s)", (ALL_BYTES, ALL_BYTES))
        assert cur.fetchone() == (ALL_BYTES, 256)
        with pytest.raises(pymysql.MySQLError) as info:
            cur.execute(INSERT, (2, ALL_BYTES))
        assert info.value.args[0] == 1142, info.value.args  # denied by QueryBase, not the server
    conn = connector(gateway, "carol")
    try:
        cur = conn.cursor()
        cur.execute("SELECT %s, LENGTH(%s)", (ALL_BYTES, ALL_BYTES))
        assert cur.fetchall() == [(bytearray(ALL_BYTES), 256)]
        with pytest.raises(mysql.connector.Error) as refused:
            cur.execute(INSERT, (2, ALL_BYTES))
        assert refused.value.errno == 1142
    finally:
        conn.close()


def test_held_request_keeps_and_runs_the_exact_bytes(gateway: Gateway, blobs: None) -> None:
    """Rule: a held statement is stored byte for byte and, once approved, runs exactly as sent; the
    text shown to reviewers marks the undecodable bytes with U+FFFD."""
    before = gateway.last_request_id()
    sent = b"INSERT INTO blobs VALUES (7, " + binary_literal(ALL_BYTES) + b")"
    raw = RawMy(gateway)
    try:
        raw.login(gateway, "alice")
        errno, message = raw_error(results(raw, sent)[-1][-1])
        assert errno == 9001, message
        request_id = held_id(message)
        assert raw_error(results(raw, b"SELECT 1")[-1][-1]) == (0, "")  # the session goes on
    finally:
        raw.close()
    assert gateway.count("qbtest.blobs") == 0
    (held,) = gateway.new_requests(before)
    assert held["id"] == request_id
    assert base64.b64decode(held["session_facts"]["statement_b64"]) == sent
    assert "\ufffd" in held["statement_text"]
    assert held["kind"] == "write"
    approver = Api(gateway.serve.admin_url, "bob", gateway.passwords["bob"])
    approver.ok("POST", f"/requests/{request_id}/approve")
    final = approver.wait_final(request_id)
    assert final["status"] == "succeeded", final
    assert stored(gateway, 7) == ALL_BYTES

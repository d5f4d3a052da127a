"""Every MySQL command byte through the MySQL listener (issue 10, class 7).

Each byte 0x00-0xFF gets an explicit decision: privileged and DDL commands (COM_REFRESH,
COM_SHUTDOWN, COM_DEBUG, COM_CREATE_DB, COM_DROP_DB) are relayed only for `write`; replication
and server-internal commands never; bytes that are no command are refused. The source's read login
here could drop and create schemas on its own, so only QueryBase stands in the way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from proxy.wire.mysql import protocol as my
from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ITEMS,
    VICTIM_SCHEMA,
    Gateway,
    RawMy,
    adversarial_gateway,
    connect_raw,
    raw_error,
    results,
    setup_items,
)

pytestmark = pytest.mark.integration

NEW_SCHEMA = "qbvictim_new"
# Commands that need a body of their own to mean anything (the rest get a schema name or nothing).
BODIES = {
    my.Command.COM_INIT_DB: b"qbtest",
    my.Command.COM_QUERY: b"SELECT 1",
    my.Command.COM_CREATE_DB: NEW_SCHEMA.encode(),
    my.Command.COM_DROP_DB: VICTIM_SCHEMA.encode(),
    my.Command.COM_FIELD_LIST: b"items\x00",
    my.Command.COM_REFRESH: b"\x01",
    my.Command.COM_SHUTDOWN: b"\x00",
    my.Command.COM_SET_OPTION: b"\x00\x00",
    my.Command.COM_STMT_PREPARE: b"SELECT 1",
    my.Command.COM_STMT_EXECUTE: b"\x00" * 9,
    my.Command.COM_STMT_SEND_LONG_DATA: b"\x00" * 6 + b"data",
    my.Command.COM_STMT_CLOSE: b"\x00" * 4,
    my.Command.COM_STMT_RESET: b"\x00" * 4,
    my.Command.COM_STMT_FETCH: b"\x00" * 8,
    my.Command.COM_BINLOG_DUMP: struct.pack("<IHI", 4, 0, 1) + b"mysql-bin.000001",
    my.Command.COM_REGISTER_SLAVE: struct.pack("<I", 77) + b"\x00\x00\x00" + b"\x00\x00" + b"\x00" * 8,
}
SKIPPED = {my.Command.COM_QUIT, my.Command.COM_CHANGE_USER, my.Command.COM_PROCESS_KILL}
REFUSED_BELOW_WRITE = {
    my.Command.COM_CREATE_DB,
    my.Command.COM_DROP_DB,
    my.Command.COM_REFRESH,
    my.Command.COM_SHUTDOWN,
    my.Command.COM_DEBUG,
    my.Command.COM_PROCESS_INFO,  # other users' statements: they share the read login
}
NEVER = {
    my.Command.COM_BINLOG_DUMP,
    my.Command.COM_BINLOG_DUMP_GTID,
    my.Command.COM_REGISTER_SLAVE,
    my.Command.COM_TABLE_DUMP,
    my.Command.COM_CLONE,
    my.Command.COM_SUBSCRIBE_GROUP_REPLICATION_STREAM,
    my.Command.COM_STMT_BULK_EXECUTE,
    my.Command.COM_SLEEP,
    my.Command.COM_CONNECT,
    my.Command.COM_TIME,
    my.Command.COM_DELAYED_INSERT,
    my.Command.COM_CONNECT_OUT,
    my.Command.COM_DAEMON,
}


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with adversarial_gateway(mariadb_server, tmp_path_factory.mktemp("adv-cmd") / "home") as gw:
        yield gw


def schemas(gw: Gateway) -> set[str]:
    return {row[0] for row in gw.rows("SHOW DATABASES")}


def answer(raw: RawMy, command: int, body: bytes) -> bytes | None:
    """The first packet answering one command, or None when none came within a second."""
    raw.send(bytes([command]) + body)
    raw.sock.settimeout(1.0)
    try:
        got = raw.read()
    except TimeoutError:
        return None
    finally:
        raw.sock.settimeout(10.0)
    assert got is not None, f"the session ended after command byte 0x{command:02x}"
    return got[1]


def drain(raw: RawMy, command: my.Command | None, first: bytes) -> None:
    """Read the rest of a successful answer that has more than one packet."""
    if first[:1] == b"\xff" or command is my.Command.COM_STATISTICS:
        return
    if command is my.Command.COM_STMT_PREPARE:
        ok = my.parse_stmt_prepare_ok(first)
        for count in (ok.num_params, ok.num_columns):
            for _ in range(count):
                raw.must_read()
            if count:
                raw.must_read()  # EOF
        return
    if command is my.Command.COM_FIELD_LIST:
        while not my.is_terminator(raw.must_read()[1], False):
            pass
        return
    if first[:1] not in (b"\x00", b"\xfe"):  # a result set: column count first
        columns = my.read_lenenc_int(first)[0] or 0
        for _ in range(columns + 1):
            raw.must_read()
        while not my.is_terminator(raw.must_read()[1], False):
            pass


@pytest.mark.parametrize("user", ["carol", "alice"])
def test_every_command_byte_is_decided(gateway: Gateway, user: str) -> None:
    """Rule: every command byte is decided explicitly (DESIGN.md §3, issue class 7): for `read` and
    `propose` users the privileged and DDL commands are refused (1227), replication and internal
    commands are never relayed (1235 / 1047), unknown bytes are refused (1047), and the session
    stays usable; the database (checked as root) is unchanged."""
    gateway.root_sql(f"CREATE DATABASE IF NOT EXISTS {VICTIM_SCHEMA}")
    before = schemas(gateway)
    raw = connect_raw(gateway, user)
    seen: dict[int, tuple[int, str]] = {}
    try:
        for byte in range(256):
            known = byte in my.Command._value2member_map_
            command = my.Command(byte) if known else None
            if command in SKIPPED:
                continue
            body = BODIES.get(command, b"") if command is not None else b""
            payload = answer(raw, byte, body)
            if payload is not None:
                drain(raw, command, payload)
            seen[byte] = raw_error(payload) if payload is not None else (-1, "no answer")
            assert raw_error(results(raw, b"SELECT 1")[-1][-1]) == (0, ""), f"unusable after 0x{byte:02x}"
    finally:
        raw.close()
    for command in REFUSED_BELOW_WRITE:
        assert seen[command][0] == 1227, (command.name, seen[command])
    for command in NEVER:
        assert seen[command][0] in (1047, 1235), (command.name, seen[command])
    unknown = [byte for byte in range(256) if byte not in my.Command._value2member_map_]
    assert all(seen[byte][0] == 1047 for byte in unknown), {b: seen[b] for b in unknown if seen[b][0] != 1047}
    assert schemas(gateway) == before
    assert gateway.count("qbtest.items") == len(ITEMS)


def test_write_user_commands_are_relayed(gateway: Gateway) -> None:
    """Rule: the same command bytes are relayed when the policy allows them (`write`): the answers
    are the server's own (MariaDB no longer knows COM_CREATE_DB/COM_DROP_DB; qb_adv lacks RELOAD),
    never QueryBase's refusal."""
    raw = connect_raw(gateway, "dave")
    try:
        for command, body in (
            (my.Command.COM_CREATE_DB, NEW_SCHEMA.encode()),
            (my.Command.COM_DROP_DB, VICTIM_SCHEMA.encode()),
            (my.Command.COM_REFRESH, b"\x01"),
        ):
            errno, message = raw_error(answer(raw, command, body) or b"")
            assert not message.startswith("permission denied"), (command.name, errno, message)
    finally:
        raw.close()

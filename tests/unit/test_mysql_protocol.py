"""MySQL client/server codec (proxy.wire.mysql.protocol): framing, login packets, commands, result scanning.

Expected bytes are built here by hand from the packet layouts in
https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html, or by PyMySQL (an
independent client implementation), rather than with the codec's own `make_*`, wherever the codec
would otherwise be checking itself. The MariaDB handshake was captured once from the MariaDB 10.11
server on the development machine; no test connects to anything.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql import _auth
from pymysql.charset import charset_by_name

from proxy.auth.verifiers import (
    sha1_sha1,
    sha256_sha256,
    verify_caching_sha2_scramble,
    verify_native_scramble,
)
from proxy.errors import QueryBaseError
from proxy.wire.mysql.protocol import (
    DEFAULT_MAX_PAYLOAD,
    MAX_PACKET_PAYLOAD,
    SERVER_CAPABILITIES,
    AuthSwitchRequest,
    Capability,
    ColumnType,
    Command,
    CursorType,
    EofPacket,
    ErrPacket,
    HandshakeResponse41,
    HandshakeV10,
    OkPacket,
    PacketKind,
    PacketReader,
    PacketsOutOfOrder,
    PacketTooLarge,
    ProtocolViolation,
    ResultScanner,
    ScanEvent,
    ServerStatus,
    SSLRequest,
    StmtPrepareOk,
    UnknownCommand,
    check_seq,
    classify_response,
    decode_binary_value,
    is_terminator,
    make_auth_more_data,
    make_auth_switch_request,
    make_command,
    make_eof,
    make_err,
    make_handshake_response41,
    make_handshake_v10,
    make_lenenc_int,
    make_lenenc_str,
    make_nul_str,
    make_ok,
    make_packets,
    make_query,
    make_ssl_request,
    make_stmt_prepare_ok,
    next_seq,
    parse_auth_more_data,
    parse_auth_switch_request,
    parse_change_user,
    parse_command,
    parse_eof,
    parse_err,
    parse_field_list,
    parse_handshake_response41,
    parse_handshake_v10,
    parse_init_db,
    parse_ok,
    parse_process_kill,
    parse_query,
    parse_set_option,
    parse_statement_id,
    parse_stmt_execute,
    parse_stmt_fetch,
    parse_stmt_prepare,
    parse_stmt_prepare_ok,
    parse_stmt_send_long_data,
    read_lenenc_int,
    read_lenenc_str,
    read_nul_str,
    server_capabilities,
    terminator_status,
)

AUTOCOMMIT = ServerStatus.SERVER_STATUS_AUTOCOMMIT
IN_TRANS = ServerStatus.SERVER_STATUS_IN_TRANS
MORE = ServerStatus.SERVER_MORE_RESULTS_EXISTS
CURSOR = ServerStatus.SERVER_STATUS_CURSOR_EXISTS

# ------------------------------------------------------------------ hand-written wire builders


def u16(n: int) -> bytes:
    return struct.pack("<H", n)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def lenenc(n: int) -> bytes:
    """Length-encoded integer, straight from the docs' table."""
    if n < 251:
        return bytes([n])
    if n < 2**16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 2**24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lstr(data: bytes) -> bytes:
    return lenenc(len(data)) + data


def packet(payload: bytes, seq: int) -> bytes:
    """3-byte little-endian length, sequence id, payload (payload < 16 MiB)."""
    assert len(payload) < 0xFFFFFF
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def ok(affected: int = 0, insert_id: int = 0, status: int = 2, warnings: int = 0, header: int = 0) -> bytes:
    return bytes([header]) + lenenc(affected) + lenenc(insert_id) + u16(status) + u16(warnings)


def eof(status: int = 2, warnings: int = 0) -> bytes:
    return b"\xfe" + u16(warnings) + u16(status)


def err(errno: int, state: str, message: str) -> bytes:
    return b"\xff" + u16(errno) + b"#" + state.encode() + message.encode()


def coldef(name: str, type_code: int = 253) -> bytes:
    """Protocol::ColumnDefinition41."""
    return (
        lstr(b"def")
        + lstr(b"shop")
        + lstr(b"orders")
        + lstr(b"orders")
        + lstr(name.encode())
        + lstr(name.encode())
        + b"\x0c"
        + u16(45)
        + u32(255)
        + bytes([type_code])
        + u16(0)
        + b"\x00"
        + b"\x00\x00"
    )


def text_row(*values: bytes | None) -> bytes:
    return b"".join(b"\xfb" if v is None else lstr(v) for v in values)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def cut_points(size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=1, max_value=max(1, size - 1)), max_size=40)


# ---------------------------------------------------------------------------------- framing

# A login-and-query exchange as one server→client stream (payloads and their sequence ids).
STREAM_PAYLOADS: list[tuple[int, bytes]] = [
    (0, b"\x0a" + b"x" * 60),
    (2, ok()),
    (1, b"\x02"),
    (2, coldef("id")),
    (3, coldef("note")),
    (4, eof()),
    (5, text_row(b"1", b"first")),
    (6, text_row(b"2", None)),
    (7, b""),  # an empty payload is a valid packet
    (8, eof(status=2)),
]
STREAM = b"".join(packet(p, s) for s, p in STREAM_PAYLOADS)


def read_all(chunks: list[bytes], reader: PacketReader | None = None) -> list[tuple[int, bytes]]:
    reader = reader or PacketReader()
    out: list[tuple[int, bytes]] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (found := reader.next()) is not None:
            out.append(found)
    assert reader.buffered == 0
    return out


def test_stream_fed_whole() -> None:
    assert read_all([STREAM]) == STREAM_PAYLOADS


def test_stream_byte_by_byte() -> None:
    assert read_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM_PAYLOADS


@settings(max_examples=300, deadline=None)
@given(cuts=cut_points(len(STREAM)))
def test_stream_random_splits(cuts: list[int]) -> None:
    assert read_all(split(STREAM, cuts)) == STREAM_PAYLOADS


def test_reader_waits_for_a_whole_packet() -> None:
    reader = PacketReader()
    reader.feed(b"\x05\x00\x00")
    assert reader.next() is None
    reader.feed(b"\x00abcd")
    assert reader.next() is None
    assert reader.buffered == 8
    reader.feed(b"e")
    assert reader.next() == (0, b"abcde")
    assert reader.last_seq == 0


def test_make_packets_small_matches_hand_framing() -> None:
    assert make_packets(b"\x03SELECT 1", 0) == (b"\x09\x00\x00\x00\x03SELECT 1", 1)
    assert make_packets(b"", 7) == (b"\x00\x00\x00\x07", 8)
    assert make_packets(b"x", 255) == (b"\x01\x00\x00\xffx", 0)


def test_sequence_helpers() -> None:
    assert next_seq(0) == 1
    assert next_seq(255) == 0
    check_seq(3, 3)
    with pytest.raises(PacketsOutOfOrder) as info:
        check_seq(4, 3)
    assert info.value.mysql_errno == 1156
    assert isinstance(info.value, ProtocolViolation)


@pytest.mark.parametrize(
    ("size", "packet_sizes"),
    [
        (MAX_PACKET_PAYLOAD - 1, [MAX_PACKET_PAYLOAD - 1]),
        (MAX_PACKET_PAYLOAD, [MAX_PACKET_PAYLOAD, 0]),
        (MAX_PACKET_PAYLOAD + 1, [MAX_PACKET_PAYLOAD, 1]),
        (2 * MAX_PACKET_PAYLOAD, [MAX_PACKET_PAYLOAD, MAX_PACKET_PAYLOAD, 0]),
    ],
)
def test_16mib_split_and_reassembly(size: int, packet_sizes: list[int]) -> None:
    payload = (b"0123456789abcdef" * (size // 16 + 1))[: size - 1] + b"!"
    wire, after = make_packets(payload, 254)
    # Expected framing, by hand: full packets of 0xFFFFFF then a shorter (maybe empty) one.
    expected, pos, seq = [], 0, 254
    for n in packet_sizes:
        expected.append(struct.pack("<I", n)[:3] + bytes([seq]) + payload[pos : pos + n])
        pos, seq = pos + n, (seq + 1) % 256
    assert wire == b"".join(expected)
    assert after == seq
    # Reassembled whole, and in uneven chunks that cut headers.
    assert read_all([wire]) == [(254, payload)]
    chunks = [wire[i : i + 5_000_003] for i in range(0, len(wire), 5_000_003)]
    reader = PacketReader()
    assert read_all(chunks, reader) == [(254, payload)]
    assert reader.last_seq == (after - 1) % 256


def test_reassembly_followed_by_another_packet() -> None:
    big = b"z" * MAX_PACKET_PAYLOAD
    wire = make_packets(big, 0)[0] + packet(b"next", 2)
    assert read_all([wire]) == [(0, big), (2, b"next")]


def test_continuation_with_wrong_sequence_id() -> None:
    wire = b"\xff\xff\xff\x00" + b"a" * MAX_PACKET_PAYLOAD + b"\x01\x00\x00\x05b"
    reader = PacketReader()
    reader.feed(wire)
    with pytest.raises(PacketsOutOfOrder):
        reader.next()


def test_max_payload_refused_from_the_header() -> None:
    reader = PacketReader(max_payload=100)
    reader.feed(b"\x65\x00\x00\x00")  # 101 bytes announced: refused before the body arrives
    with pytest.raises(PacketTooLarge) as info:
        reader.next()
    assert info.value.mysql_errno == 1153
    ok_reader = PacketReader(max_payload=100)
    assert read_all([packet(b"a" * 100, 0)], ok_reader) == [(0, b"a" * 100)]


def test_max_payload_counts_reassembled_packets() -> None:
    reader = PacketReader(max_payload=MAX_PACKET_PAYLOAD + 5)
    reader.feed(b"\xff\xff\xff\x00" + b"a" * MAX_PACKET_PAYLOAD + b"\x06\x00\x00\x01")
    with pytest.raises(PacketTooLarge):
        reader.next()


def test_default_max_payload_is_64_mib() -> None:
    assert DEFAULT_MAX_PAYLOAD == 64 * 1024 * 1024


# ------------------------------------------------------------------------- basic types


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"\x00"),
        (250, b"\xfa"),
        (251, b"\xfc\xfb\x00"),
        (0xFFFF, b"\xfc\xff\xff"),
        (0x10000, b"\xfd\x00\x00\x01"),
        (0xFFFFFF, b"\xfd\xff\xff\xff"),
        (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
        (2**64 - 1, b"\xfe" + b"\xff" * 8),
    ],
)
def test_lenenc_int_boundaries(value: int, wire: bytes) -> None:
    assert make_lenenc_int(value) == wire
    assert read_lenenc_int(wire + b"tail") == (value, len(wire))
    assert read_lenenc_int(b"xx" + wire, 2) == (value, 2 + len(wire))


@settings(max_examples=300, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**64 - 1))
def test_lenenc_int_round_trip(value: int) -> None:
    assert make_lenenc_int(value) == lenenc(value)
    assert read_lenenc_int(lenenc(value)) == (value, len(lenenc(value)))


def test_lenenc_special_and_malformed() -> None:
    assert read_lenenc_int(b"\xfb") == (None, 1)
    assert read_lenenc_str(b"\xfb") == (None, 1)
    for bad in (b"", b"\xff", b"\xfc\x01", b"\xfd\x01\x02", b"\xfe\x01"):
        with pytest.raises(ProtocolViolation):
            read_lenenc_int(bad)
    with pytest.raises(ProtocolViolation):
        read_lenenc_str(b"\x05abc")
    for bad_value in (-1, 2**64):
        with pytest.raises(ValueError, match="length-encoded"):
            make_lenenc_int(bad_value)


def test_strings() -> None:
    text = b"x" * 300
    assert make_lenenc_str(text) == b"\xfc\x2c\x01" + text
    assert read_lenenc_str(b"\xfc\x2c\x01" + text + b"!") == (text, 303)
    assert make_nul_str(b"abc") == b"abc\x00"
    assert read_nul_str(b"abc\x00def\x00", 4) == (b"def", 8)
    with pytest.raises(ProtocolViolation):
        read_nul_str(b"abc")
    with pytest.raises(ValueError, match="NUL"):
        make_nul_str(b"a\x00b")


# ------------------------------------------------------------------------------- handshake

# First packet from MariaDB 10.11 (Debian 12), captured with a raw socket on 127.0.0.1:3306.
MARIADB_HANDSHAKE = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000a000000344645"
    "644b28272900fef72d0200ff81150000000000001d000000387b2955527a322668586368006d7973716c5f6e61"
    "746976655f70617373776f726400"
)


def test_real_mariadb_handshake() -> None:
    [(seq, payload)] = read_all([MARIADB_HANDSHAKE])
    assert seq == 0
    hs = parse_handshake_v10(payload)
    assert hs.server_version == "5.5.5-10.11.19-MariaDB-0+deb12u1"
    assert hs.connection_id == 10
    assert hs.scramble == b"4FEdK(')" + b"8{)URz2&hXch"
    assert len(hs.scramble) == 20
    assert hs.capabilities == 0x81FFF7FE
    assert Capability.CLIENT_PLUGIN_AUTH in hs.capabilities
    assert Capability.CLIENT_LONG_PASSWORD not in hs.capabilities  # MariaDB's marker
    assert hs.mariadb_capabilities == 0x1D
    assert hs.charset == 45
    assert hs.status == AUTOCOMMIT
    assert hs.auth_plugin == "mysql_native_password"
    # The scramble is the nonce the native verifier needs.
    response = _auth.scramble_native_password(b"secret", hs.scramble)
    assert verify_native_scramble(sha1_sha1("secret"), hs.scramble, response)


SCRAMBLE = bytes(range(1, 21))


def test_make_handshake_v10_by_hand() -> None:
    caps = server_capabilities(tls=False)
    payload = make_handshake_v10("8.0.36", 77, SCRAMBLE, caps, 255, AUTOCOMMIT, "caching_sha2_password")
    expected = (
        b"\x0a8.0.36\x00"
        + u32(77)
        + SCRAMBLE[:8]
        + b"\x00"
        + u16(int(caps) & 0xFFFF)
        + b"\xff"
        + u16(2)
        + u16(int(caps) >> 16)
        + b"\x15"
        + bytes(10)
        + SCRAMBLE[8:]
        + b"\x00"
        + b"caching_sha2_password\x00"
    )
    assert payload == expected
    assert parse_handshake_v10(payload) == HandshakeV10(
        "8.0.36", 77, SCRAMBLE, caps, 255, AUTOCOMMIT, "caching_sha2_password", 0
    )


class _Stop(Exception):
    pass


class _FakePacket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_all_data(self) -> bytes:
        return self.data


def pymysql_login(handshake: bytes, *, user: str, password: str, database: str | None) -> tuple[Any, bytes]:
    """Let PyMySQL read our handshake and write its HandshakeResponse41; returns (conn, payload)."""
    conn = pymysql.connections.Connection(defer_connect=True, user=user, password=password, database=database)
    written: list[bytes] = []

    def write_packet(payload: bytes) -> None:
        written.append(payload)

    reads = iter([_FakePacket(handshake)])

    def read_packet(*_: object, **__: object) -> _FakePacket:
        try:
            return next(reads)
        except StopIteration:
            raise _Stop from None

    conn.write_packet = write_packet
    conn._read_packet = read_packet
    conn._get_server_information()
    with pytest.raises(_Stop):
        conn._request_authentication()
    [payload] = written
    return conn, payload


def test_pymysql_reads_our_handshake() -> None:
    handshake = make_handshake_v10(
        "8.0.36", 1234, SCRAMBLE, SERVER_CAPABILITIES, 45, AUTOCOMMIT, "mysql_native_password"
    )
    conn, _ = pymysql_login(handshake, user="alice", password="pw", database="shop")
    assert conn.server_version == "8.0.36"
    assert conn.server_thread_id == (1234,)
    assert conn.salt == SCRAMBLE
    assert conn.server_capabilities == SERVER_CAPABILITIES
    assert conn.server_status == AUTOCOMMIT
    assert conn._auth_plugin_name == "mysql_native_password"


@pytest.mark.parametrize(
    ("plugin", "scramble_fn", "verify", "stored"),
    [
        ("mysql_native_password", _auth.scramble_native_password, verify_native_scramble, sha1_sha1),
        ("caching_sha2_password", _auth.scramble_caching_sha2, verify_caching_sha2_scramble, sha256_sha256),
    ],
)
def test_pymysql_handshake_response(
    plugin: str,
    scramble_fn: Callable[[bytes, bytes], bytes],
    verify: Callable[[bytes, bytes, bytes], bool],
    stored: Callable[[str], bytes],
) -> None:
    handshake = make_handshake_v10("8.0.36", 9, SCRAMBLE, SERVER_CAPABILITIES, 45, AUTOCOMMIT, plugin)
    conn, payload = pymysql_login(handshake, user="alice", password="s3cret", database="shop")
    response = parse_handshake_response41(payload, SERVER_CAPABILITIES)
    assert isinstance(response, HandshakeResponse41)
    assert response.user == "alice"
    assert response.database == "shop"
    assert response.auth_plugin == plugin
    assert response.auth_response == scramble_fn(b"s3cret", SCRAMBLE)
    assert verify(stored("s3cret"), SCRAMBLE, response.auth_response)
    assert not verify(stored("wrong"), SCRAMBLE, response.auth_response)
    assert response.charset == charset_by_name("utf8mb4").id
    assert response.max_packet == pymysql.connections.MAX_PACKET_LEN
    assert response.connect_attrs == conn._connect_attrs
    assert Capability.CLIENT_PROTOCOL_41 in response.capabilities
    assert Capability.CLIENT_MULTI_RESULTS in response.capabilities
    assert Capability.CLIENT_DEPRECATE_EOF not in response.capabilities  # client-compat MY-2


def test_pymysql_handshake_response_without_database() -> None:
    handshake = make_handshake_v10(
        "8.0.36", 9, SCRAMBLE, SERVER_CAPABILITIES, 45, AUTOCOMMIT, "mysql_native_password"
    )
    _, payload = pymysql_login(handshake, user="bob", password="", database=None)
    response = parse_handshake_response41(payload, SERVER_CAPABILITIES)
    assert isinstance(response, HandshakeResponse41)
    assert (response.user, response.database, response.auth_response) == ("bob", None, b"")


def response41(caps: int, tail: bytes) -> bytes:
    return u32(caps) + u32(16_777_216) + b"\x21" + bytes(23) + tail


P41 = Capability.CLIENT_PROTOCOL_41
SECURE = Capability.CLIENT_SECURE_CONNECTION
LENENC = Capability.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA


def test_handshake_response_secure_connection_one_byte_length() -> None:
    caps = P41 | SECURE | Capability.CLIENT_CONNECT_WITH_DB | Capability.CLIENT_PLUGIN_AUTH
    auth = bytes(range(20))
    payload = response41(caps, b"carol\x00" + b"\x14" + auth + b"db1\x00mysql_native_password\x00")
    parsed = parse_handshake_response41(payload)
    assert parsed == HandshakeResponse41(
        Capability(caps), 16_777_216, 0x21, "carol", auth, "db1", "mysql_native_password", {}
    )
    assert (
        make_handshake_response41(
            caps, "carol", auth, "db1", "mysql_native_password", charset=0x21, max_packet=16_777_216
        )
        == payload
    )


def test_handshake_response_lenenc_auth_and_attrs() -> None:
    caps = P41 | SECURE | LENENC | Capability.CLIENT_PLUGIN_AUTH | Capability.CLIENT_CONNECT_ATTRS
    auth = b"A" * 300
    attrs = lstr(b"_client_name") + lstr(b"libmariadb") + lstr(b"_os") + lstr(b"Linux")
    payload = response41(caps, b"dave\x00" + lenenc(300) + auth + b"caching_sha2_password\x00" + lstr(attrs))
    parsed = parse_handshake_response41(payload)
    assert isinstance(parsed, HandshakeResponse41)
    assert parsed.auth_response == auth
    assert parsed.database is None
    assert parsed.connect_attrs == {"_client_name": "libmariadb", "_os": "Linux"}
    built = make_handshake_response41(
        caps,
        "dave",
        auth,
        None,
        "caching_sha2_password",
        charset=0x21,
        max_packet=16_777_216,
        connect_attrs={"_client_name": "libmariadb", "_os": "Linux"},
    )
    assert built == payload


def test_handshake_response_flags_limited_to_what_the_server_offered() -> None:
    # The client claims LENENC auth data but the server did not offer it: a 1-byte length is read.
    caps = P41 | SECURE | LENENC
    payload = response41(caps, b"eve\x00\x02hi")
    parsed = parse_handshake_response41(payload, P41 | SECURE)
    assert isinstance(parsed, HandshakeResponse41)
    assert parsed.auth_response == b"hi"


def test_ssl_request() -> None:
    caps = P41 | SECURE | Capability.CLIENT_SSL
    hand = u32(caps) + u32(16_777_216) + b"\x2d" + bytes(23)
    assert len(hand) == 32
    assert parse_handshake_response41(hand) == SSLRequest(Capability(caps), 16_777_216, 45)
    built = make_ssl_request(P41 | SECURE, 45, 16_777_216)
    assert built == hand


def test_malformed_handshake_responses() -> None:
    with pytest.raises(ProtocolViolation, match="no user"):
        parse_handshake_response41(u32(P41) + u32(0) + b"\x2d" + bytes(23))  # 32 bytes, no SSL flag
    with pytest.raises(ProtocolViolation, match=r"4\.1"):
        parse_handshake_response41(response41(SECURE, b"old\x00\x00"))
    with pytest.raises(ProtocolViolation):
        parse_handshake_response41(response41(P41 | SECURE, b"frank\x00\x14short"))
    with pytest.raises(ProtocolViolation):
        parse_handshake_response41(response41(P41 | SECURE, b"\xff\xfe\x00\x00"))  # not UTF-8
    with pytest.raises(ProtocolViolation):
        parse_handshake_v10(b"\x09old server\x00")


# ------------------------------------------------------------------------ authentication


def test_auth_switch_request() -> None:
    payload = make_auth_switch_request("mysql_native_password", SCRAMBLE + b"\x00")
    assert payload == b"\xfemysql_native_password\x00" + SCRAMBLE + b"\x00"
    assert parse_auth_switch_request(payload) == AuthSwitchRequest(
        "mysql_native_password", SCRAMBLE + b"\x00"
    )
    assert parse_auth_switch_request(b"\xfe").plugin == "mysql_old_password"
    with pytest.raises(ProtocolViolation):
        parse_auth_switch_request(b"\x00abc\x00")


def test_auth_more_data_fast_auth_success() -> None:
    assert make_auth_more_data(b"\x03") == b"\x01\x03"
    assert parse_auth_more_data(b"\x01\x04") == b"\x04"
    with pytest.raises(ProtocolViolation):
        parse_auth_more_data(b"\x02")


# --------------------------------------------------------------------- OK / ERR / EOF


def test_ok_packet() -> None:
    payload = make_ok(3, 70000, AUTOCOMMIT | IN_TRANS, 1, "Rows matched: 3")
    assert payload == b"\x00\x03\xfd\x70\x11\x01" + u16(3) + u16(1) + b"Rows matched: 3"
    assert parse_ok(payload) == OkPacket(3, 70000, AUTOCOMMIT | IN_TRANS, 1, "Rows matched: 3")
    assert make_ok(eof_header=True) == ok(header=0xFE)
    assert parse_ok(ok(header=0xFE)).status == AUTOCOMMIT


def test_ok_packet_with_session_track() -> None:
    caps = P41 | Capability.CLIENT_SESSION_TRACK
    state = lstr(b"\x01" + lstr(lstr(b"shop")))
    changed = AUTOCOMMIT | ServerStatus.SERVER_SESSION_STATE_CHANGED
    payload = ok(status=changed) + lstr(b"") + state
    parsed = parse_ok(payload, caps)
    assert parsed.session_state == state[1:]
    assert parsed.status == changed


def test_err_packet() -> None:
    payload = make_err(1142, "42000", "SELECT command denied")
    assert payload == b"\xff\x76\x04#42000SELECT command denied"
    assert parse_err(payload) == ErrPacket(1142, "42000", "SELECT command denied")
    # Before the handshake (e.g. "Too many connections") there is no SQLSTATE marker.
    assert parse_err(b"\xff\x10\x04Too many connections") == ErrPacket(1040, "HY000", "Too many connections")
    with pytest.raises(ValueError, match="SQLSTATE"):
        make_err(1, "123", "x")
    with pytest.raises(ProtocolViolation):
        parse_err(b"\xff\x01")


def test_eof_packet() -> None:
    assert make_eof(2, AUTOCOMMIT | MORE) == b"\xfe\x02\x00\x0a\x00"
    assert parse_eof(b"\xfe\x02\x00\x0a\x00") == EofPacket(2, AUTOCOMMIT | MORE)
    with pytest.raises(ProtocolViolation):
        parse_eof(b"\xfe" + bytes(8))  # 9 bytes: a row, not an EOF


@pytest.mark.parametrize(
    ("payload", "deprecate_eof", "kind"),
    [
        (ok(), False, PacketKind.OK),
        (err(1064, "42000", "syntax"), False, PacketKind.ERR),
        (b"\xfb/etc/passwd", False, PacketKind.LOCAL_INFILE),
        (eof(), False, PacketKind.EOF),
        (ok(header=0xFE), True, PacketKind.OK),
        (ok(header=0xFE) + b"info text", False, PacketKind.DATA),
        (eof(), True, PacketKind.EOF),
        (b"\x03", False, PacketKind.DATA),
    ],
)
def test_classify_response(payload: bytes, deprecate_eof: bool, kind: PacketKind) -> None:
    assert classify_response(payload, deprecate_eof) is kind


def test_terminators() -> None:
    assert is_terminator(eof(), False)
    assert not is_terminator(b"\xfe" + bytes(8), False)  # an 8-byte length prefix: a row
    assert is_terminator(ok(header=0xFE) + b"x" * 20, True)
    assert not is_terminator(text_row(b"a"), True)
    assert terminator_status(eof(status=0x0B), False) == AUTOCOMMIT | IN_TRANS | MORE
    assert terminator_status(ok(status=0x03, header=0xFE), True) == AUTOCOMMIT | IN_TRANS


# --------------------------------------------------------------------------------- commands


def test_parse_command() -> None:
    assert parse_command(b"\x03SELECT 1") == (Command.COM_QUERY, b"SELECT 1")
    assert parse_command(b"\x0e") == (Command.COM_PING, b"")
    assert make_command(Command.COM_INIT_DB, b"shop") == b"\x02shop"
    assert make_query("SELECT 'é'") == b"\x03SELECT '\xc3\xa9'"
    with pytest.raises(UnknownCommand) as info:
        parse_command(b"\x99")
    assert info.value.mysql_errno == 1047
    assert info.value.sqlstate == "08S01"
    with pytest.raises(ProtocolViolation):
        parse_command(b"")


def test_text_commands() -> None:
    assert parse_query("SELECT 'é'".encode()) == "SELECT 'é'"
    assert parse_query(b"SELECT '\xe9'", "latin-1") == "SELECT 'é'"
    with pytest.raises(ProtocolViolation):
        parse_query(b"SELECT '\xe9'")
    assert parse_init_db(b"shop") == "shop"
    assert parse_stmt_prepare(b"SELECT ?") == "SELECT ?"
    assert parse_field_list(b"orders\x00id%") == ("orders", "id%")


def test_statement_commands() -> None:
    assert parse_statement_id(u32(7)) == 7
    with pytest.raises(ProtocolViolation):
        parse_statement_id(u32(7) + b"x")
    assert parse_stmt_fetch(u32(7) + u32(100)) == (7, 100)
    assert parse_stmt_send_long_data(u32(7) + u16(1) + b"chunk") == (7, 1, b"chunk")
    assert parse_process_kill(u32(42)) == 42
    assert parse_set_option(u16(1)) == 1


def test_change_user() -> None:
    caps = P41 | SECURE | Capability.CLIENT_PLUGIN_AUTH | Capability.CLIENT_CONNECT_ATTRS
    body = (
        b"gina\x00\x03abc"
        + b"shop\x00"
        + u16(45)
        + b"mysql_native_password\x00"
        + lstr(lstr(b"k") + lstr(b"v"))
    )
    parsed = parse_change_user(body, caps)
    assert (parsed.user, parsed.auth_response, parsed.database, parsed.charset) == (
        "gina",
        b"abc",
        "shop",
        45,
    )
    assert parsed.auth_plugin == "mysql_native_password"
    assert parsed.connect_attrs == {"k": "v"}
    short = parse_change_user(b"gina\x00\x00\x00", caps)
    assert (short.database, short.charset, short.auth_plugin) == (None, None, "")


def execute_body(stmt_id: int, flags: int, tail: bytes) -> bytes:
    return u32(stmt_id) + bytes([flags]) + u32(1) + tail


def test_stmt_execute_with_new_types() -> None:
    # Parameters: LONGLONG 42, VAR_STRING 'abc', NULL (bitmap bit 2), DOUBLE 1.5, DATETIME, TINY u 200.
    types = bytes([8, 0, 253, 0, 8, 0, 5, 0, 12, 0, 1, 0x80])
    datetime = b"\x07" + u16(2024) + bytes([5, 17, 13, 45, 0])
    values = struct.pack("<q", 42) + lstr(b"abc") + struct.pack("<d", 1.5) + datetime + b"\xc8"
    body = execute_body(5, CursorType.CURSOR_TYPE_NO_CURSOR, b"\x04" + b"\x01" + types + values)
    parsed = parse_stmt_execute(body, 6, None)
    assert parsed.statement_id == 5
    assert parsed.flags == CursorType.CURSOR_TYPE_NO_CURSOR
    assert parsed.iteration_count == 1
    assert parsed.null_bitmap == b"\x04"
    assert parsed.new_params_bound
    assert parsed.types == types
    assert parsed.values == (
        struct.pack("<q", 42),
        lstr(b"abc"),
        None,
        struct.pack("<d", 1.5),
        datetime,
        b"\xc8",
    )
    decoded = [
        None if raw is None else decode_binary_value(kind, unsigned, raw)
        for (kind, unsigned), raw in zip(parsed.param_types(), parsed.values, strict=True)
    ]
    assert decoded == [42, b"abc", None, 1.5, datetime[1:], 200]
    assert parsed.param_types()[5] == (ColumnType.MYSQL_TYPE_TINY, True)


def test_stmt_execute_reusing_previous_types_and_long_data() -> None:
    types = bytes([3, 0, 252, 0])
    body = execute_body(9, CursorType.CURSOR_TYPE_READ_ONLY, b"\x00" + b"\x00" + u32(2**32 - 1))
    parsed = parse_stmt_execute(body, 2, types, long_data_params=frozenset({1}))
    assert parsed.flags == CursorType.CURSOR_TYPE_READ_ONLY
    assert not parsed.new_params_bound
    assert parsed.values == (u32(2**32 - 1), None)
    assert decode_binary_value(ColumnType.MYSQL_TYPE_LONG, False, parsed.values[0] or b"") == -1
    with pytest.raises(ProtocolViolation, match="without types"):
        parse_stmt_execute(body, 2, None)


def test_stmt_execute_malformed() -> None:
    assert parse_stmt_execute(execute_body(1, 0, b""), 0, None).values == ()
    with pytest.raises(ProtocolViolation, match="trailing"):
        parse_stmt_execute(execute_body(1, 0, b"junk"), 0, None)
    with pytest.raises(ProtocolViolation):
        parse_stmt_execute(execute_body(1, 0, b"\x00\x01" + bytes([3, 0])), 1, None)  # value missing
    with pytest.raises(ProtocolViolation, match="unknown parameter type"):
        parse_stmt_execute(execute_body(1, 0, b"\x00\x01" + bytes([99, 0]) + b"x"), 1, None)
    with pytest.raises(ProtocolViolation, match="unknown parameter type"):  # even for a NULL
        parse_stmt_execute(execute_body(1, 0, b"\x01\x01" + bytes([17, 0])), 1, None)
    with pytest.raises(ProtocolViolation, match="new-params-bound"):
        parse_stmt_execute(execute_body(1, 0, b"\x00\x02"), 1, None)


def test_stmt_prepare_ok() -> None:
    payload = make_stmt_prepare_ok(3, 2, 1, 0)
    assert payload == b"\x00" + u32(3) + u16(2) + u16(1) + b"\x00" + u16(0)
    assert parse_stmt_prepare_ok(payload) == StmtPrepareOk(3, 2, 1, 0)


# ------------------------------------------------------------------------ result scanning


def scan(scanner: ResultScanner, command: Command, payloads: list[bytes]) -> list[ScanEvent]:
    assert scanner.start(command)
    return [scanner.feed(p) for p in payloads]


P, RD, D = ScanEvent.PENDING, ScanEvent.RESULT_DONE, ScanEvent.DONE

TEXT_RESULT = [
    b"\x02",
    coldef("id"),
    coldef("note"),
    eof(),
    text_row(b"1", b"a"),
    text_row(b"2", None),
    text_row(None, b"\xfe" * 3),
    eof(status=AUTOCOMMIT | IN_TRANS),
]


def test_text_result_set() -> None:
    scanner = ResultScanner(client_deprecate_eof=False)
    assert scan(scanner, Command.COM_QUERY, TEXT_RESULT) == [P] * 7 + [D]
    assert scanner.status == AUTOCOMMIT | IN_TRANS
    assert scanner.rows == 3
    assert not scanner.busy


def test_text_result_set_deprecate_eof() -> None:
    payloads = [b"\x01", coldef("x"), text_row(b"1"), text_row(b"2"), ok(status=0x03, header=0xFE)]
    scanner = ResultScanner(client_deprecate_eof=True)
    assert scan(scanner, Command.COM_QUERY, payloads) == [P, P, P, P, D]
    assert scanner.rows == 2
    assert scanner.status == AUTOCOMMIT | IN_TRANS


def test_multi_results() -> None:
    payloads = [
        ok(affected=1, status=AUTOCOMMIT | MORE),  # INSERT …;
        b"\x01",  # SELECT …;
        coldef("n"),
        eof(status=AUTOCOMMIT | MORE),
        text_row(b"7"),
        eof(status=AUTOCOMMIT | MORE),
        ok(status=AUTOCOMMIT),  # CALL's final status
    ]
    scanner = ResultScanner(client_deprecate_eof=False)
    assert scan(scanner, Command.COM_QUERY, payloads) == [RD, P, P, P, P, RD, D]
    assert scanner.ok == OkPacket(0, 0, AUTOCOMMIT, 0, "")


def test_multi_results_deprecate_eof() -> None:
    payloads = [
        b"\x01",
        coldef("n"),
        text_row(b"7"),
        ok(status=AUTOCOMMIT | MORE, header=0xFE),
        ok(affected=2, status=AUTOCOMMIT),
    ]
    scanner = ResultScanner(client_deprecate_eof=True)
    assert scan(scanner, Command.COM_QUERY, payloads) == [P, P, P, RD, D]
    assert scanner.ok is not None
    assert scanner.ok.affected_rows == 2


def test_error_mid_stream() -> None:
    payloads = [
        b"\x01",
        coldef("n"),
        eof(),
        text_row(b"1"),
        err(1317, "70100", "Query execution was interrupted"),
    ]
    scanner = ResultScanner(client_deprecate_eof=False, status=AUTOCOMMIT | IN_TRANS)
    assert scan(scanner, Command.COM_QUERY, payloads) == [P, P, P, P, D]
    assert scanner.error == ErrPacket(1317, "70100", "Query execution was interrupted")
    assert scanner.status == AUTOCOMMIT | IN_TRANS  # ERR carries no status
    # An error ends a multi-statement response too.
    assert scan(scanner, Command.COM_QUERY, [ok(status=MORE | 2), err(1064, "42000", "syntax")]) == [RD, D]
    # The next command starts clean.
    assert scan(scanner, Command.COM_PING, [ok()]) == [D]
    assert scanner.error is None


def test_binary_result_set() -> None:
    row = b"\x00\x00" + struct.pack("<q", 1)  # header, NULL bitmap (offset 2), one LONGLONG
    for deprecate in (False, True):
        payloads = [b"\x01", coldef("id", 8)]
        payloads += [] if deprecate else [eof()]
        payloads += [row, row, ok(status=2, header=0xFE) if deprecate else eof()]
        scanner = ResultScanner(client_deprecate_eof=deprecate)
        assert scan(scanner, Command.COM_STMT_EXECUTE, payloads)[-1] is D
        assert scanner.rows == 2
    scanner = ResultScanner(client_deprecate_eof=False)
    scan(scanner, Command.COM_STMT_EXECUTE, [b"\x01", coldef("id", 8), eof()])
    with pytest.raises(ProtocolViolation, match="binary result row"):
        scanner.feed(text_row(b"1"))


def test_binary_execute_of_a_write_and_cursor() -> None:
    scanner = ResultScanner(client_deprecate_eof=False)
    assert scan(scanner, Command.COM_STMT_EXECUTE, [ok(affected=5)]) == [D]
    # A cursor: column definitions then EOF with CURSOR_EXISTS, rows come by COM_STMT_FETCH.
    assert scan(scanner, Command.COM_STMT_EXECUTE, [b"\x01", coldef("id", 8), eof(status=2 | CURSOR)]) == [
        P,
        P,
        D,
    ]
    fetched = [
        b"\x00\x00" + u32(1) + u32(0),
        eof(status=2 | CURSOR | ServerStatus.SERVER_STATUS_LAST_ROW_SENT),
    ]
    assert scan(scanner, Command.COM_STMT_FETCH, fetched) == [P, D]
    assert ServerStatus.SERVER_STATUS_LAST_ROW_SENT in scanner.status


@pytest.mark.parametrize("deprecate", [False, True])
def test_prepare_responses(deprecate: bool) -> None:
    end = [] if deprecate else [eof()]
    scanner = ResultScanner(client_deprecate_eof=deprecate)
    payloads = [make_stmt_prepare_ok(1, 1, 2), coldef("?"), coldef("?"), *end, coldef("id"), *end]
    events = scan(scanner, Command.COM_STMT_PREPARE, payloads)
    assert events == [P] * (len(payloads) - 1) + [D]
    assert scanner.prepare_ok == StmtPrepareOk(1, 1, 2, 0)
    # Only columns, only parameters, neither.
    assert (
        scan(
            scanner, Command.COM_STMT_PREPARE, [make_stmt_prepare_ok(2, 2, 0), coldef("a"), coldef("b"), *end]
        )[-1]
        is D
    )
    assert (
        scan(scanner, Command.COM_STMT_PREPARE, [make_stmt_prepare_ok(3, 0, 1), coldef("?"), *end])[-1] is D
    )
    assert scan(scanner, Command.COM_STMT_PREPARE, [make_stmt_prepare_ok(4, 0, 0)]) == [D]
    assert scan(scanner, Command.COM_STMT_PREPARE, [err(1146, "42S02", "Table 'x' doesn't exist")]) == [D]
    assert scanner.error is not None
    assert scanner.prepare_ok is None


def test_local_infile_is_reported() -> None:
    scanner = ResultScanner(client_deprecate_eof=False)
    assert scan(scanner, Command.COM_QUERY, [b"\xfb/tmp/data.csv"]) == [ScanEvent.LOCAL_INFILE]
    assert scanner.busy
    assert scanner.feed(ok(affected=10)) is D
    assert scan(scanner, Command.COM_QUERY, [b"\xfbx"]) == [ScanEvent.LOCAL_INFILE]
    with pytest.raises(ProtocolViolation):
        scanner.feed(b"\x01")


def test_other_commands() -> None:
    scanner = ResultScanner(client_deprecate_eof=False)
    assert scan(scanner, Command.COM_FIELD_LIST, [coldef("id"), coldef("note"), eof()]) == [P, P, D]
    assert scan(scanner, Command.COM_FIELD_LIST, [err(1146, "42S02", "no table")]) == [D]
    assert scan(scanner, Command.COM_STATISTICS, [b"Uptime: 42  Threads: 1"]) == [D]
    assert scan(scanner, Command.COM_SET_OPTION, [eof()]) == [D]
    assert scan(scanner, Command.COM_INIT_DB, [ok(status=AUTOCOMMIT)]) == [D]
    assert scanner.start(Command.COM_STMT_CLOSE) is False
    assert scanner.start(Command.COM_QUIT) is False
    with pytest.raises(ProtocolViolation, match="no command"):
        scanner.feed(ok())
    with pytest.raises(ValueError, match="not scanned"):
        scanner.start(Command.COM_CHANGE_USER)
    scanner.start(Command.COM_PING)
    with pytest.raises(ValueError, match="not complete"):
        scanner.start(Command.COM_PING)
    with pytest.raises(ProtocolViolation):
        scanner.feed(b"\x05")


def test_field_list_deprecate_eof() -> None:
    scanner = ResultScanner(client_deprecate_eof=True)
    assert scan(scanner, Command.COM_FIELD_LIST, [coldef("id"), ok(status=3, header=0xFE)]) == [P, D]
    assert scanner.status == AUTOCOMMIT | IN_TRANS


RESPONSE_STREAM = b"".join(packet(p, i + 1) for i, p in enumerate(TEXT_RESULT))


@settings(max_examples=200, deadline=None)
@given(cuts=cut_points(len(RESPONSE_STREAM)))
def test_scanner_behind_reader_in_random_splits(cuts: list[int]) -> None:
    reader, scanner = PacketReader(), ResultScanner(client_deprecate_eof=False)
    scanner.start(Command.COM_QUERY)
    events = []
    for chunk in split(RESPONSE_STREAM, cuts):
        reader.feed(chunk)
        while (found := reader.next()) is not None:
            events.append(scanner.feed(found[1]))
    assert events == [P] * 7 + [D]
    assert scanner.status == AUTOCOMMIT | IN_TRANS


# ---------------------------------------------------------------- arbitrary bytes


PARSERS: list[Callable[[bytes], object]] = [
    parse_handshake_v10,
    parse_handshake_response41,
    lambda b: parse_handshake_response41(b, SERVER_CAPABILITIES),
    parse_auth_switch_request,
    parse_auth_more_data,
    parse_ok,
    lambda b: parse_ok(b, P41 | Capability.CLIENT_SESSION_TRACK),
    parse_err,
    parse_eof,
    classify_response,
    parse_command,
    parse_query,
    parse_init_db,
    parse_field_list,
    parse_statement_id,
    parse_stmt_fetch,
    parse_stmt_send_long_data,
    parse_process_kill,
    parse_set_option,
    parse_stmt_prepare_ok,
    lambda b: parse_change_user(b, SERVER_CAPABILITIES),
    lambda b: parse_stmt_execute(b, 3, None),
    lambda b: parse_stmt_execute(b, 2, bytes([253, 0, 12, 0])),
    read_lenenc_int,
    read_lenenc_str,
    read_nul_str,
    lambda b: terminator_status(b, True),
    lambda b: terminator_status(b, False),
]


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=120), index=st.integers(min_value=0, max_value=len(PARSERS) - 1))
def test_arbitrary_bytes_only_raise_protocol_violation(data: bytes, index: int) -> None:
    with contextlib.suppress(ProtocolViolation):
        PARSERS[index](data)


def test_protocol_violation_knows_the_wire() -> None:
    assert issubclass(ProtocolViolation, QueryBaseError)
    assert (ProtocolViolation.mysql_errno, ProtocolViolation.sqlstate) == (1835, "08S01")
    assert issubclass(UnknownCommand, ProtocolViolation)
    assert issubclass(PacketTooLarge, ProtocolViolation)


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=12),
    command=st.sampled_from(
        [
            Command.COM_QUERY,
            Command.COM_STMT_EXECUTE,
            Command.COM_STMT_PREPARE,
            Command.COM_FIELD_LIST,
            Command.COM_PING,
            Command.COM_STMT_FETCH,
        ]
    ),
    deprecate=st.booleans(),
)
def test_scanner_arbitrary_packets_only_raise_protocol_violation(
    payloads: list[bytes], command: Command, deprecate: bool
) -> None:
    scanner = ResultScanner(client_deprecate_eof=deprecate)
    scanner.start(command)
    try:
        for payload in payloads:
            if scanner.feed(payload) is ScanEvent.DONE:
                scanner.start(command)
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=1, max_value=299), max_size=10))
def test_reader_arbitrary_bytes_only_raise_protocol_violation(data: bytes, cuts: list[int]) -> None:
    reader = PacketReader(max_payload=200)
    try:
        for chunk in split(data, cuts):
            reader.feed(chunk)
            while reader.next() is not None:
                pass
    except ProtocolViolation:
        pass

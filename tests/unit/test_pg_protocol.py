"""PostgreSQL v3 codec (proxy.wire.pg.protocol): framing fed whole, byte by byte and in random splits.

Expected bytes are built here by hand from the message formats in
https://www.postgresql.org/docs/current/protocol-message-formats.html, not with the codec's own
`make_*`, wherever the codec would otherwise be checking itself.
"""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire.pg.protocol import (
    MAX_HELD_BACK,
    PG_ENCODINGS,
    PROTOCOL_3_0,
    AuthCode,
    BackendReader,
    BackendScanner,
    Bind,
    CancelRequest,
    FrontendReader,
    GSSENCRequest,
    Parse,
    ProtocolViolation,
    SSLRequest,
    StartupMessage,
    make_auth,
    make_auth_sasl,
    make_backend_key_data,
    make_cancel_request,
    make_error,
    make_negotiate_protocol_version,
    make_parameter_status,
    make_ready_for_query,
    make_startup,
    parse_auth,
    parse_backend_key_data,
    parse_bind,
    parse_describe_or_close,
    parse_error_fields,
    parse_execute,
    parse_parameter_status,
    parse_parse,
    parse_password,
    parse_query,
    parse_sasl_initial,
    parse_startup,
    python_encoding,
)

# ------------------------------------------------------------------ hand-written wire builders


def i16(n: int) -> bytes:
    return struct.pack("!h", n)


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


def cstr(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def frame(type_byte: bytes, body: bytes) -> bytes:
    """Byte1(type) Int32(length counting itself) body."""
    return type_byte + i32(len(body) + 4) + body


def startup_packet(code: int, body: bytes = b"") -> bytes:
    """Int32(length counting itself) Int32(version or request code) body."""
    return i32(len(body) + 8) + i32(code) + body


def parse_body(statement: str, query: str, oids: list[int]) -> bytes:
    return cstr(statement) + cstr(query) + i16(len(oids)) + b"".join(struct.pack("!I", o) for o in oids)


def bind_body(
    portal: str,
    statement: str,
    formats: list[int],
    params: list[bytes | None],
    result_formats: list[int],
) -> bytes:
    out = cstr(portal) + cstr(statement) + i16(len(formats)) + b"".join(i16(f) for f in formats)
    out += i16(len(params))
    for value in params:
        out += i32(-1) if value is None else i32(len(value)) + value
    return out + i16(len(result_formats)) + b"".join(i16(f) for f in result_formats)


def make_parse(statement: str, query: str, oids: list[int]) -> bytes:
    return frame(b"P", parse_body(statement, query, oids))


def make_bind(
    portal: str,
    statement: str,
    formats: list[int],
    params: list[bytes | None],
    result_formats: list[int],
) -> bytes:
    return frame(b"B", bind_body(portal, statement, formats, params, result_formats))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def cut_points(size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=1, max_value=max(1, size - 1)), max_size=40)


# ------------------------------------------------------------------ a captured-style client stream

SSL_REQUEST = bytes.fromhex("00000008 04d2162f")
STARTUP_BODY = (
    b"user\x00alice\x00database\x00analytics\x00application_name\x00psql\x00client_encoding\x00UTF8\x00\x00"
)
STARTUP = struct.pack("!ii", 8 + len(STARTUP_BODY), 196608) + STARTUP_BODY
PARSE_BODY = parse_body("s1", "SELECT * FROM orders WHERE id = $1 AND note = $2", [23, 25])
BIND_BODY = bind_body("", "s1", [1, 0], [b"\x00\x00\x00\x2a", None], [1])
CLIENT_MESSAGES: list[tuple[bytes, bytes]] = [
    (b"", SSL_REQUEST),
    (b"", STARTUP),
    (b"Q", b"SELECT 1;\x00"),
    (b"P", PARSE_BODY),
    (b"B", BIND_BODY),
    (b"D", b"P\x00"),
    (b"E", b"\x00" + i32(0)),
    (b"S", b""),
    (b"C", b"S" + b"s1\x00"),
    (b"H", b""),
    (b"X", b""),
]
CLIENT_STREAM = (
    SSL_REQUEST
    + make_startup(
        {"user": "alice", "database": "analytics", "application_name": "psql", "client_encoding": "UTF8"}
    )
    + frame(b"Q", b"SELECT 1;\x00")
    + make_parse("s1", "SELECT * FROM orders WHERE id = $1 AND note = $2", [23, 25])
    + make_bind("", "s1", [1, 0], [b"\x00\x00\x00\x2a", None], [1])
    + frame(b"D", b"P\x00")
    + frame(b"E", b"\x00\x00\x00\x00\x00")
    + b"S\x00\x00\x00\x04"
    + frame(b"C", b"Ss1\x00")
    + b"H\x00\x00\x00\x04"
    + b"X\x00\x00\x00\x04"
)


def read_client(chunks: list[bytes], *, raw: bool = False) -> list[tuple[bytes, bytes]]:
    """What a session does: feed each chunk, drain messages, leave startup after StartupMessage."""
    reader = FrontendReader()
    out: list[tuple[bytes, bytes]] = []
    in_startup = True
    for chunk in chunks:
        reader.feed(chunk)
        while (msg := (reader.next_raw() if raw else reader.next())) is not None:
            out.append(msg)
            if in_startup and struct.unpack_from("!i", msg[1], 4)[0] >> 16 == 3:
                reader.startup_done()
                in_startup = False
    assert reader.buffered == 0
    return out


def test_make_startup_matches_a_psql_startup_packet() -> None:
    assert CLIENT_STREAM.startswith(SSL_REQUEST + STARTUP)


def test_client_stream_fed_whole() -> None:
    assert read_client([CLIENT_STREAM]) == CLIENT_MESSAGES


def test_client_stream_byte_by_byte() -> None:
    chunks = [CLIENT_STREAM[i : i + 1] for i in range(len(CLIENT_STREAM))]
    assert read_client(chunks) == CLIENT_MESSAGES


@settings(max_examples=200, deadline=None)
@given(cuts=cut_points(len(CLIENT_STREAM)))
def test_client_stream_random_splits(cuts: list[int]) -> None:
    assert read_client(split(CLIENT_STREAM, cuts)) == CLIENT_MESSAGES


def test_next_raw_returns_header_and_body() -> None:
    raw = read_client([CLIENT_STREAM], raw=True)
    assert raw[0] == (b"", SSL_REQUEST)
    assert raw[1] == (b"", STARTUP)
    assert raw[2] == (b"Q", b"Q\x00\x00\x00\x0eSELECT 1;\x00")
    assert raw[-1] == (b"X", b"X\x00\x00\x00\x04")
    assert b"".join(m for _, m in raw) == CLIENT_STREAM


def test_client_stream_bodies_decode() -> None:
    msgs = dict(CLIENT_MESSAGES[2:])
    assert isinstance(parse_startup(SSL_REQUEST), SSLRequest)
    assert parse_startup(STARTUP) == StartupMessage(
        PROTOCOL_3_0,
        {"user": "alice", "database": "analytics", "application_name": "psql", "client_encoding": "UTF8"},
    )
    assert parse_query(msgs[b"Q"]) == "SELECT 1;"
    assert parse_parse(msgs[b"P"]) == Parse(
        "s1", "SELECT * FROM orders WHERE id = $1 AND note = $2", (23, 25)
    )
    assert parse_bind(msgs[b"B"]) == Bind("", "s1", (1, 0), (b"\x00\x00\x00\x2a", None), (1,))
    assert parse_describe_or_close(msgs[b"D"], "Describe") == (b"P", "")
    assert parse_execute(msgs[b"E"]) == ("", 0)
    assert parse_describe_or_close(msgs[b"C"], "Close") == (b"S", "s1")


def test_partial_message_waits_and_buffered_counts() -> None:
    reader = FrontendReader()
    reader.startup_done()
    msg = frame(b"Q", b"SELECT 1\x00")
    reader.feed(msg[:4])
    assert reader.next() is None
    assert reader.buffered == 4
    reader.feed(msg[4:] + msg[:2])
    assert reader.next() == (b"Q", b"SELECT 1\x00")
    assert reader.next() is None
    assert reader.buffered == 2


def test_backend_reader_frames_server_messages() -> None:
    stream = frame(b"R", i32(0)) + frame(b"S", b"a\x00b\x00") + frame(b"Z", b"I")
    reader = BackendReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (m := reader.next()) is not None:
            got.append(m)
    assert got == [(b"R", i32(0)), (b"S", b"a\x00b\x00"), (b"Z", b"I")]
    assert reader.buffered == 0


# ------------------------------------------------------------------ framing errors


@pytest.mark.parametrize("length", [-1, 0, 4, 7, 10_001, 2**31 - 1])
def test_invalid_startup_length(length: int) -> None:
    reader = FrontendReader()
    reader.feed(i32(length))  # fails as soon as the length is known, before the body arrives
    with pytest.raises(ProtocolViolation, match=f"invalid startup packet length {length}"):
        reader.next()


def test_startup_length_limits_are_inclusive() -> None:
    reader = FrontendReader()
    reader.feed(startup_packet(PROTOCOL_3_0, b"x" * (10_000 - 8)))
    assert reader.next() == (b"", startup_packet(PROTOCOL_3_0, b"x" * (10_000 - 8)))
    reader.feed(i32(8))
    assert reader.next() is None  # a minimal 8-byte packet: waits for its code


@pytest.mark.parametrize("length", [-5, 0, 3])
def test_invalid_message_length(length: int) -> None:
    reader = FrontendReader()
    reader.startup_done()
    reader.feed(b"Q" + i32(length))
    with pytest.raises(ProtocolViolation, match=rf"invalid message length {length} for type b'Q'"):
        reader.next()


def test_message_over_max_message_is_refused_before_buffering() -> None:
    reader = FrontendReader(max_message=100)
    reader.startup_done()
    reader.feed(frame(b"Q", b"x" * 96))  # length 100: allowed
    assert reader.next() == (b"Q", b"x" * 96)
    reader.feed(b"Q" + i32(101))
    with pytest.raises(ProtocolViolation, match="message of 101 bytes exceeds the 100-byte limit"):
        reader.next_raw()


def test_default_max_message_refuses_huge_length() -> None:
    reader = FrontendReader()
    reader.startup_done()
    reader.feed(b"d" + i32(2**31 - 1))
    with pytest.raises(ProtocolViolation, match="exceeds"):
        reader.next()


def drain_raw(reader: FrontendReader, chunks: list[bytes]) -> bytes:
    out = b""
    for chunk in chunks:
        reader.feed(chunk)
        while (m := reader.next_raw()) is not None:
            out += m[1]
    return out


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    cuts=cut_points(400),
    phase=st.sampled_from(["startup", "typed", "switch"]),
    max_message=st.sampled_from([5, 64, 100_000]),
)
def test_arbitrary_bytes_only_raise_protocol_violation(
    data: bytes, cuts: list[int], phase: str, max_message: int
) -> None:
    reader = FrontendReader(max_message=max_message)
    if phase == "typed":
        reader.startup_done()
    consumed = b""
    try:
        for chunk in split(data, cuts):
            reader.feed(chunk)
            while (m := reader.next_raw()) is not None:
                consumed += m[1]
                if phase == "switch":
                    reader.startup_done()
    except ProtocolViolation:
        return
    assert consumed + data[len(consumed) :] == data
    assert reader.buffered == len(data) - len(consumed)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.tuples(st.binary(min_size=1, max_size=1), st.binary(max_size=80)), min_size=1, max_size=12
    ),
    garbage=st.binary(max_size=12),
    cuts=cut_points(1200),
)
def test_random_typed_streams(messages: list[tuple[bytes, bytes]], garbage: bytes, cuts: list[int]) -> None:
    stream = b"".join(frame(t, b) for t, b in messages) + garbage
    reader = FrontendReader(max_message=84)
    reader.startup_done()
    got: list[tuple[bytes, bytes]] = []
    try:
        for chunk in split(stream, cuts):
            reader.feed(chunk)
            while (m := reader.next()) is not None:
                got.append(m)
    except ProtocolViolation:
        assert got == messages  # only the garbage can be refused
        return
    assert got[: len(messages)] == messages


# ------------------------------------------------------------------ parse_startup


def test_parse_startup_params_and_minor_version() -> None:
    body = b"user\x00bob\x00options\x00-c search_path=x\x00\x00"
    assert parse_startup(startup_packet(196608, body)) == StartupMessage(
        196608, {"user": "bob", "options": "-c search_path=x"}
    )
    # 3.2 is still protocol 3: the session answers it with NegotiateProtocolVersion
    assert parse_startup(startup_packet(196610, b"user\x00bob\x00\x00")).version == 196610
    assert parse_startup(startup_packet(196608, b"user\x00\x00\x00")).params == {"user": ""}


def test_parse_ssl_and_gssenc_requests() -> None:
    assert parse_startup(bytes.fromhex("0000000804d2162f")) == SSLRequest()
    assert parse_startup(bytes.fromhex("0000000804d21630")) == GSSENCRequest()


@pytest.mark.parametrize("code", [80877103, 80877104])
def test_ssl_request_with_a_body_is_refused(code: int) -> None:
    with pytest.raises(ProtocolViolation):
        parse_startup(startup_packet(code, b"\x00\x00\x00\x00"))


@pytest.mark.parametrize("key_len", [4, 8, 32, 252])
def test_parse_cancel_request(key_len: int) -> None:
    key = bytes(range(key_len))
    packet = struct.pack("!iii", 12 + key_len, 80877102, 4321) + key
    assert parse_startup(packet) == CancelRequest(4321, key)


def test_parse_cancel_request_with_256_byte_key() -> None:
    key = bytes(range(256))
    packet = struct.pack("!iii", 12 + 256, 80877102, 7) + key
    assert parse_startup(packet) == CancelRequest(7, key)


@pytest.mark.parametrize("key_len", [257, 400])
def test_cancel_request_key_over_256_bytes_is_refused(key_len: int) -> None:
    packet = struct.pack("!iii", 12 + key_len, 80877102, 7) + b"k" * key_len
    with pytest.raises(ProtocolViolation, match="CancelRequest"):
        parse_startup(packet)


def test_cancel_request_without_pid_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="CancelRequest"):
        parse_startup(struct.pack("!ii", 8, 80877102))


@pytest.mark.parametrize("key", [b"\x00\x00\x16\x2e", bytes(range(32))])
def test_make_cancel_request_bytes_and_framing(key: bytes) -> None:
    packet = make_cancel_request(1234, key)
    assert packet == struct.pack("!iii", 12 + len(key), 80877102, 1234) + key  # Int32(16) for 4 bytes
    assert read_client([packet + SSL_REQUEST]) == [(b"", packet), (b"", SSL_REQUEST)]
    assert parse_startup(packet) == CancelRequest(1234, key)


@pytest.mark.parametrize(("major", "minor"), [(2, 0), (4, 0), (1, 0), (0, 0)])
def test_other_protocol_versions_are_refused(major: int, minor: int) -> None:
    packet = startup_packet((major << 16) | minor, b"user\x00bob\x00\x00")
    with pytest.raises(ProtocolViolation, match=f"unsupported frontend protocol {major}.{minor}"):
        parse_startup(packet)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no parameters"),
        (b"\x00", "no parameters"),
        (b"user\x00bob", "missing terminator"),
        (b"user\x00bob\x00", "not terminated"),
        (b"user\x00bob\x00\x00junk\x00", "not terminated"),
        (b"user\x00bob\x00database\x00\x00", "has no value"),
        (b"user\x00\x00", "has no value"),
        (b"\x00bob\x00\x00", "empty parameter name"),
        (b"user\x00bob\x00\x00x\x00\x00", "empty parameter name"),
        (b"user\x00\xff\xfe\x00\x00", "invalid UTF-8"),
        (b"us\xc3er\x00bob\x00\x00", "invalid UTF-8"),
    ],
)
def test_malformed_startup_packets(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        parse_startup(startup_packet(PROTOCOL_3_0, body))


@pytest.mark.parametrize("packet", [b"", b"\x00\x00\x00\x08", b"\x00\x00\x00\x08\x00\x03\x00"])
def test_short_startup_packet(packet: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="too short"):
        parse_startup(packet)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_parse_startup_arbitrary_bodies(body: bytes) -> None:
    for code in (PROTOCOL_3_0, 80877102, 80877103, 2 << 16):
        with contextlib.suppress(ProtocolViolation):
            parse_startup(startup_packet(code, body))


# ------------------------------------------------------------------ frontend message bodies


def test_parse_parse() -> None:
    body = parse_body("", "INSERT INTO t VALUES ($1, $2, $3)", [23, 0, 4294967295])
    assert parse_parse(body) == Parse("", "INSERT INTO t VALUES ($1, $2, $3)", (23, 0, 4294967295))
    assert parse_parse(parse_body("st", "SELECT 1", [])) == Parse("st", "SELECT 1", ())


def test_parse_bind_nulls_formats_results() -> None:
    body = bind_body("p1", "st", [0, 1], [b"42", None, b"", b"\x00\x01"], [0, 1, 1])
    assert parse_bind(body) == Bind("p1", "st", (0, 1), (b"42", None, b"", b"\x00\x01"), (0, 1, 1))
    assert parse_bind(bind_body("", "", [], [], [])) == Bind("", "", (), (), ())


@pytest.mark.parametrize(
    ("parser", "body"),
    [
        (parse_parse, parse_body("s", "SELECT $1", [23])),
        (parse_bind, bind_body("p", "s", [1], [b"abc", None], [1])),
        (parse_execute, b"portal\x00" + i32(10)),
        (lambda b: parse_describe_or_close(b, "Describe"), b"Sname\x00"),
        (parse_sasl_initial, b"SCRAM-SHA-256\x00" + i32(5) + b"n,,xy"),
    ],
)
def test_every_truncation_and_any_trailing_byte_is_refused(parser, body: bytes) -> None:  # type: ignore[no-untyped-def]
    parser(body)  # the whole body is fine
    for end in range(len(body)):
        with pytest.raises(ProtocolViolation, match=r"malformed|truncated|unterminated"):
            parser(body[:end])
    with pytest.raises(ProtocolViolation, match="trailing bytes"):
        parser(body + b"\x00")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"s\x00q\x00" + i16(-1), "negative parameter type count"),
        (b"s\x00q\x00" + i16(2) + i32(23), "truncated"),
        (b"s\x00q", "unterminated string"),
        (b"s\x00\xff\x00" + i16(0), "(?i)utf-8"),
    ],
)
def test_malformed_parse(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        parse_parse(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x00\x00" + i16(-1), "negative format count"),
        (b"\x00\x00" + i16(0) + i16(1) + i32(-2) + i16(0), "truncated"),  # only -1 is NULL
        (b"\x00\x00" + i16(0) + i16(1) + i32(5) + b"abc" + i16(0), "truncated"),
        (b"\x00\x00" + i16(0) + i16(-3), "negative parameter count"),
        (b"\x00\x00" + i16(0) + i16(0) + i16(-1), "negative result format count"),
    ],
)
def test_malformed_bind(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolViolation, match=message):
        parse_bind(body)


def test_parse_execute() -> None:
    assert parse_execute(b"\x00" + i32(0)) == ("", 0)
    assert parse_execute(b"cur\x00" + i32(500)) == ("cur", 500)


def test_parse_describe_or_close() -> None:
    assert parse_describe_or_close(b"S\x00", "Describe") == (b"S", "")
    assert parse_describe_or_close(b"Pportal\x00", "Close") == (b"P", "portal")
    with pytest.raises(ProtocolViolation, match=r"malformed Close message: target b'X'"):
        parse_describe_or_close(b"Xname\x00", "Close")
    with pytest.raises(ProtocolViolation, match="malformed Describe message"):
        parse_describe_or_close(b"", "Describe")


def test_parse_query() -> None:
    assert parse_query(b"SELECT 'h\xc3\xa9'\x00") == "SELECT 'hé'"
    assert parse_query(b"\x00") == ""  # an empty query string is legal (EmptyQueryResponse)


@pytest.mark.parametrize(
    "body", [b"", b"SELECT 1", b"SELECT 1\x00; DROP TABLE t\x00", b"SELECT 1\x00x", b"\xff\x00"]
)
def test_malformed_query(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_query(body)


@pytest.mark.parametrize(
    ("pg_name", "codec"),
    [
        ("UTF8", "utf-8"),
        ("utf-8", "utf-8"),
        ("unicode", "utf-8"),
        ("SQL_ASCII", "latin-1"),
        ("latin1", "latin-1"),
        ("WIN1251", "cp1251"),
        ("SJIS", None),  # refused: trail bytes can be 0x5C
        ("GBK", None),
        ("BIG5", None),
        ("MULE_INTERNAL", None),
        ("", None),
    ],
)
def test_python_encoding(pg_name: str, codec: str | None) -> None:
    assert python_encoding(pg_name) == codec


def test_statement_text_in_the_client_encoding() -> None:
    assert parse_query(b"SELECT '\xe9'\x00", "latin-1") == "SELECT 'é'"
    sql = "SELECT 'Привет'"
    assert parse_query(sql.encode("cp1251") + b"\x00", "cp1251") == sql
    sjis = "SELECT '日本'".encode("shift-jis")
    assert parse_parse(b"\x00" + sjis + b"\x00" + i16(0), "shift-jis").query == "SELECT '日本'"
    with pytest.raises(ProtocolViolation, match="not valid utf-8"):
        parse_query(sql.encode("cp1251") + b"\x00")


@settings(max_examples=300, deadline=None)
@given(
    text=st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"")),
    codec=st.sampled_from(sorted(set(PG_ENCODINGS.values()))),
)
def test_any_encoding_decodes_or_raises_protocol_violation(text: bytes, codec: str) -> None:
    with contextlib.suppress(ProtocolViolation):
        parse_query(text + b"\x00", codec)


def test_parse_sasl_initial() -> None:
    assert parse_sasl_initial(b"SCRAM-SHA-256\x00" + i32(3) + b"abc") == ("SCRAM-SHA-256", b"abc")
    assert parse_sasl_initial(b"SCRAM-SHA-256\x00" + i32(-1)) == ("SCRAM-SHA-256", b"")
    assert parse_sasl_initial(b"SCRAM-SHA-256\x00" + i32(0)) == ("SCRAM-SHA-256", b"")
    with pytest.raises(ProtocolViolation, match="truncated"):
        parse_sasl_initial(b"SCRAM-SHA-256\x00" + i32(-2))
    with pytest.raises(ProtocolViolation, match="unterminated"):
        parse_sasl_initial(b"SCRAM-SHA-256")


def test_parse_password() -> None:
    assert parse_password(b"md5abc\x00") == b"md5abc"
    assert parse_password(b"\x00") == b""
    for body in (b"", b"secret", b"se\x00cret\x00", b"secret\x00\x00"):
        with pytest.raises(ProtocolViolation, match="malformed password message"):
            parse_password(body)


# ------------------------------------------------------------------ make_* / parse_* round trips

names = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=1, max_size=20)
values = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=100, deadline=None)
@given(params=st.dictionaries(names, values, min_size=1, max_size=6), minor=st.integers(0, 0xFFFF))
def test_make_startup_round_trip(params: dict[str, str], minor: int) -> None:
    packet = make_startup(params, version=(3 << 16) | minor)
    assert struct.unpack_from("!i", packet)[0] == len(packet)
    assert parse_startup(packet) == StartupMessage((3 << 16) | minor, params)
    assert read_client([packet]) == [(b"", packet)]


def test_make_error_round_trip() -> None:
    msg = make_error(
        "ERROR", "42501", "permission denied for table t", detail="writes need approval", hint="ask"
    )
    assert msg[:1] == b"E"
    assert struct.unpack_from("!i", msg, 1)[0] == len(msg) - 1
    assert msg.endswith(b"\x00\x00")
    assert parse_error_fields(msg[5:]) == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "permission denied for table t",
        "D": "writes need approval",
        "H": "ask",
    }
    notice = make_error("NOTICE", "00000", "héllo", notice=True)
    assert notice[:1] == b"N"
    assert parse_error_fields(notice[5:]) == {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "héllo"}


def test_parse_error_fields_of_a_server_error() -> None:
    body = (
        b'SERROR\x00VERROR\x00C42P01\x00Mrelation "nope" does not exist\x00P15\x00'
        b"Fparse_relation.c\x00L1449\x00RparserOpenTable\x00\x00"
    )
    fields = parse_error_fields(body)
    assert fields["C"] == "42P01"
    assert fields["M"] == 'relation "nope" does not exist'
    assert fields["P"] == "15"
    assert fields["R"] == "parserOpenTable"


@settings(max_examples=100, deadline=None)
@given(name=names, value=values)
def test_parameter_status_round_trip(name: str, value: str) -> None:
    msg = make_parameter_status(name, value)
    assert msg == frame(b"S", cstr(name) + cstr(value))
    assert parse_parameter_status(msg[5:]) == (name, value)


@pytest.mark.parametrize("body", [b"a\x00", b"a\x00b\x00c\x00", b"a\x00b", b"a\x00\xff\x00"])
def test_malformed_parameter_status(body: bytes) -> None:
    with pytest.raises(ProtocolViolation, match="ParameterStatus"):
        parse_parameter_status(body)


@pytest.mark.parametrize("key", [b"\x01\x02\x03\x04", bytes(range(32))])
def test_backend_key_data_round_trip(key: bytes) -> None:
    msg = make_backend_key_data(-5, key)
    assert msg == b"K" + i32(8 + len(key)) + i32(-5) + key
    assert parse_backend_key_data(msg[5:]) == (-5, key)
    with pytest.raises(ProtocolViolation, match="BackendKeyData"):
        parse_backend_key_data(i32(1) + b"abc")


@pytest.mark.parametrize(
    ("code", "payload"),
    [(AuthCode.OK, b""), (AuthCode.MD5_PASSWORD, b"\x01\x02\x03\x04"), (AuthCode.SASL_FINAL, b"v=abc")],
)
def test_auth_round_trip(code: AuthCode, payload: bytes) -> None:
    msg = make_auth(code, payload)
    assert msg == b"R" + i32(8 + len(payload)) + i32(int(code)) + payload
    assert parse_auth(msg[5:]) == (code, payload)


def test_auth_sasl_and_short_auth() -> None:
    msg = make_auth_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    body = i32(10) + b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    assert msg == frame(b"R", body)
    with pytest.raises(ProtocolViolation, match="Authentication"):
        parse_auth(b"\x00\x00\x00")


def test_make_negotiate_protocol_version_layout() -> None:
    # PostgreSQL's server writes its full FrontendProtocol (3.0 = 196608) in the first Int32.
    msg = make_negotiate_protocol_version(PROTOCOL_3_0, ["_pq_.compression", "_pq_.x"])
    names_ = b"_pq_.compression\x00_pq_.x\x00"
    assert msg == b"v" + i32(4 + 4 + 4 + len(names_)) + i32(196608) + i32(2) + names_
    assert make_negotiate_protocol_version(0, []) == b"v\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"


def test_make_ready_for_query() -> None:
    assert make_ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"


# ------------------------------------------------------------------ BackendScanner


def row_description(columns: list[tuple[str, int]]) -> bytes:
    body = i16(len(columns))
    for name, type_oid in columns:
        body += cstr(name) + struct.pack("!ihihih", 16384, 1, type_oid, -1, -1, 0)
    return frame(b"T", body)


def data_row(values: list[bytes | None]) -> bytes:
    body = i16(len(values))
    for value in values:
        body += i32(-1) if value is None else i32(len(value)) + value
    return frame(b"D", body)


def status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def ready(state: bytes) -> bytes:
    return frame(b"Z", state)


SERVER_STREAM = (
    frame(b"R", i32(0))
    + status("server_version", "16.4")
    + status("client_encoding", "UTF8")
    + frame(b"K", i32(4242) + b"\xde\xad\xbe\xef")
    + ready(b"I")
    + row_description([("id", 23), ("note", 25)])
    + data_row([b"1", b"first"])
    + data_row([b"2", None])
    + frame(b"C", cstr("SELECT 2"))
    + ready(b"I")
    + frame(b"C", cstr("BEGIN"))
    + ready(b"T")
    + frame(b"E", b"SERROR\x00C42P01\x00Mnope\x00\x00")
    + ready(b"E")
    + frame(b"C", cstr("ROLLBACK"))
    + status("application_name", "etl-ħ")
    + frame(b"C", cstr("SET"))
    + ready(b"I")
    + frame(b"1", b"")
    + frame(b"2", b"")
    + data_row([b"Z" * 40])
    + frame(b"C", cstr("SELECT 1"))
    + ready(b"I")
)
SERVER_READY = [b"I", b"I", b"T", b"E", b"I", b"I"]
SERVER_PARAMS = [("server_version", "16.4"), ("client_encoding", "UTF8"), ("application_name", "etl-ħ")]


def relay(chunks: list[bytes]) -> tuple[bytes, list[bytes], list[tuple[str, str]], int]:
    """The session's relay loop: scan `held + chunk`, forward all but `keep`, hold `keep` back."""
    scanner = BackendScanner()
    held = b""
    forwarded = b""
    statuses: list[bytes] = []
    params: list[tuple[str, str]] = []
    max_keep = 0
    for chunk in chunks:
        data = held + chunk
        found, param_spans, keep = scanner.scan(data)
        out, held = data[: len(data) - keep], data[len(data) - keep :]
        for offset, state in found:
            assert out[offset : offset + 1] == b"Z"
            assert out[offset + 1 : offset + 6] == b"\x00\x00\x00\x05" + bytes([state])
            statuses.append(bytes([state]))
        for start, end in param_spans:
            assert out[start : start + 1] == b"S"
            assert end == start + 1 + struct.unpack_from("!i", out, start + 1)[0] <= len(out)
            params.append(parse_parameter_status(out[start + 5 : end]))
        if not held.startswith(b"S"):
            max_keep = max(max_keep, keep)
        forwarded += out
    assert held == b""
    return forwarded, statuses, params, max_keep


def test_scanner_whole_stream() -> None:
    forwarded, statuses, params, _ = relay([SERVER_STREAM])
    assert forwarded == SERVER_STREAM
    assert statuses == SERVER_READY
    assert params == SERVER_PARAMS


def test_scanner_byte_by_byte() -> None:
    forwarded, statuses, params, max_keep = relay(
        [SERVER_STREAM[i : i + 1] for i in range(len(SERVER_STREAM))]
    )
    assert forwarded == SERVER_STREAM
    assert statuses == SERVER_READY
    assert params == SERVER_PARAMS
    assert max_keep < 6


@settings(max_examples=300, deadline=None)
@given(cuts=cut_points(len(SERVER_STREAM)))
def test_scanner_random_splits(cuts: list[int]) -> None:
    forwarded, statuses, params, max_keep = relay(split(SERVER_STREAM, cuts))
    assert forwarded == SERVER_STREAM
    assert statuses == SERVER_READY
    assert len(statuses) == SERVER_STREAM.count(b"Z\x00\x00\x00\x05")
    assert params == SERVER_PARAMS
    assert max_keep < 6


server_message = st.one_of(
    st.sampled_from([b"I", b"T", b"E"]).map(ready),
    st.tuples(names, values).map(lambda nv: status(*nv)),
    st.tuples(st.sampled_from(list(b"TDCEN123nsKRtAIdcGHW")), st.binary(max_size=60)).map(
        lambda tb: frame(bytes([tb[0]]), tb[1])
    ),
)


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(server_message, max_size=15), data=st.data())
def test_scanner_random_streams(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(messages)
    cuts = data.draw(cut_points(len(stream)))
    forwarded, statuses, params, max_keep = relay(split(stream, cuts))
    assert forwarded == stream
    assert statuses == [m[5:6] for m in messages if m[:1] == b"Z"]
    assert params == [parse_parameter_status(m[5:]) for m in messages if m[:1] == b"S"]
    assert max_keep < 6


def test_scanner_accepts_memoryview_and_bytearray() -> None:
    for wrap in (memoryview, bytearray):
        found, params, keep = BackendScanner().scan(wrap(SERVER_STREAM))
        assert [bytes([s]) for _, s in found] == SERVER_READY
        assert len(params) == 3
        assert keep == 0


def test_big_data_row_is_skipped_without_buffering() -> None:
    row = data_row([b"x" * (1024 * 1024)])
    stream = frame(b"T", i16(1) + cstr("blob") + struct.pack("!ihihih", 0, 0, 17, -1, -1, 1)) + row
    stream += frame(b"C", cstr("SELECT 1")) + ready(b"I")
    chunks = [stream[i : i + 8191] for i in range(0, len(stream), 8191)]
    scanner = BackendScanner()
    held = b""
    keeps = []
    statuses = []
    for chunk in chunks:
        data = held + chunk
        found, _, keep = scanner.scan(data)
        keeps.append(keep)
        held = data[len(data) - keep :] if keep else b""
        statuses += [s for _, s in found]
    assert max(keeps) < 6
    assert statuses == [ord("I")]
    assert len(chunks) > 100


def test_long_parameter_status_is_relayed_without_being_read() -> None:
    big = status("huge", "v" * (MAX_HELD_BACK + 10))
    stream = big + status("small", "1") + ready(b"I")
    forwarded, statuses, params, _ = relay([stream[i : i + 4096] for i in range(0, len(stream), 4096)])
    assert forwarded == stream
    assert params == [("small", "1")]
    assert statuses == [b"I"]


@pytest.mark.parametrize("length", [3, 0, -1])
def test_scanner_refuses_short_length(length: int) -> None:
    with pytest.raises(ProtocolViolation, match=f"invalid message length {length}"):
        BackendScanner().scan(ready(b"I") + b"D" + i32(length))


@pytest.mark.parametrize("body", [b"", b"II", b"I\x00\x00"])
def test_scanner_refuses_malformed_ready_for_query(body: bytes) -> None:
    msg = frame(b"Z", body)
    with pytest.raises(ProtocolViolation, match="malformed ReadyForQuery"):
        BackendScanner().scan(msg)
    with pytest.raises(ProtocolViolation, match="malformed ReadyForQuery"):
        BackendScanner().scan(msg[:5])  # refused as soon as the header is in


def test_scanner_refuses_bad_header_after_a_skipped_body() -> None:
    stream = data_row([b"a" * 100]) + b"C" + i32(2)
    scanner = BackendScanner()
    assert scanner.scan(stream[:50]) == ([], [], 0)
    with pytest.raises(ProtocolViolation):
        scanner.scan(stream[50:])


def test_reader_buffer_stays_bounded_when_chunks_never_align() -> None:
    # A long CopyData stream whose chunk boundaries always fall inside a message.
    reader = FrontendReader()
    reader.startup_done()
    message = b"d" + (4 + 1000).to_bytes(4, "big") + b"x" * 1000
    stream = message * 2000
    chunk = 777
    for start in range(0, len(stream), chunk):
        reader.feed(stream[start : start + chunk])
        while reader.next_raw() is not None:
            pass
        assert reader.buffered < len(message) + chunk
        assert len(reader._buf) < 2 * (len(message) + chunk)

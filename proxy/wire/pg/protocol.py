"""PostgreSQL wire protocol v3, sans-IO: framing, and parse_*/make_* for what QueryBase reads or writes.

Theory of operation (https://www.postgresql.org/docs/current/protocol-message-formats.html):
every message after startup is a type byte, an Int32 length that counts itself, and a body. The
startup phase has untyped packets: Int32 length, Int32 code (protocol version or a request code),
body. `FrontendReader` frames client bytes into `(type, body)` pairs, handling the startup phase;
`BackendScanner` walks upstream bytes *without copying them*, reporting only ReadyForQuery (its
offset and transaction status), so a chunk can be forwarded as one write or split right there.

Nothing here does I/O. Malformed input raises `ProtocolViolation`, never another exception.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from proxy.errors import QueryBaseError

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

MAX_STARTUP_PACKET = 10_000  # PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH)
MAX_MESSAGE = 256 * 1024 * 1024  # a whole message is buffered; larger ones end the session

_I32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")
_I16 = struct.Struct("!h")


class ProtocolViolation(QueryBaseError):
    """The peer broke the wire protocol; the connection ends after this is reported."""

    sqlstate = "08P01"  # protocol_violation
    code = "protocol"


class FrontendType(bytes, enum.Enum):
    """Message type bytes a client sends."""

    BIND = b"B"
    CLOSE = b"C"
    COPY_DATA = b"d"
    COPY_DONE = b"c"
    COPY_FAIL = b"f"
    DESCRIBE = b"D"
    EXECUTE = b"E"
    FLUSH = b"H"
    FUNCTION_CALL = b"F"
    PARSE = b"P"
    PASSWORD = b"p"  # also SASLInitialResponse / SASLResponse / GSSResponse
    QUERY = b"Q"
    SYNC = b"S"
    TERMINATE = b"X"


class BackendType(bytes, enum.Enum):
    """Message type bytes a server sends."""

    AUTHENTICATION = b"R"
    BACKEND_KEY_DATA = b"K"
    BIND_COMPLETE = b"2"
    CLOSE_COMPLETE = b"3"
    COMMAND_COMPLETE = b"C"
    COPY_BOTH_RESPONSE = b"W"
    COPY_DATA = b"d"
    COPY_DONE = b"c"
    COPY_IN_RESPONSE = b"G"
    COPY_OUT_RESPONSE = b"H"
    DATA_ROW = b"D"
    EMPTY_QUERY_RESPONSE = b"I"
    ERROR_RESPONSE = b"E"
    NEGOTIATE_PROTOCOL_VERSION = b"v"
    NO_DATA = b"n"
    NOTICE_RESPONSE = b"N"
    NOTIFICATION_RESPONSE = b"A"
    PARAMETER_DESCRIPTION = b"t"
    PARAMETER_STATUS = b"S"
    PARSE_COMPLETE = b"1"
    PORTAL_SUSPENDED = b"s"
    READY_FOR_QUERY = b"Z"
    ROW_DESCRIPTION = b"T"


class AuthCode(enum.IntEnum):
    OK = 0
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


# ---------------------------------------------------------------------------------- startup


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    key: bytes


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def _cstrings(body: bytes | memoryview, what: str) -> list[str]:
    data = bytes(body)
    if not data.endswith(b"\x00"):
        raise ProtocolViolation(f"{what}: missing terminator")
    try:
        return [part.decode("utf-8") for part in data[:-1].split(b"\x00")]
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what}: invalid UTF-8") from None


def parse_startup(packet: bytes) -> StartupPacket:
    """Parse one whole untyped startup packet (length included)."""
    if len(packet) < 8:
        raise ProtocolViolation("startup packet too short")
    code = _I32.unpack_from(packet, 4)[0]
    if code == SSL_REQUEST_CODE and len(packet) == 8:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and len(packet) == 8:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if not 12 <= len(packet) <= 12 + 256:  # keys are at most 256 bytes
            raise ProtocolViolation("invalid CancelRequest length")
        return CancelRequest(_I32.unpack_from(packet, 8)[0], packet[12:])
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    body = packet[8:]
    if body in (b"", b"\x00"):
        raise ProtocolViolation("startup packet has no parameters")
    parts = _cstrings(body, "startup packet")
    if parts[-1] != "":
        raise ProtocolViolation("startup packet: parameters not terminated")
    parts = parts[:-1]
    if len(parts) % 2:
        raise ProtocolViolation("startup packet: a parameter has no value")
    params: dict[str, str] = {}
    for name, value in zip(parts[::2], parts[1::2], strict=True):
        if not name:
            raise ProtocolViolation("startup packet: empty parameter name")
        params[name] = value
    return StartupMessage(code, params)


def make_startup(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 8) + _I32.pack(version) + body


def make_ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


def make_cancel_request(pid: int, key: bytes) -> bytes:
    return _I32.pack(12 + len(key)) + _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(pid) + key


# ---------------------------------------------------------------------------------- framing


def message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + _I32.pack(len(body) + 4) + body


class FrontendReader:
    """Frames client bytes. Feed chunks; `next()` returns a whole message or None.

    In the startup phase messages are untyped and come back as `(b"", packet)`; after
    `startup_done()` they are `(type byte, body)`.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        # A fresh chunk is kept as the bytes object it arrived as (no copy); only a chunk that
        # ends inside a message is moved into a bytearray to be joined with the next one.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._startup = True
        self._max = max_message

    def feed(self, data: bytes) -> None:
        if self._pos == len(self._buf):
            self._buf, self._pos = data, 0
        elif isinstance(self._buf, bytes):
            self._buf = bytearray(memoryview(self._buf)[self._pos :]) + data
            self._pos = 0
        else:
            if self._pos:  # drop what was consumed, so a stream that never aligns stays bounded
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += data

    def startup_done(self) -> None:
        self._startup = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def next(self) -> tuple[bytes, bytes] | None:
        """The next whole message as (type, body); in the startup phase (b"", whole packet)."""
        found = self.next_raw()
        if found is None or self._startup:
            return found
        return found[0], found[1][5:]

    def next_raw(self) -> tuple[bytes, bytes] | None:
        """The next whole message as (type, the message's bytes including its header)."""
        buf, pos = self._buf, self._pos
        if self._startup:
            if len(buf) - pos < 4:
                return None
            length = _I32.unpack_from(buf, pos)[0]
            if not 8 <= length <= MAX_STARTUP_PACKET:
                raise ProtocolViolation(f"invalid startup packet length {length}")
            if len(buf) - pos < length:
                return None
            self._pos = pos + length
            return b"", bytes(buf[pos : pos + length])
        if len(buf) - pos < 5:
            return None
        type_byte, length = _HEADER.unpack_from(buf, pos)
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length} for type {type_byte!r}")
        if length > self._max:
            raise ProtocolViolation(f"message of {length} bytes exceeds the {self._max}-byte limit")
        end = pos + 1 + length
        if len(buf) < end:
            return None
        self._pos = end
        if pos == 0 and end == len(buf) and type(buf) is bytes:
            return type_byte, buf  # the whole chunk is this message: no copy
        return type_byte, bytes(buf[pos:end])


# ------------------------------------------------------------------------- frontend messages


# PostgreSQL client_encoding names → Python codecs. Statement text arrives in the client's
# encoding; SQL_ASCII means "bytes as they are", which latin-1 maps one to one.
PG_ENCODINGS = {
    "UTF8": "utf-8", "UNICODE": "utf-8", "SQL_ASCII": "latin-1", "LATIN1": "latin-1",
    "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4", "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14", "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16", "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8", "WIN866": "cp866", "WIN874": "cp874",
    "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252", "WIN1253": "cp1253",
    "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8-r", "KOI8U": "koi8-u", "EUC_JP": "euc-jp",
    "EUC_JIS_2004": "euc-jis-2004", "EUC_KR": "euc-kr", "EUC_CN": "gb2312",
}  # fmt: skip
# Not read at all: SJIS, SHIFT_JIS_2004, BIG5, GBK, GB18030, UHC and JOHAB. Their multibyte
# characters can end in an ASCII byte (0x5C is a backslash), so a decoder that differs from the
# server's by one byte would see a quote or backslash where the server sees a character.


def python_encoding(pg_name: str) -> str | None:
    """The Python codec for a PostgreSQL encoding name, or None if QueryBase cannot decode it."""
    return PG_ENCODINGS.get(pg_name.upper().replace("-", "_").replace("UTF_8", "UTF8"))


def _text(data: bytes, what: str, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise ProtocolViolation(f"malformed {what} message: not valid {encoding}") from None


def parse_query(body: bytes, encoding: str = "utf-8") -> str:
    if body.count(b"\x00") != 1 or not body.endswith(b"\x00"):
        raise ProtocolViolation("malformed Query message")
    return _text(body[:-1], "Query", encoding)


class _Cursor:
    __slots__ = ("data", "encoding", "pos", "what")

    def __init__(self, data: bytes, what: str, encoding: str = "utf-8") -> None:
        self.data, self.pos, self.what, self.encoding = data, 0, what, encoding

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolViolation(f"malformed {self.what} message: unterminated string")
        text = _text(self.data[self.pos : end], self.what, self.encoding)
        self.pos = end + 1
        return text

    def int16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolViolation(f"malformed {self.what} message: truncated")
        value: int = _I16.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return value

    def int32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ProtocolViolation(f"malformed {self.what} message: truncated")
        value: int = _I32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolViolation(f"malformed {self.what} message: truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def count(self, kind: str) -> int:
        n = self.int16()
        if n < 0:
            raise ProtocolViolation(f"malformed {self.what} message: negative {kind} count")
        return n

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolViolation(f"malformed {self.what} message: trailing bytes")


@dataclass(frozen=True, slots=True)
class Parse:
    statement: str
    query: str
    param_types: tuple[int, ...]


def parse_parse(body: bytes, encoding: str = "utf-8") -> Parse:
    cur = _Cursor(body, "Parse", encoding)
    statement, query = cur.cstring(), cur.cstring()
    types = tuple(cur.int32() & 0xFFFFFFFF for _ in range(cur.count("parameter type")))
    cur.end()
    return Parse(statement, query, types)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...] = field(default=())


def parse_bind(body: bytes, encoding: str = "utf-8") -> Bind:
    cur = _Cursor(body, "Bind", encoding)
    portal, statement = cur.cstring(), cur.cstring()
    formats = tuple(cur.int16() for _ in range(cur.count("format")))
    params: list[bytes | None] = []
    for _ in range(cur.count("parameter")):
        size = cur.int32()
        params.append(None if size == -1 else cur.take(size))
    results = tuple(cur.int16() for _ in range(cur.count("result format")))
    cur.end()
    return Bind(portal, statement, formats, tuple(params), results)


def parse_execute(body: bytes, encoding: str = "utf-8") -> tuple[str, int]:
    """(portal, max rows)."""
    cur = _Cursor(body, "Execute", encoding)
    portal, max_rows = cur.cstring(), cur.int32()
    cur.end()
    return portal, max_rows


def parse_describe_or_close(body: bytes, what: str, encoding: str = "utf-8") -> tuple[bytes, str]:
    """(b"S" or b"P", name) of a Describe or Close."""
    cur = _Cursor(body, what, encoding)
    target = cur.take(1)
    if target not in (b"S", b"P"):
        raise ProtocolViolation(f"malformed {what} message: target {target!r}")
    name = cur.cstring()
    cur.end()
    return target, name


def parse_password(body: bytes) -> bytes:
    """PasswordMessage body for cleartext or md5 (NUL-terminated)."""
    if not body.endswith(b"\x00") or body.count(b"\x00") != 1:
        raise ProtocolViolation("malformed password message")
    return body[:-1]


def parse_sasl_initial(body: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse: (mechanism, initial client data)."""
    cur = _Cursor(body, "SASLInitialResponse")
    mechanism = cur.cstring()
    size = cur.int32()
    data = b"" if size == -1 else cur.take(size)
    cur.end()
    return mechanism, data


def make_query(sql: str, encoding: str = "utf-8") -> bytes:
    return message(b"Q", sql.encode(encoding) + b"\x00")


def make_password(password: bytes) -> bytes:
    return message(b"p", password + b"\x00")


def make_sasl_initial(mechanism: str, data: bytes) -> bytes:
    return message(b"p", mechanism.encode() + b"\x00" + _I32.pack(len(data)) + data)


def make_sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def make_parse(name: bytes, query: bytes, type_oids: list[int]) -> bytes:
    """Parse with the query already in the session's encoding."""
    oids = b"".join(struct.pack("!I", oid & 0xFFFFFFFF) for oid in type_oids)
    return message(b"P", name + b"\x00" + query + b"\x00" + _I16.pack(len(type_oids)) + oids)


def make_bind(
    portal: bytes,
    statement: bytes,
    formats: list[int],
    values: list[bytes | None],
    result_formats: list[int],
) -> bytes:
    body = [portal, b"\x00", statement, b"\x00", _I16.pack(len(formats))]
    body += [_I16.pack(f) for f in formats]
    body.append(_I16.pack(len(values)))
    for value in values:
        body.append(_I32.pack(-1) if value is None else _I32.pack(len(value)) + value)
    body.append(_I16.pack(len(result_formats)))
    body += [_I16.pack(f) for f in result_formats]
    return message(b"B", b"".join(body))


def make_describe(what: bytes, name: bytes) -> bytes:
    """Describe a statement (`b"S"`) or portal (`b"P"`)."""
    return message(b"D", what + name + b"\x00")


def make_close(what: bytes, name: bytes) -> bytes:
    """Close of a statement (b"S") or portal (b"P")."""
    return message(b"C", what + name + b"\x00")


def make_execute(portal: bytes, max_rows: int = 0) -> bytes:
    return message(b"E", portal + b"\x00" + _I32.pack(max_rows))


def parse_row_description(body: bytes, encoding: str = "utf-8") -> list[str]:
    """RowDescription: the column names."""
    cur = _Cursor(body, "RowDescription", encoding)
    names = []
    for _ in range(cur.count("column")):
        names.append(cur.cstring())
        cur.take(18)
    cur.end()
    return names


def parse_data_row(body: bytes) -> list[bytes | None]:
    cur = _Cursor(body, "DataRow")
    values: list[bytes | None] = []
    for _ in range(cur.count("column")):
        size = cur.int32()
        values.append(None if size == -1 else cur.take(size))
    cur.end()
    return values


def parse_command_complete(body: bytes, encoding: str = "utf-8") -> tuple[str, int | None]:
    """CommandComplete: (tag, rows) — rows is the tag's last number for INSERT/UPDATE/DELETE/
    MERGE/SELECT/COPY/MOVE/FETCH, else None."""
    tag = _text(body.rstrip(b"\x00"), "command tag", encoding)
    last = tag.rsplit(" ", 1)[-1]
    verb = tag.split(" ", 1)[0]
    counted = verb in {"INSERT", "UPDATE", "DELETE", "MERGE", "SELECT", "COPY", "MOVE", "FETCH"}
    return tag, int(last) if counted and last.isdigit() else None


TEXT_OID = 25


def make_row_description(columns: list[str]) -> bytes:
    """RowDescription of text columns (type text, text format)."""
    body = [_I16.pack(len(columns))]
    for name in columns:
        body.append(name.encode("utf-8") + b"\x00" + struct.pack("!IhIhih", 0, 0, TEXT_OID, -1, -1, 0))
    return message(b"T", b"".join(body))


def make_data_row(values: list[bytes | None]) -> bytes:
    body = [_I16.pack(len(values))]
    body += [_I32.pack(-1) if v is None else _I32.pack(len(v)) + v for v in values]
    return message(b"D", b"".join(body))


def make_command_complete(tag: str) -> bytes:
    return message(b"C", tag.encode("utf-8") + b"\x00")


SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")


# -------------------------------------------------------------------------- backend messages


def make_auth(code: AuthCode, payload: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + payload)


def make_auth_sasl(mechanisms: list[str]) -> bytes:
    return make_auth(AuthCode.SASL, b"".join(m.encode() + b"\x00" for m in mechanisms) + b"\x00")


def make_parameter_status(name: str, value: str) -> bytes:
    return message(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")


def make_backend_key_data(pid: int, key: bytes) -> bytes:
    return message(b"K", _I32.pack(pid) + key)


def make_ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def make_negotiate_protocol_version(newest_minor: int, unsupported: list[str]) -> bytes:
    body = _I32.pack(newest_minor) + _I32.pack(len(unsupported))
    body += b"".join(name.encode() + b"\x00" for name in unsupported)
    return message(b"v", body)


def make_error(
    severity: str, sqlstate: str, text: str, *, detail: str = "", hint: str = "", notice: bool = False
) -> bytes:
    """ErrorResponse (or NoticeResponse) with the fields clients display."""
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", text)]
    if detail:
        fields.append((b"D", detail))
    if hint:
        fields.append((b"H", hint))
    body = b"".join(code + value.encode("utf-8", "replace") + b"\x00" for code, value in fields) + b"\x00"
    return message(b"N" if notice else b"E", body)


def error_response(exc: QueryBaseError, severity: str = "ERROR") -> bytes:
    """The ErrorResponse for any QueryBase error (proxy/errors.py): its SQLSTATE, text, detail, hint."""
    return make_error(severity, exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)


def parse_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse body → {field code: value}."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def parse_auth(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise ProtocolViolation("malformed Authentication message")
    return _I32.unpack_from(body)[0], body[4:]


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    parts = _cstrings(body, "ParameterStatus")
    if len(parts) != 2:
        raise ProtocolViolation("malformed ParameterStatus message")
    return parts[0], parts[1]


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise ProtocolViolation("malformed BackendKeyData message")
    return _I32.unpack_from(body)[0], body[4:]


class BackendReader:
    """Frames server bytes into whole `(type, body)` messages (login and control exchanges)."""

    def __init__(self) -> None:
        self._reader = FrontendReader()
        self._reader.startup_done()

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    def next(self) -> tuple[bytes, bytes] | None:
        return self._reader.next()

    @property
    def buffered(self) -> int:
        return self._reader.buffered


MAX_HELD_BACK = 64 * 1024  # a ParameterStatus longer than this is relayed without being read


_MARKED = frozenset({b"1", b"2", b"3", b"E"})


class BackendScanner:
    """Walks a relayed server byte stream header by header without buffering bodies.

    `scan(chunk)` returns `(ready, params, keep)`: `ready` lists `(offset, status)` for every
    ReadyForQuery in the chunk, `params` lists `(start, end)` of every whole ParameterStatus
    message (so the session can follow `SET application_name …`), and `keep` is how many trailing
    bytes the caller must hold back and prepend to the next chunk — a header cut by the chunk
    boundary, a ReadyForQuery whose status byte has not arrived, or a ParameterStatus not yet
    complete. Because of `keep`, every message start the caller forwards lies inside the chunk it
    forwards, so it can always split a chunk right before a ReadyForQuery.

    `marks` collects, in order, the type bytes (as ints) of every ParseComplete, BindComplete,
    CloseComplete, ErrorResponse and ReadyForQuery seen: what the session's model of statements
    and portals (proxy/wire/pg/extended.py) learns from; `mark_offsets` where each starts in its chunk
    (a completion is five bytes, so it is always whole in the chunk that has its header). The
    caller empties both after each scan.
    """

    def __init__(self) -> None:
        self._skip = 0  # body bytes of the current message still to pass
        self.marks: list[int] = []
        self.mark_offsets: list[int] = []  # where each mark's message starts in its chunk

    def scan(
        self, chunk: bytes | bytearray | memoryview
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
        ready: list[tuple[int, int]] = []
        params: list[tuple[int, int]] = []
        pos, size = 0, len(chunk)
        if self._skip:
            step = min(self._skip, size)
            self._skip -= step
            pos = step
        while pos < size:
            if size - pos < 5:
                return ready, params, size - pos
            type_byte, length = _HEADER.unpack_from(chunk, pos)
            if length < 4:
                raise ProtocolViolation(f"server sent invalid message length {length}")
            end = pos + 1 + length
            if type_byte == b"Z":
                if length != 5:
                    raise ProtocolViolation("server sent a malformed ReadyForQuery")
                if size - pos < 6:
                    return ready, params, size - pos
                ready.append((pos, chunk[pos + 5]))
                self.marks.append(0x5A)
                self.mark_offsets.append(pos)
            elif type_byte in _MARKED:
                self.marks.append(type_byte[0])
                self.mark_offsets.append(pos)
            elif type_byte == b"S" and length <= MAX_HELD_BACK:
                if end > size:
                    return ready, params, size - pos
                params.append((pos, end))
            if end > size:
                self._skip = end - size
                return ready, params, 0
            pos = end
        return ready, params, 0

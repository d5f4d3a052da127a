"""MySQL client/server protocol, sans-IO: packet framing, login packets, commands and result scanning.

Theory of operation (https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html):
every packet is a 3-byte little-endian payload length, a 1-byte sequence id and the payload. A
payload of 0xFFFFFF bytes or more is cut into 0xFFFFFF-byte packets followed by a shorter one
(possibly empty), with consecutive sequence ids; `PacketReader` reassembles them and `make_packets`
cuts them. The sequence id restarts at 0 with each command and counts every packet of the
exchange in both directions.

After the server's HandshakeV10 the client sends a HandshakeResponse41 (or first a 32-byte
SSLRequest, then the response over TLS); the authentication plugins then trade AuthSwitchRequest
(0xFE) and AuthMoreData (0x01) packets until the server sends OK (0x00) or ERR (0xFF). In the
command phase each client payload starts with a `Command` byte. What comes back depends on the
command, so `ResultScanner.start(command)` is told what was asked and then fed the server's
payloads one by one; it reports when a response (possibly several result sets under
MORE_RESULTS_EXISTS) is complete and keeps the last server status flags, reading only first bytes,
terminators and counts: rows and column definitions pass through undecoded.

Only what the gateway needs is decoded. Nothing here does I/O. Malformed input raises
`ProtocolViolation` (or a subclass), never another exception; `make_*` functions given impossible
arguments by their caller raise ValueError.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from proxy.errors import QueryBaseError

MAX_PACKET_PAYLOAD = 0xFFFFFF  # a physical packet's payload; this size means "continued"
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024  # a whole (reassembled) payload; larger ends the session
SCRAMBLE_LENGTH = 20
SSL_REQUEST_LENGTH = 32
UTF8MB4_GENERAL_CI = 45

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ProtocolViolation(QueryBaseError):
    """The peer broke the MySQL protocol; the connection ends after this is reported."""

    sqlstate = "08S01"  # communication link failure, what MySQL reports for network errors
    mysql_errno = 1835  # ER_MALFORMED_PACKET
    code = "protocol"


class UnknownCommand(ProtocolViolation):
    """A command byte QueryBase does not know: answered with ERR, the session may go on."""

    mysql_errno = 1047  # ER_UNKNOWN_COM_ERROR


class PacketTooLarge(ProtocolViolation):
    mysql_errno = 1153  # ER_NET_PACKET_TOO_LARGE


class PacketsOutOfOrder(ProtocolViolation):
    mysql_errno = 1156  # ER_NET_PACKETS_OUT_OF_ORDER


# -------------------------------------------------------------------------------- constants


class Capability(enum.IntFlag):
    """Capability flags (CLIENT_*), exchanged in the handshake."""

    CLIENT_LONG_PASSWORD = 1 << 0
    CLIENT_FOUND_ROWS = 1 << 1
    CLIENT_LONG_FLAG = 1 << 2
    CLIENT_CONNECT_WITH_DB = 1 << 3
    CLIENT_NO_SCHEMA = 1 << 4
    CLIENT_COMPRESS = 1 << 5
    CLIENT_ODBC = 1 << 6
    CLIENT_LOCAL_FILES = 1 << 7
    CLIENT_IGNORE_SPACE = 1 << 8
    CLIENT_PROTOCOL_41 = 1 << 9
    CLIENT_INTERACTIVE = 1 << 10
    CLIENT_SSL = 1 << 11
    CLIENT_IGNORE_SIGPIPE = 1 << 12
    CLIENT_TRANSACTIONS = 1 << 13
    CLIENT_RESERVED = 1 << 14
    CLIENT_SECURE_CONNECTION = 1 << 15  # "RESERVED2" in newer docs: 4.1 authentication
    CLIENT_MULTI_STATEMENTS = 1 << 16
    CLIENT_MULTI_RESULTS = 1 << 17
    CLIENT_PS_MULTI_RESULTS = 1 << 18
    CLIENT_PLUGIN_AUTH = 1 << 19
    CLIENT_CONNECT_ATTRS = 1 << 20
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    CLIENT_SESSION_TRACK = 1 << 23
    CLIENT_DEPRECATE_EOF = 1 << 24
    CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25
    CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
    CLIENT_QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTHENTICATION = 1 << 28
    CLIENT_CAPABILITY_EXTENSION = 1 << 29
    CLIENT_SSL_VERIFY_SERVER_CERT = 1 << 30
    CLIENT_REMEMBER_OPTIONS = 1 << 31


# What QueryBase offers clients (client-compat MY-2). Not offered: COMPRESS (not relayed),
# LOCAL_FILES (MY-13), QUERY_ATTRIBUTES (its COM_QUERY prefix is not parsed), SESSION_TRACK,
# OPTIONAL_RESULTSET_METADATA and MariaDB's extended capabilities. SSL only when TLS is on.
SERVER_CAPABILITIES = (
    Capability.CLIENT_LONG_PASSWORD
    | Capability.CLIENT_FOUND_ROWS
    | Capability.CLIENT_LONG_FLAG
    | Capability.CLIENT_CONNECT_WITH_DB
    | Capability.CLIENT_IGNORE_SPACE
    | Capability.CLIENT_PROTOCOL_41
    | Capability.CLIENT_INTERACTIVE
    | Capability.CLIENT_TRANSACTIONS
    | Capability.CLIENT_SECURE_CONNECTION
    | Capability.CLIENT_MULTI_STATEMENTS
    | Capability.CLIENT_MULTI_RESULTS
    | Capability.CLIENT_PS_MULTI_RESULTS
    | Capability.CLIENT_PLUGIN_AUTH
    | Capability.CLIENT_CONNECT_ATTRS
    | Capability.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.CLIENT_DEPRECATE_EOF
)


def server_capabilities(tls: bool) -> Capability:
    """The capability flags QueryBase advertises; CLIENT_SSL only when TLS can be started."""
    return SERVER_CAPABILITIES | Capability.CLIENT_SSL if tls else SERVER_CAPABILITIES


class ServerStatus(enum.IntFlag):
    """Server status flags carried by OK and EOF packets and the handshake."""

    SERVER_STATUS_IN_TRANS = 1 << 0
    SERVER_STATUS_AUTOCOMMIT = 1 << 1
    SERVER_MORE_RESULTS_EXISTS = 1 << 3
    SERVER_QUERY_NO_GOOD_INDEX_USED = 1 << 4
    SERVER_QUERY_NO_INDEX_USED = 1 << 5
    SERVER_STATUS_CURSOR_EXISTS = 1 << 6
    SERVER_STATUS_LAST_ROW_SENT = 1 << 7
    SERVER_STATUS_DB_DROPPED = 1 << 8
    SERVER_STATUS_NO_BACKSLASH_ESCAPES = 1 << 9
    SERVER_STATUS_METADATA_CHANGED = 1 << 10
    SERVER_QUERY_WAS_SLOW = 1 << 11
    SERVER_PS_OUT_PARAMS = 1 << 12
    SERVER_STATUS_IN_TRANS_READONLY = 1 << 13
    SERVER_SESSION_STATE_CHANGED = 1 << 14


class Command(enum.IntEnum):
    """The first byte of every command-phase client payload."""

    COM_SLEEP = 0x00
    COM_QUIT = 0x01
    COM_INIT_DB = 0x02
    COM_QUERY = 0x03
    COM_FIELD_LIST = 0x04
    COM_CREATE_DB = 0x05
    COM_DROP_DB = 0x06
    COM_REFRESH = 0x07
    COM_SHUTDOWN = 0x08
    COM_STATISTICS = 0x09
    COM_PROCESS_INFO = 0x0A
    COM_CONNECT = 0x0B
    COM_PROCESS_KILL = 0x0C
    COM_DEBUG = 0x0D
    COM_PING = 0x0E
    COM_TIME = 0x0F
    COM_DELAYED_INSERT = 0x10
    COM_CHANGE_USER = 0x11
    COM_BINLOG_DUMP = 0x12
    COM_TABLE_DUMP = 0x13
    COM_CONNECT_OUT = 0x14
    COM_REGISTER_SLAVE = 0x15
    COM_STMT_PREPARE = 0x16
    COM_STMT_EXECUTE = 0x17
    COM_STMT_SEND_LONG_DATA = 0x18
    COM_STMT_CLOSE = 0x19
    COM_STMT_RESET = 0x1A
    COM_SET_OPTION = 0x1B
    COM_STMT_FETCH = 0x1C
    COM_DAEMON = 0x1D
    COM_BINLOG_DUMP_GTID = 0x1E
    COM_RESET_CONNECTION = 0x1F
    COM_CLONE = 0x20
    COM_SUBSCRIBE_GROUP_REPLICATION_STREAM = 0x21
    COM_STMT_BULK_EXECUTE = 0xFA  # MariaDB only, and only with its extended capabilities


class CursorType(enum.IntFlag):
    """COM_STMT_EXECUTE flags."""

    CURSOR_TYPE_NO_CURSOR = 0
    CURSOR_TYPE_READ_ONLY = 1
    CURSOR_TYPE_FOR_UPDATE = 2
    CURSOR_TYPE_SCROLLABLE = 4
    PARAMETER_COUNT_AVAILABLE = 8  # meaningful only with CLIENT_QUERY_ATTRIBUTES


class ColumnType(enum.IntEnum):
    """Column and parameter types (enum_field_types)."""

    MYSQL_TYPE_DECIMAL = 0
    MYSQL_TYPE_TINY = 1
    MYSQL_TYPE_SHORT = 2
    MYSQL_TYPE_LONG = 3
    MYSQL_TYPE_FLOAT = 4
    MYSQL_TYPE_DOUBLE = 5
    MYSQL_TYPE_NULL = 6
    MYSQL_TYPE_TIMESTAMP = 7
    MYSQL_TYPE_LONGLONG = 8
    MYSQL_TYPE_INT24 = 9
    MYSQL_TYPE_DATE = 10
    MYSQL_TYPE_TIME = 11
    MYSQL_TYPE_DATETIME = 12
    MYSQL_TYPE_YEAR = 13
    MYSQL_TYPE_NEWDATE = 14
    MYSQL_TYPE_VARCHAR = 15
    MYSQL_TYPE_BIT = 16
    MYSQL_TYPE_TIMESTAMP2 = 17
    MYSQL_TYPE_DATETIME2 = 18
    MYSQL_TYPE_TIME2 = 19
    MYSQL_TYPE_TYPED_ARRAY = 20
    MYSQL_TYPE_VECTOR = 242
    MYSQL_TYPE_INVALID = 243
    MYSQL_TYPE_BOOL = 244
    MYSQL_TYPE_JSON = 245
    MYSQL_TYPE_NEWDECIMAL = 246
    MYSQL_TYPE_ENUM = 247
    MYSQL_TYPE_SET = 248
    MYSQL_TYPE_TINY_BLOB = 249
    MYSQL_TYPE_MEDIUM_BLOB = 250
    MYSQL_TYPE_LONG_BLOB = 251
    MYSQL_TYPE_BLOB = 252
    MYSQL_TYPE_VAR_STRING = 253
    MYSQL_TYPE_STRING = 254
    MYSQL_TYPE_GEOMETRY = 255


class PacketKind(enum.Enum):
    """What the first packet of a response is, from its first byte (see `classify_response`)."""

    OK = "ok"
    EOF = "eof"
    ERR = "err"
    LOCAL_INFILE = "local_infile"
    DATA = "data"  # a column count, a row, a column definition, a prepare OK, …


OK_HEADER = 0x00
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
LOCAL_INFILE_HEADER = 0xFB
AUTH_MORE_DATA_HEADER = 0x01
AUTH_SWITCH_HEADER = 0xFE
CACHING_SHA2_FAST_AUTH_SUCCESS = 0x03
CACHING_SHA2_PERFORM_FULL_AUTH = 0x04


# ---------------------------------------------------------------------------- basic types


def make_lenenc_int(value: int) -> bytes:
    """Length-encoded integer: 1, 3, 4 or 9 bytes."""
    if value < 0:
        raise ValueError("a length-encoded integer cannot be negative")
    if value < 0xFB:
        return bytes((value,))
    if value <= 0xFFFF:
        return b"\xfc" + _U16.pack(value)
    if value <= 0xFFFFFF:
        return b"\xfd" + value.to_bytes(3, "little")
    if value <= 0xFFFFFFFFFFFFFFFF:
        return b"\xfe" + _U64.pack(value)
    raise ValueError("a length-encoded integer has at most 64 bits")


def make_lenenc_str(data: bytes) -> bytes:
    return make_lenenc_int(len(data)) + data


def make_nul_str(data: bytes) -> bytes:
    if b"\x00" in data:
        raise ValueError("a NUL-terminated string cannot contain NUL")
    return data + b"\x00"


class _Cursor:
    """Reads one payload front to back; every read past the end is a ProtocolViolation."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes | bytearray, what: str, pos: int = 0) -> None:
        self.data, self.pos, self.what = data, pos, what

    def fail(self, why: str) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self.what}: {why}")

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail("truncated")
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def rest(self) -> bytes:
        chunk = bytes(self.data[self.pos :])
        self.pos = len(self.data)
        return chunk

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def lenenc_int(self) -> int:
        value = self.lenenc_int_or_null()
        if value is None:
            raise self.fail("unexpected NULL (0xFB)")
        return value

    def lenenc_int_or_null(self) -> int | None:
        first = self.u8()
        if first < 0xFB:
            return first
        if first == 0xFB:
            return None
        if first == 0xFC:
            return self.u16()
        if first == 0xFD:
            return self.u24()
        if first == 0xFE:
            return int.from_bytes(self.take(8), "little")
        raise self.fail("0xFF is not a length-encoded integer")

    def lenenc_bytes(self) -> bytes:
        return self.take(self.lenenc_int())

    def nul_bytes(self) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise self.fail("unterminated string")
        chunk = bytes(self.data[self.pos : end])
        self.pos = end + 1
        return chunk

    def nul_or_rest(self) -> bytes:
        """A NUL-terminated string that some peers leave unterminated at the end of the payload."""
        return self.nul_bytes() if self.data.find(b"\x00", self.pos) >= 0 else self.rest()

    def text(self, raw: bytes, encoding: str = "utf-8") -> str:
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise self.fail(f"not valid {encoding}") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail("trailing bytes")


def read_lenenc_int(data: bytes | bytearray, pos: int = 0) -> tuple[int | None, int]:
    """(value, position after it); None for the NULL marker 0xFB."""
    cur = _Cursor(data, "length-encoded integer", pos)
    return cur.lenenc_int_or_null(), cur.pos


def read_lenenc_str(data: bytes | bytearray, pos: int = 0) -> tuple[bytes | None, int]:
    """(string, position after it); None for the NULL marker 0xFB."""
    cur = _Cursor(data, "length-encoded string", pos)
    size = cur.lenenc_int_or_null()
    return (None if size is None else cur.take(size)), cur.pos


def read_nul_str(data: bytes | bytearray, pos: int = 0) -> tuple[bytes, int]:
    cur = _Cursor(data, "NUL-terminated string", pos)
    return cur.nul_bytes(), cur.pos


# ---------------------------------------------------------------------------------- framing


def next_seq(seq: int) -> int:
    return (seq + 1) & 0xFF


def check_seq(got: int, expected: int) -> None:
    """Raise PacketsOutOfOrder unless a packet carries the sequence id the exchange is at."""
    if got != expected:
        raise PacketsOutOfOrder(f"packet sequence id {got}, expected {expected}")


def make_packets(payload: bytes, seq: int) -> tuple[bytes, int]:
    """Frame one payload as packets starting at `seq`: (wire bytes, the sequence id after them).

    A payload of 0xFFFFFF bytes or more is cut into 0xFFFFFF-byte packets; a payload whose size is
    a multiple of 0xFFFFFF ends with an empty packet so the reader knows it is complete.
    """
    if not 0 <= seq <= 0xFF:
        raise ValueError("sequence id must fit in one byte")
    if len(payload) < MAX_PACKET_PAYLOAD:
        return len(payload).to_bytes(3, "little") + bytes((seq,)) + payload, next_seq(seq)
    parts: list[bytes] = []
    view = memoryview(payload)
    pos = 0
    while True:
        chunk = view[pos : pos + MAX_PACKET_PAYLOAD]
        parts.append(len(chunk).to_bytes(3, "little") + bytes((seq,)))
        parts.append(bytes(chunk))
        seq = next_seq(seq)
        pos += len(chunk)
        if len(chunk) < MAX_PACKET_PAYLOAD:
            return b"".join(parts), seq


class PacketReader:
    """Frames a byte stream into whole payloads. Feed chunks; `next()` returns one or None.

    `next()` returns `(seq, payload)` with the sequence id of the payload's first packet; a payload
    split over several packets comes back reassembled, its continuation packets checked to carry
    consecutive ids. `last_seq` is the id of the last packet consumed, so the next packet of the
    exchange is `next_seq(reader.last_seq)`.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._max = max_payload
        self._parts: list[bytes] = []  # packets of a payload being reassembled
        self._parts_size = 0
        self._first_seq = 0
        self.last_seq = -1

    def feed(self, data: bytes) -> None:
        if self._pos == len(self._buf):
            self._buf, self._pos = data, 0  # the common case: keep the chunk, no copy
        elif isinstance(self._buf, bytes):
            self._buf = bytearray(memoryview(self._buf)[self._pos :]) + data
            self._pos = 0
        else:
            del self._buf[: self._pos]  # drop what was consumed so the buffer cannot grow forever
            self._buf += data
            self._pos = 0

    def bytes_to_next_packet(self) -> int:
        """How many more bytes complete the next physical packet (0 or less: it is all here). Lets
        a caller read exactly up to a packet boundary, leaving what follows in the socket."""
        avail = len(self._buf) - self._pos
        if avail < 4:
            return 4 - avail
        length = int.from_bytes(self._buf[self._pos : self._pos + 3], "little")
        return 4 + length - avail

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned, including packets of an incomplete payload."""
        return len(self._buf) - self._pos + self._parts_size

    def next(self) -> tuple[int, bytes] | None:
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) - pos < 4:
                return None
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            seq = buf[pos + 3]
            if self._parts:
                check_seq(seq, next_seq(self.last_seq))
            if self._parts_size + length > self._max:
                raise PacketTooLarge(f"payload of more than {self._max} bytes (max_allowed_packet) refused")
            end = pos + 4 + length
            if len(buf) < end:
                return None
            self._pos = end
            self.last_seq = seq
            payload = buf[pos + 4 : end] if type(buf) is bytes else bytes(buf[pos + 4 : end])
            if not self._parts:
                self._first_seq = seq
            if length == MAX_PACKET_PAYLOAD:
                self._parts.append(payload)
                self._parts_size += length
                continue
            if self._parts:
                self._parts.append(payload)
                payload = b"".join(self._parts)
                self._parts, self._parts_size = [], 0
            return self._first_seq, payload


# ------------------------------------------------------------------------------- handshake


@dataclass(frozen=True, slots=True)
class HandshakeV10:
    server_version: str
    connection_id: int
    scramble: bytes  # auth-plugin-data, normally 20 bytes, without the trailing NUL
    capabilities: Capability
    charset: int
    status: ServerStatus
    auth_plugin: str
    mariadb_capabilities: int = 0  # MariaDB's extended capabilities, when it does not set bit 0


def make_handshake_v10(
    server_version: str,
    connection_id: int,
    scramble20: bytes,
    capabilities: Capability,
    charset: int,
    status: ServerStatus,
    auth_plugin: str,
) -> bytes:
    """The server's first payload (protocol version 10), with a 20-byte scramble.

    CLIENT_PLUGIN_AUTH and CLIENT_SECURE_CONNECTION are always set: the layout written (scramble
    part 2, plugin name) is the one they announce.
    """
    if len(scramble20) != SCRAMBLE_LENGTH or b"\x00" in scramble20:
        raise ValueError("the scramble must be 20 non-NUL bytes")
    caps = int(capabilities) | Capability.CLIENT_PLUGIN_AUTH | Capability.CLIENT_SECURE_CONNECTION
    return b"".join(
        (
            b"\x0a",
            make_nul_str(server_version.encode("utf-8")),
            _U32.pack(connection_id & 0xFFFFFFFF),
            scramble20[:8],
            b"\x00",
            _U16.pack(caps & 0xFFFF),
            bytes((charset & 0xFF,)),
            _U16.pack(int(status) & 0xFFFF),
            _U16.pack(caps >> 16 & 0xFFFF),
            bytes((SCRAMBLE_LENGTH + 1,)),
            bytes(10),
            scramble20[8:] + b"\x00",
            make_nul_str(auth_plugin.encode("ascii")),
        )
    )


def parse_handshake_v10(payload: bytes) -> HandshakeV10:
    """The upstream server's first payload. An ERR (0xFF) there must be checked for first."""
    cur = _Cursor(payload, "HandshakeV10")
    version = cur.u8()
    if version != 10:
        raise ProtocolViolation(f"unsupported handshake protocol version {version}")
    server_version = cur.text(cur.nul_bytes())
    connection_id = cur.u32()
    scramble = cur.take(8)
    cur.u8()  # filler
    caps = cur.u16()
    charset, status, plugin = 0, 0, ""
    mariadb_caps = 0
    if cur.remaining():
        charset = cur.u8()
        status = cur.u16()
        caps |= cur.u16() << 16
        data_len = cur.u8()
        reserved = cur.take(10)
        if not caps & Capability.CLIENT_LONG_PASSWORD:
            mariadb_caps = int.from_bytes(reserved[6:10], "little")
        if caps & Capability.CLIENT_SECURE_CONNECTION:
            part2 = cur.take(max(13, data_len - 8))
            scramble += part2[:-1] if part2.endswith(b"\x00") else part2
        if caps & Capability.CLIENT_PLUGIN_AUTH:
            plugin = cur.text(cur.nul_or_rest(), "ascii")  # MySQL 5.5.7-5.5.9 sent no NUL
    return HandshakeV10(
        server_version,
        connection_id,
        scramble,
        Capability(caps),
        charset,
        ServerStatus(status),
        plugin,
        mariadb_caps,
    )


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The 32-byte first half of a HandshakeResponse41: the client wants TLS before logging in."""

    capabilities: Capability
    max_packet: int
    charset: int


@dataclass(frozen=True, slots=True)
class HandshakeResponse41:
    capabilities: Capability
    max_packet: int
    charset: int
    user: str
    auth_response: bytes
    database: str | None
    auth_plugin: str  # "" when the client sent none (then the server's default applies)
    connect_attrs: dict[str, str]


def _parse_attrs(cur: _Cursor) -> dict[str, str]:
    block = _Cursor(cur.lenenc_bytes(), f"{cur.what} connection attributes")
    attrs: dict[str, str] = {}
    while block.remaining():
        key = block.text(block.lenenc_bytes())
        attrs[key] = block.text(block.lenenc_bytes())
    return attrs


def _make_attrs(attrs: dict[str, str]) -> bytes:
    block = b"".join(
        make_lenenc_str(k.encode("utf-8")) + make_lenenc_str(v.encode("utf-8")) for k, v in attrs.items()
    )
    return make_lenenc_str(block)


def parse_handshake_response41(
    payload: bytes, server_caps: Capability | None = None
) -> HandshakeResponse41 | SSLRequest:
    """The client's login payload, or an SSLRequest if it is the 32-byte TLS request.

    Optional parts are read as the client's flags say, limited to `server_caps` when given (what
    the server offered): a client may not use what was not offered, and PyMySQL, for one, sets
    flags without looking at the offer.
    """
    cur = _Cursor(payload, "HandshakeResponse41")
    client_caps = Capability(cur.u32())
    caps = client_caps if server_caps is None else client_caps & server_caps
    max_packet = cur.u32()
    charset = cur.u8()
    cur.take(23)  # filler (MariaDB puts its extended capabilities in the last 4 bytes)
    if not client_caps & Capability.CLIENT_PROTOCOL_41:
        raise ProtocolViolation("client does not speak protocol 4.1 (CLIENT_PROTOCOL_41 unset)")
    if not cur.remaining():
        if client_caps & Capability.CLIENT_SSL:
            return SSLRequest(client_caps, max_packet, charset)
        raise ProtocolViolation("malformed HandshakeResponse41: no user name")
    user = cur.text(cur.nul_bytes())
    if caps & Capability.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = cur.lenenc_bytes()
    elif caps & Capability.CLIENT_SECURE_CONNECTION:
        auth = cur.take(cur.u8())
    else:
        auth = cur.nul_bytes()
    database = None
    if caps & Capability.CLIENT_CONNECT_WITH_DB and cur.remaining():
        database = cur.text(cur.nul_or_rest())
    plugin = ""
    if caps & Capability.CLIENT_PLUGIN_AUTH and cur.remaining():
        plugin = cur.text(cur.nul_or_rest(), "ascii")
    attrs: dict[str, str] = {}
    if caps & Capability.CLIENT_CONNECT_ATTRS and cur.remaining():
        attrs = _parse_attrs(cur)
    if caps & Capability.CLIENT_ZSTD_COMPRESSION_ALGORITHM and cur.remaining():
        cur.u8()  # zstd compression level
    cur.end()
    return HandshakeResponse41(client_caps, max_packet, charset, user, auth, database, plugin, attrs)


def make_ssl_request(capabilities: Capability, charset: int, max_packet: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    caps = capabilities | Capability.CLIENT_SSL | Capability.CLIENT_PROTOCOL_41
    return _U32.pack(int(caps)) + _U32.pack(max_packet) + bytes((charset,)) + bytes(23)


def make_handshake_response41(
    capabilities: Capability,
    user: str,
    auth_response: bytes,
    database: str | None = None,
    auth_plugin: str = "",
    *,
    charset: int = UTF8MB4_GENERAL_CI,
    max_packet: int = DEFAULT_MAX_PAYLOAD,
    connect_attrs: dict[str, str] | None = None,
) -> bytes:
    """What QueryBase sends to log into an upstream; `capabilities` decides the optional parts."""
    caps = capabilities | Capability.CLIENT_PROTOCOL_41
    if database is not None:
        caps |= Capability.CLIENT_CONNECT_WITH_DB
    else:
        caps &= ~Capability.CLIENT_CONNECT_WITH_DB
    if connect_attrs:
        caps |= Capability.CLIENT_CONNECT_ATTRS
    out = [_U32.pack(int(caps)), _U32.pack(max_packet), bytes((charset,)), bytes(23)]
    out.append(make_nul_str(user.encode("utf-8")))
    if caps & Capability.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out.append(make_lenenc_str(auth_response))
    elif caps & Capability.CLIENT_SECURE_CONNECTION:
        if len(auth_response) > 0xFF:
            raise ValueError("auth response too long without PLUGIN_AUTH_LENENC_CLIENT_DATA")
        out.append(bytes((len(auth_response),)) + auth_response)
    else:
        out.append(make_nul_str(auth_response))
    if database is not None:
        out.append(make_nul_str(database.encode("utf-8")))
    if caps & Capability.CLIENT_PLUGIN_AUTH:
        out.append(make_nul_str(auth_plugin.encode("ascii")))
    if caps & Capability.CLIENT_CONNECT_ATTRS:
        out.append(_make_attrs(connect_attrs or {}))
    return b"".join(out)


# ------------------------------------------------------------------------ authentication


@dataclass(frozen=True, slots=True)
class AuthSwitchRequest:
    plugin: str
    data: bytes  # for native and caching_sha2: the 20-byte scramble and a NUL


def make_auth_switch_request(plugin: str, data: bytes) -> bytes:
    """0xFE, plugin name, plugin data (written as given: add the NUL after a scramble yourself)."""
    return bytes((AUTH_SWITCH_HEADER,)) + make_nul_str(plugin.encode("ascii")) + data


def parse_auth_switch_request(payload: bytes) -> AuthSwitchRequest:
    cur = _Cursor(payload, "AuthSwitchRequest")
    if cur.u8() != AUTH_SWITCH_HEADER:
        raise cur.fail("not an AuthSwitchRequest")
    if not cur.remaining():  # the pre-4.1 "old authentication method switch"
        return AuthSwitchRequest("mysql_old_password", b"")
    plugin = cur.text(cur.nul_bytes(), "ascii")
    return AuthSwitchRequest(plugin, cur.rest())


def make_auth_more_data(data: bytes) -> bytes:
    """0x01 + data; caching_sha2_password's fast-auth success is `make_auth_more_data(b"\\x03")`."""
    return bytes((AUTH_MORE_DATA_HEADER,)) + data


def parse_auth_more_data(payload: bytes) -> bytes:
    if not payload or payload[0] != AUTH_MORE_DATA_HEADER:
        raise ProtocolViolation("malformed AuthMoreData")
    return payload[1:]


# --------------------------------------------------------------------- OK / ERR / EOF


@dataclass(frozen=True, slots=True)
class OkPacket:
    affected_rows: int
    last_insert_id: int
    status: ServerStatus
    warnings: int
    info: str
    session_state: bytes = b""  # raw session-state-change block (CLIENT_SESSION_TRACK only)


@dataclass(frozen=True, slots=True)
class ErrPacket:
    errno: int
    sqlstate: str
    message: str


@dataclass(frozen=True, slots=True)
class EofPacket:
    warnings: int
    status: ServerStatus


def make_ok(
    affected_rows: int = 0,
    last_insert_id: int = 0,
    status: ServerStatus = ServerStatus.SERVER_STATUS_AUTOCOMMIT,
    warnings: int = 0,
    info: str = "",
    eof_header: bool = False,
) -> bytes:
    """OK (protocol 4.1, no session tracking); `eof_header` for the 0xFE form that ends a result
    set under CLIENT_DEPRECATE_EOF."""
    return b"".join(
        (
            bytes((EOF_HEADER if eof_header else OK_HEADER,)),
            make_lenenc_int(affected_rows),
            make_lenenc_int(last_insert_id),
            _U16.pack(int(status) & 0xFFFF),
            _U16.pack(warnings & 0xFFFF),
            info.encode("utf-8"),
        )
    )


def parse_ok(payload: bytes, capabilities: Capability = Capability.CLIENT_PROTOCOL_41) -> OkPacket:
    """OK (0x00) or, under CLIENT_DEPRECATE_EOF, its 0xFE form ending a result set."""
    cur = _Cursor(payload, "OK packet")
    if cur.u8() not in (OK_HEADER, EOF_HEADER):
        raise cur.fail("not an OK packet")
    affected = cur.lenenc_int()
    insert_id = cur.lenenc_int()
    status = warnings = 0
    if capabilities & Capability.CLIENT_PROTOCOL_41:
        status, warnings = cur.u16(), cur.u16()
    elif capabilities & Capability.CLIENT_TRANSACTIONS:
        status = cur.u16()
    state = b""
    if capabilities & Capability.CLIENT_SESSION_TRACK:
        info = cur.lenenc_bytes() if cur.remaining() else b""
        if status & ServerStatus.SERVER_SESSION_STATE_CHANGED:
            state = cur.lenenc_bytes()
        cur.end()
    else:
        info = cur.rest()
    return OkPacket(
        affected, insert_id, ServerStatus(status), warnings, info.decode("utf-8", "replace"), state
    )


def make_err(errno: int, sqlstate: str, message: str) -> bytes:
    """ERR in the protocol 4.1 form: '#' and a 5-character SQLSTATE before the message."""
    state = sqlstate.encode("ascii")
    if len(state) != 5:
        raise ValueError("SQLSTATE must be 5 characters")
    return bytes((ERR_HEADER,)) + _U16.pack(errno) + b"#" + state + message.encode("utf-8", "replace")


def err_payload(exc: QueryBaseError) -> bytes:
    """The ERR payload for any QueryBase error (proxy/errors.py): its errno, SQLSTATE and text."""
    state = exc.mysql_sqlstate or (exc.sqlstate if len(exc.sqlstate) == 5 else "HY000")
    return make_err(exc.mysql_errno, state, exc.mysql_message)


def parse_err(payload: bytes) -> ErrPacket:
    """ERR; a server that fails before the handshake (e.g. too many connections) omits the SQLSTATE."""
    cur = _Cursor(payload, "ERR packet")
    if cur.u8() != ERR_HEADER:
        raise cur.fail("not an ERR packet")
    errno = cur.u16()
    sqlstate = "HY000"
    if cur.remaining() >= 6 and payload[cur.pos] == ord("#"):
        cur.take(1)
        sqlstate = cur.take(5).decode("ascii", "replace")
    return ErrPacket(errno, sqlstate, cur.rest().decode("utf-8", "replace"))


def make_eof(warnings: int = 0, status: ServerStatus = ServerStatus.SERVER_STATUS_AUTOCOMMIT) -> bytes:
    return bytes((EOF_HEADER,)) + _U16.pack(warnings & 0xFFFF) + _U16.pack(int(status) & 0xFFFF)


def parse_eof(payload: bytes) -> EofPacket:
    cur = _Cursor(payload, "EOF packet")
    if cur.u8() != EOF_HEADER or len(payload) >= 9:
        raise cur.fail("not an EOF packet")
    if not cur.remaining():  # pre-4.1 EOF: the header alone
        return EofPacket(0, ServerStatus(0))
    warnings, status = cur.u16(), cur.u16()
    cur.end()
    return EofPacket(warnings, ServerStatus(status))


def is_terminator(payload: bytes, deprecate_eof: bool) -> bool:
    """Does this packet end a row or definition sequence? An EOF is under 9 bytes, so it cannot be
    a row starting with an 8-byte length; under DEPRECATE_EOF an OK with the 0xFE header plays its
    part, and it is shorter than 0xFFFFFF bytes, which a row starting with 0xFE cannot be."""
    if not payload or payload[0] != EOF_HEADER:
        return False
    return len(payload) < 9 or (deprecate_eof and len(payload) < MAX_PACKET_PAYLOAD)


def terminator_status(payload: bytes, deprecate_eof: bool) -> ServerStatus:
    """The server status in a terminator (EOF, or OK with the 0xFE header under DEPRECATE_EOF)."""
    if deprecate_eof:
        return _ok_status(payload)
    return parse_eof(payload).status


def _ok_status(payload: bytes) -> ServerStatus:
    cur = _Cursor(payload, "OK packet", 1)
    cur.lenenc_int()
    cur.lenenc_int()
    return ServerStatus(cur.u16())


def classify_response(payload: bytes, deprecate_eof: bool = False) -> PacketKind:
    """Kind of the *first* packet of a command's response (later packets need their context)."""
    if not payload:
        raise ProtocolViolation("empty response packet")
    first = payload[0]
    if first == OK_HEADER:
        return PacketKind.OK
    if first == ERR_HEADER:
        return PacketKind.ERR
    if first == LOCAL_INFILE_HEADER:
        return PacketKind.LOCAL_INFILE
    if first == EOF_HEADER and is_terminator(payload, deprecate_eof):
        return PacketKind.OK if deprecate_eof and len(payload) >= 7 else PacketKind.EOF
    return PacketKind.DATA


# --------------------------------------------------------------------------------- commands


def parse_command(payload: bytes) -> tuple[Command, bytes]:
    """(command, the rest of the payload). Parse the rest with the parse_* helper for the command."""
    if not payload:
        raise ProtocolViolation("empty command packet")
    try:
        command = Command(payload[0])
    except ValueError:
        raise UnknownCommand(f"unknown command 0x{payload[0]:02x}") from None
    return command, payload[1:]


def make_command(command: Command, body: bytes = b"") -> bytes:
    """A command payload; frame it with `make_packets(payload, 0)`."""
    return bytes((command,)) + body


def make_query(sql: str, encoding: str = "utf-8") -> bytes:
    return make_command(Command.COM_QUERY, sql.encode(encoding))


def parse_query(body: bytes, encoding: str = "utf-8") -> str:
    """COM_QUERY text. CLIENT_QUERY_ATTRIBUTES is never negotiated, so there is no prefix."""
    return _Cursor(body, "COM_QUERY").text(body, encoding)


def parse_init_db(body: bytes, encoding: str = "utf-8") -> str:
    return _Cursor(body, "COM_INIT_DB").text(body, encoding)


def parse_stmt_prepare(body: bytes, encoding: str = "utf-8") -> str:
    return _Cursor(body, "COM_STMT_PREPARE").text(body, encoding)


def parse_statement_id(body: bytes, what: str = "COM_STMT_CLOSE") -> int:
    """The statement id of COM_STMT_CLOSE / COM_STMT_RESET (the whole body)."""
    cur = _Cursor(body, what)
    stmt_id = cur.u32()
    cur.end()
    return stmt_id


def parse_stmt_send_long_data(body: bytes) -> tuple[int, int, bytes]:
    """(statement id, parameter index, data chunk)."""
    cur = _Cursor(body, "COM_STMT_SEND_LONG_DATA")
    return cur.u32(), cur.u16(), cur.rest()


def parse_stmt_fetch(body: bytes) -> tuple[int, int]:
    """(statement id, number of rows)."""
    cur = _Cursor(body, "COM_STMT_FETCH")
    stmt_id, rows = cur.u32(), cur.u32()
    cur.end()
    return stmt_id, rows


def parse_field_list(body: bytes, encoding: str = "utf-8") -> tuple[str, str]:
    """(table, column wildcard) of COM_FIELD_LIST."""
    cur = _Cursor(body, "COM_FIELD_LIST")
    table = cur.text(cur.nul_bytes(), encoding)
    return table, cur.text(cur.rest(), encoding)


def parse_process_kill(body: bytes) -> int:
    cur = _Cursor(body, "COM_PROCESS_KILL")
    conn_id = cur.u32()
    cur.end()
    return conn_id


def parse_set_option(body: bytes) -> int:
    """0 = MYSQL_OPTION_MULTI_STATEMENTS_ON, 1 = …_OFF."""
    cur = _Cursor(body, "COM_SET_OPTION")
    option = cur.u16()
    cur.end()
    return option


@dataclass(frozen=True, slots=True)
class ChangeUser:
    user: str
    auth_response: bytes
    database: str | None
    charset: int | None
    auth_plugin: str
    connect_attrs: dict[str, str]


def make_change_user(
    user: str,
    auth_response: bytes,
    database: str | None,
    charset: int = UTF8MB4_GENERAL_CI,
    auth_plugin: str = "",
) -> bytes:
    """A COM_CHANGE_USER payload for a connection with SECURE_CONNECTION and PLUGIN_AUTH."""
    if len(auth_response) > 0xFF:
        raise ValueError("auth response too long for COM_CHANGE_USER")
    return b"".join(
        (
            bytes((Command.COM_CHANGE_USER,)),
            make_nul_str(user.encode("utf-8")),
            bytes((len(auth_response),)) + auth_response,
            make_nul_str((database or "").encode("utf-8")),
            _U16.pack(charset),
            make_nul_str(auth_plugin.encode("ascii")),
        )
    )


def parse_change_user(body: bytes, capabilities: Capability) -> ChangeUser:
    """COM_CHANGE_USER; `capabilities` are those negotiated on the connection."""
    cur = _Cursor(body, "COM_CHANGE_USER")
    user = cur.text(cur.nul_bytes())
    secure = capabilities & Capability.CLIENT_SECURE_CONNECTION
    auth = cur.take(cur.u8()) if secure else cur.nul_bytes()
    database = cur.text(cur.nul_bytes()) or None
    charset = None
    plugin = ""
    attrs: dict[str, str] = {}
    if cur.remaining():
        charset = cur.u16()
        if capabilities & Capability.CLIENT_PLUGIN_AUTH and cur.remaining():
            plugin = cur.text(cur.nul_or_rest(), "ascii")
        if capabilities & Capability.CLIENT_CONNECT_ATTRS and cur.remaining():
            attrs = _parse_attrs(cur)
    cur.end()
    return ChangeUser(user, auth, database, charset, plugin, attrs)


# -------------------------------------------------------------- prepared statements


@dataclass(frozen=True, slots=True)
class StmtPrepareOk:
    statement_id: int
    num_columns: int
    num_params: int
    warnings: int


def make_stmt_prepare_ok(statement_id: int, num_columns: int, num_params: int, warnings: int = 0) -> bytes:
    return (
        b"\x00"
        + _U32.pack(statement_id)
        + _U16.pack(num_columns)
        + _U16.pack(num_params)
        + b"\x00"
        + _U16.pack(warnings)
    )


def parse_stmt_prepare_ok(payload: bytes) -> StmtPrepareOk:
    cur = _Cursor(payload, "COM_STMT_PREPARE_OK")
    if cur.u8() != OK_HEADER:
        raise cur.fail("not a COM_STMT_PREPARE_OK")
    stmt_id, columns, params = cur.u32(), cur.u16(), cur.u16()
    cur.u8()  # reserved
    warnings = cur.u16() if cur.remaining() >= 2 else 0
    return StmtPrepareOk(stmt_id, columns, params, warnings)


_FIXED_SIZE = {
    ColumnType.MYSQL_TYPE_NULL: 0,
    ColumnType.MYSQL_TYPE_TINY: 1,
    ColumnType.MYSQL_TYPE_BOOL: 1,
    ColumnType.MYSQL_TYPE_SHORT: 2,
    ColumnType.MYSQL_TYPE_YEAR: 2,
    ColumnType.MYSQL_TYPE_LONG: 4,
    ColumnType.MYSQL_TYPE_INT24: 4,
    ColumnType.MYSQL_TYPE_FLOAT: 4,
    ColumnType.MYSQL_TYPE_LONGLONG: 8,
    ColumnType.MYSQL_TYPE_DOUBLE: 8,
}
_TEMPORAL = frozenset(
    {
        ColumnType.MYSQL_TYPE_DATE,
        ColumnType.MYSQL_TYPE_NEWDATE,
        ColumnType.MYSQL_TYPE_DATETIME,
        ColumnType.MYSQL_TYPE_TIMESTAMP,
        ColumnType.MYSQL_TYPE_TIME,
    }
)
_SERVER_ONLY_TYPES = frozenset(
    {
        ColumnType.MYSQL_TYPE_TIMESTAMP2,
        ColumnType.MYSQL_TYPE_DATETIME2,
        ColumnType.MYSQL_TYPE_TIME2,
        ColumnType.MYSQL_TYPE_TYPED_ARRAY,
        ColumnType.MYSQL_TYPE_INVALID,
    }
)
_KNOWN_TYPES = frozenset(int(t) for t in ColumnType)
UNSIGNED_FLAG = 0x80
# MariaDB: a COM_STMT_EXECUTE for this id means "the statement prepared last" (pipelined
# PREPARE + EXECUTE); mapping it is the session's job.
MARIADB_LAST_PREPARED_STATEMENT = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class StmtExecute:
    statement_id: int
    flags: CursorType
    iteration_count: int
    null_bitmap: bytes
    new_params_bound: bool
    types: bytes  # 2 bytes per parameter (type, flags): pass back as `previous_types` next time
    values: tuple[bytes | None, ...]  # each value's wire bytes; None for NULL and long-data params

    def param_types(self) -> list[tuple[ColumnType, bool]]:
        """(type, unsigned) per parameter."""
        return [
            (ColumnType(self.types[i]), bool(self.types[i + 1] & UNSIGNED_FLAG))
            for i in range(0, len(self.types), 2)
        ]


def parse_stmt_execute(
    body: bytes,
    param_count: int,
    previous_types: bytes | None,
    long_data_params: frozenset[int] = frozenset(),
) -> StmtExecute:
    """COM_STMT_EXECUTE (the body after the command byte).

    `param_count` comes from the statement's prepare response; `previous_types` are the types of
    the last execute of the statement, used when the client does not bind new ones; parameters
    whose data went by COM_STMT_SEND_LONG_DATA (`long_data_params`) have no value in the packet.
    """
    cur = _Cursor(body, "COM_STMT_EXECUTE")
    stmt_id = cur.u32()
    flags = CursorType(cur.u8())
    iterations = cur.u32()
    if param_count == 0:
        cur.end()
        return StmtExecute(stmt_id, flags, iterations, b"", False, b"", ())
    bitmap = cur.take((param_count + 7) // 8)
    bound = cur.u8()
    if bound not in (0, 1):
        raise cur.fail(f"new-params-bound flag {bound}")
    if bound:
        types = cur.take(2 * param_count)
    elif previous_types is None:
        raise cur.fail("parameters sent without types and none were bound before")
    else:
        types = previous_types
    if len(types) != 2 * param_count:
        raise cur.fail("parameter types do not match the parameter count")
    for code in types[::2]:
        if code not in _KNOWN_TYPES or code in _SERVER_ONLY_TYPES:
            raise cur.fail(f"unknown parameter type {code}")
    values: list[bytes | None] = []
    for index in range(param_count):
        if bitmap[index >> 3] & (1 << (index & 7)) or index in long_data_params:
            values.append(None)
            continue
        kind = ColumnType(types[2 * index])
        start = cur.pos
        if kind in _FIXED_SIZE:
            cur.take(_FIXED_SIZE[kind])
        elif kind in _TEMPORAL:
            cur.take(cur.u8())
        else:
            cur.lenenc_bytes()
        values.append(bytes(body[start : cur.pos]))
    cur.end()
    return StmtExecute(stmt_id, flags, iterations, bitmap, bool(bound), types, tuple(values))


def is_length_encoded_type(kind: ColumnType) -> bool:
    """Whether a binary-protocol value of this type is a length-encoded string (strings, blobs,
    decimals, JSON, …) rather than fixed-size or a length-prefixed temporal value."""
    return kind not in _FIXED_SIZE and kind not in _TEMPORAL


def decode_binary_value(kind: ColumnType, unsigned: bool, raw: bytes) -> int | float | bytes:
    """A parameter's wire bytes as a Python value: ints and floats decoded, strings and decimals
    as their bytes, temporal values as their packed bytes (length byte removed)."""
    cur = _Cursor(raw, f"{kind.name} value")
    if kind in (ColumnType.MYSQL_TYPE_FLOAT, ColumnType.MYSQL_TYPE_DOUBLE):
        fmt = "<f" if kind == ColumnType.MYSQL_TYPE_FLOAT else "<d"
        value: float = struct.unpack(fmt, cur.take(_FIXED_SIZE[kind]))[0]
        cur.end()
        return value
    if kind in _FIXED_SIZE:
        number = int.from_bytes(cur.take(_FIXED_SIZE[kind]), "little", signed=not unsigned)
        cur.end()
        return number
    data = cur.take(cur.u8()) if kind in _TEMPORAL else cur.lenenc_bytes()
    cur.end()
    return data


# ------------------------------------------------------------------------ result scanning


class ScanEvent(enum.Enum):
    PENDING = "pending"  # the response goes on
    RESULT_DONE = "result_done"  # one result ended and another follows (MORE_RESULTS_EXISTS)
    DONE = "done"  # the response is complete; the server waits for the next command
    LOCAL_INFILE = "local_infile"  # server asks for a client file; its OK/ERR follows the upload


class _Phase(enum.Enum):
    IDLE = "idle"
    FIRST = "first"  # the first packet of a (next) result
    COLUMN_DEFS = "column_defs"
    COLUMNS_EOF = "columns_eof"
    ROWS = "rows"
    PREPARE_FIRST = "prepare_first"
    PREPARE_PARAMS = "prepare_params"
    PREPARE_PARAMS_EOF = "prepare_params_eof"
    PREPARE_COLUMNS = "prepare_columns"
    PREPARE_COLUMNS_EOF = "prepare_columns_eof"
    FIELD_LIST = "field_list"
    STATISTICS = "statistics"
    SIMPLE = "simple"  # a single OK, ERR or EOF
    INFILE_RESULT = "infile_result"


# What answers each command, for the commands the relay forwards. Commands without a response
# map to None; commands missing here (COM_CHANGE_USER, replication, …) are not scanned.
_RESPONSE: dict[Command, _Phase | None] = {
    Command.COM_QUERY: _Phase.FIRST,
    Command.COM_PROCESS_INFO: _Phase.FIRST,
    Command.COM_STMT_EXECUTE: _Phase.FIRST,
    Command.COM_STMT_FETCH: _Phase.ROWS,
    Command.COM_STMT_PREPARE: _Phase.PREPARE_FIRST,
    Command.COM_FIELD_LIST: _Phase.FIELD_LIST,
    Command.COM_STATISTICS: _Phase.STATISTICS,
    Command.COM_INIT_DB: _Phase.SIMPLE,
    Command.COM_PING: _Phase.SIMPLE,
    Command.COM_RESET_CONNECTION: _Phase.SIMPLE,
    Command.COM_SET_OPTION: _Phase.SIMPLE,
    Command.COM_STMT_RESET: _Phase.SIMPLE,
    Command.COM_PROCESS_KILL: _Phase.SIMPLE,
    Command.COM_REFRESH: _Phase.SIMPLE,
    Command.COM_DEBUG: _Phase.SIMPLE,
    Command.COM_CREATE_DB: _Phase.SIMPLE,
    Command.COM_DROP_DB: _Phase.SIMPLE,
    Command.COM_SHUTDOWN: _Phase.SIMPLE,
    Command.COM_SLEEP: _Phase.SIMPLE,
    Command.COM_QUIT: None,
    Command.COM_STMT_CLOSE: None,
    Command.COM_STMT_SEND_LONG_DATA: None,
}


class ResultScanner:
    """Follows the server's response to one command at a time, packet by packet.

    `deprecate_eof` says whether CLIENT_DEPRECATE_EOF was negotiated on the connection whose
    server packets are fed (so: on the upstream connection QueryBase opened). Call `start()` with
    the command sent, then `feed()` every payload the server returns until it says DONE. Only
    first bytes, counts and terminators are read; `status` holds the last server status seen
    (ERR carries none, so it keeps the previous one), `error` the ERR that ended the response.
    """

    def __init__(
        self,
        client_deprecate_eof: bool,
        status: ServerStatus = ServerStatus.SERVER_STATUS_AUTOCOMMIT,
    ) -> None:
        self.deprecate_eof = client_deprecate_eof
        self.status = status
        self.error: ErrPacket | None = None
        self.prepare_ok: StmtPrepareOk | None = None
        self.ok: OkPacket | None = None
        self.rows = 0  # rows of the current result
        self._phase = _Phase.IDLE
        self._binary = False
        self._count = 0  # definitions still to come

    @property
    def busy(self) -> bool:
        return self._phase is not _Phase.IDLE

    def start(self, command: Command) -> bool:
        """A command went to the server. Returns whether a response is to be scanned."""
        if self._phase is not _Phase.IDLE:
            raise ValueError("the previous response is not complete")
        if command not in _RESPONSE:
            raise ValueError(f"{command.name} responses are not scanned")
        phase = _RESPONSE[command]
        self.error, self.prepare_ok, self.ok, self.rows = None, None, None, 0
        if phase is None:
            return False
        self._binary = command in (Command.COM_STMT_EXECUTE, Command.COM_STMT_FETCH)
        self._phase = phase
        return True

    def feed(self, payload: bytes) -> ScanEvent:
        """One whole server payload (as `PacketReader` returns them)."""
        if not payload:
            raise ProtocolViolation("server sent an empty packet")
        return self._HANDLERS[self._phase](self, payload)

    # -- phase handlers

    def _idle(self, payload: bytes) -> ScanEvent:
        raise ProtocolViolation("server sent a packet while no command was outstanding")

    def _done(self, event: ScanEvent = ScanEvent.DONE) -> ScanEvent:
        self._phase = _Phase.IDLE
        return event

    def _err(self, payload: bytes) -> ScanEvent:
        self.error = parse_err(payload)
        return self._done()

    def _end_result(self, status: ServerStatus) -> ScanEvent:
        self.status = status
        if status & ServerStatus.SERVER_MORE_RESULTS_EXISTS:
            self._phase = _Phase.FIRST
            return ScanEvent.RESULT_DONE
        return self._done()

    def _ok(self, payload: bytes) -> ScanEvent:
        self.ok = parse_ok(payload)
        return self._end_result(self.ok.status)

    def _first(self, payload: bytes) -> ScanEvent:
        head = payload[0]
        self.rows = 0
        if head == OK_HEADER:
            return self._ok(payload)
        if head == ERR_HEADER:
            return self._err(payload)
        if head == LOCAL_INFILE_HEADER and not self._binary:
            self._phase = _Phase.INFILE_RESULT
            return ScanEvent.LOCAL_INFILE
        if head == EOF_HEADER:
            raise ProtocolViolation("server began a result with 0xFE")
        cur = _Cursor(payload, "column count")
        count = cur.lenenc_int()
        cur.end()
        if count == 0:
            raise cur.fail("zero columns")
        self._count, self._phase = count, _Phase.COLUMN_DEFS
        return ScanEvent.PENDING

    def _column_defs(self, payload: bytes) -> ScanEvent:
        if payload[0] == ERR_HEADER:
            return self._err(payload)
        self._count -= 1
        if not self._count:
            self._phase = _Phase.ROWS if self.deprecate_eof else _Phase.COLUMNS_EOF
        return ScanEvent.PENDING

    def _columns_eof(self, payload: bytes) -> ScanEvent:
        if payload[0] == ERR_HEADER:
            return self._err(payload)
        status = parse_eof(payload).status
        if status & ServerStatus.SERVER_STATUS_CURSOR_EXISTS:
            return self._end_result(status)  # a cursor was opened: rows come by COM_STMT_FETCH
        self._phase = _Phase.ROWS
        return ScanEvent.PENDING

    def _rows(self, payload: bytes) -> ScanEvent:
        head = payload[0]
        if head == ERR_HEADER:
            return self._err(payload)
        if is_terminator(payload, self.deprecate_eof):
            if self.deprecate_eof:
                return self._ok(payload)
            return self._end_result(parse_eof(payload).status)
        if self._binary and head != OK_HEADER:
            raise ProtocolViolation(f"binary result row starts with 0x{head:02x}")
        self.rows += 1
        return ScanEvent.PENDING

    def _prepare_first(self, payload: bytes) -> ScanEvent:
        if payload[0] == ERR_HEADER:
            return self._err(payload)
        self.prepare_ok = ok = parse_stmt_prepare_ok(payload)
        if ok.num_params:
            self._count, self._phase = ok.num_params, _Phase.PREPARE_PARAMS
            return ScanEvent.PENDING
        return self._after_prepare_block(params=True)

    def _prepare_defs(self, payload: bytes) -> ScanEvent:
        self._count -= 1
        if self._count:
            return ScanEvent.PENDING
        params = self._phase is _Phase.PREPARE_PARAMS
        if not self.deprecate_eof:
            self._phase = _Phase.PREPARE_PARAMS_EOF if params else _Phase.PREPARE_COLUMNS_EOF
            return ScanEvent.PENDING
        return self._after_prepare_block(params)

    def _prepare_eof(self, payload: bytes) -> ScanEvent:
        parse_eof(payload)
        return self._after_prepare_block(self._phase is _Phase.PREPARE_PARAMS_EOF)

    def _after_prepare_block(self, params: bool) -> ScanEvent:
        columns = self.prepare_ok.num_columns if self.prepare_ok else 0
        if params and columns:
            self._count, self._phase = columns, _Phase.PREPARE_COLUMNS
            return ScanEvent.PENDING
        return self._done()

    def _field_list(self, payload: bytes) -> ScanEvent:
        if payload[0] == ERR_HEADER:
            return self._err(payload)
        if is_terminator(payload, self.deprecate_eof):
            self.status = terminator_status(payload, self.deprecate_eof)
            return self._done()
        return ScanEvent.PENDING

    def _statistics(self, payload: bytes) -> ScanEvent:
        if payload[0] == ERR_HEADER:
            return self._err(payload)
        return self._done()

    def _simple(self, payload: bytes) -> ScanEvent:
        head = payload[0]
        if head == ERR_HEADER:
            return self._err(payload)
        if head == OK_HEADER:
            self.ok = parse_ok(payload)
            self.status = self.ok.status
            return self._done()
        if head == EOF_HEADER and len(payload) < 9:  # COM_SET_OPTION and COM_DEBUG answer EOF
            self.status = terminator_status(payload, self.deprecate_eof and len(payload) >= 7)
            return self._done()
        raise ProtocolViolation(f"unexpected response packet 0x{head:02x}")

    def _infile_result(self, payload: bytes) -> ScanEvent:
        head = payload[0]
        if head == ERR_HEADER:
            return self._err(payload)
        if head == OK_HEADER:
            return self._ok(payload)
        raise ProtocolViolation(f"unexpected packet 0x{head:02x} after LOCAL INFILE")

    _HANDLERS: ClassVar[dict[_Phase, Callable[[ResultScanner, bytes], ScanEvent]]] = {
        _Phase.IDLE: _idle,
        _Phase.FIRST: _first,
        _Phase.COLUMN_DEFS: _column_defs,
        _Phase.COLUMNS_EOF: _columns_eof,
        _Phase.ROWS: _rows,
        _Phase.PREPARE_FIRST: _prepare_first,
        _Phase.PREPARE_PARAMS: _prepare_defs,
        _Phase.PREPARE_COLUMNS: _prepare_defs,
        _Phase.PREPARE_PARAMS_EOF: _prepare_eof,
        _Phase.PREPARE_COLUMNS_EOF: _prepare_eof,
        _Phase.FIELD_LIST: _field_list,
        _Phase.STATISTICS: _statistics,
        _Phase.SIMPLE: _simple,
        _Phase.INFILE_RESULT: _infile_result,
    }


def make_column_definition(name: str, column_type: ColumnType = ColumnType.MYSQL_TYPE_VAR_STRING) -> bytes:
    """A ColumnDefinition41 for a column or parameter QueryBase describes itself (binary charset)."""
    return (
        make_lenenc_str(b"def")
        + make_lenenc_str(b"")  # schema
        + make_lenenc_str(b"")  # table
        + make_lenenc_str(b"")  # org_table
        + make_lenenc_str(name.encode())
        + make_lenenc_str(b"")  # org_name
        + b"\x0c"
        + _U16.pack(63)  # binary
        + _U32.pack(0)
        + bytes((int(column_type),))
        + _U16.pack(0)
        + b"\x00\x00\x00"  # decimals, filler
    )

"""A pure-Python, seeded, structure-aware mutator for wire-protocol messages.

A message is a list of typed fields (`Field`), so a mutation can change one value (a name, a
count, an id, a type byte, a length) and re-encode the rest correctly, or deliberately lie about a
length. Above that, sequences of messages are duplicated, dropped, swapped and spliced, and the
encoded bytes are truncated, flipped and split across sends. Everything draws from one
`random.Random`, so a case is reproduced from its seed alone.

Field kinds (`Field.kind`), PostgreSQL big-endian and MySQL little-endian alike:
    u8            one byte
    i16 / i32     big-endian signed (PostgreSQL)
    u16le / u32le little-endian unsigned (MySQL)
    cstr          bytes + NUL
    raw           bytes as they are
    len32         PostgreSQL value: int32 length (-1 = NULL) + bytes
    lenenc        MySQL length-encoded string
    len8          MySQL one-byte length + bytes (COM_CHANGE_USER's auth response)
A field may carry `lie`: the length written in front of it instead of the true one.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field, replace

INTERESTING_32 = (
    0, 1, 2, 3, 4, 5, 7, 8, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
    0xFFFFFF, 0x1000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x7F000000, 0x7F000001,
)  # fmt: skip
INTERESTING_16 = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_8 = (0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF)

# Names for statements, portals, users, schemas: reuse is the point (collisions exercise the
# session's bookkeeping), plus the odd hostile one.
NAMES = (
    b"", b"", b"s1", b"s2", b"p1", b"p2", b"S_1", b"a" * 63, b"a" * 64, b"x" * 5000,
    "é".encode(), b"\xff\xfe", b"name with space", b"'; DROP TABLE items; --", b"%s%n",
)  # fmt: skip

SQL_NOISE = (
    b";", b"; ", b"--", b"-- \n", b"/*", b"*/", b"/*!50000 ", b"'", b'"', b"`", b"$$", b"\\",
    b"\x00", b"\xff", b"\xc3", b"\x5c", b"\x81\x5c", b" UNION SELECT 1", b" FOR UPDATE",
    b"; UPDATE items SET name = 'x'", b"; DELETE FROM items", b"(", b")", b",", b"?", b"$1", b"$2",
    b"\n", b"\t", b"E'\\'", b"N'", b"_binary'", b"0x", b"::text", b"/* */", b"#",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Field:
    kind: str
    value: bytes | int | None
    lie: int | None = None  # a length written instead of the true one


@dataclass(slots=True)
class Message:
    """One protocol message: a type (PostgreSQL's type byte; b"" for untyped/MySQL) and fields.

    `header_lie` replaces the framing length; `seq` is MySQL's sequence id; `altered` records
    whether a mutation touched this message (for the summary's count of altered messages).
    """

    type: bytes
    fields: list[Field]
    header_lie: int | None = None
    seq: int = 0
    altered: bool = False
    raw: bytes | None = None  # bytes replacing the encoding entirely (byte-level mutations)
    label: str = ""


def encode_fields(fields: list[Field]) -> bytes:
    out = bytearray()
    for f in fields:
        v = f.value
        k = f.kind
        if k == "u8":
            out.append(int(v or 0) & 0xFF)  # type: ignore[arg-type]
        elif k == "i16":
            out += struct.pack("!H", int(v or 0) & 0xFFFF)  # type: ignore[arg-type]
        elif k == "i32":
            out += struct.pack("!I", int(v or 0) & 0xFFFFFFFF)  # type: ignore[arg-type]
        elif k == "u16le":
            out += struct.pack("<H", int(v or 0) & 0xFFFF)  # type: ignore[arg-type]
        elif k == "u32le":
            out += struct.pack("<I", int(v or 0) & 0xFFFFFFFF)  # type: ignore[arg-type]
        elif k == "cstr":
            out += bytes(v or b"") + b"\x00"  # type: ignore[arg-type]
        elif k == "raw":
            out += bytes(v or b"")  # type: ignore[arg-type]
        elif k == "len32":
            if v is None:
                out += struct.pack("!I", (-1 if f.lie is None else f.lie) & 0xFFFFFFFF)
            else:
                n = len(v) if f.lie is None else f.lie  # type: ignore[arg-type]
                out += struct.pack("!I", n & 0xFFFFFFFF) + bytes(v)  # type: ignore[arg-type]
        elif k == "lenenc":
            data = bytes(v or b"")  # type: ignore[arg-type]
            out += lenenc_int(len(data) if f.lie is None else f.lie) + data
        elif k == "len8":
            data = bytes(v or b"")  # type: ignore[arg-type]
            out += bytes(((len(data) if f.lie is None else f.lie) & 0xFF,)) + data
        else:  # pragma: no cover - a harness bug
            raise ValueError(f"unknown field kind {k}")
    return bytes(out)


def lenenc_int(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    if n < 0xFB:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfc" + struct.pack("<H", n)
    if n <= 0xFFFFFF:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def encode_pg(msg: Message) -> bytes:
    """A PostgreSQL message: type byte (none for startup-phase packets) + int32 length + body."""
    if msg.raw is not None:
        return msg.raw
    body = encode_fields(msg.fields)
    length = len(body) + 4 if msg.header_lie is None else msg.header_lie
    return msg.type + struct.pack("!I", length & 0xFFFFFFFF) + body


def encode_my(msg: Message) -> bytes:
    """A MySQL packet: 3-byte little-endian length + sequence id + payload (one packet; payloads of
    16 MiB or more are not generated)."""
    if msg.raw is not None:
        return msg.raw
    payload = encode_fields(msg.fields)
    length = len(payload) if msg.header_lie is None else msg.header_lie
    return struct.pack("<I", length & 0xFFFFFF)[:3] + bytes((msg.seq & 0xFF,)) + payload


class Mutator:
    """Every random choice of a case goes through `rng`: same seed, same bytes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -------------------------------------------------------------------- values

    def int_for(self, kind: str, current: int) -> int:
        r = self.rng
        choice = r.random()
        if choice < 0.3:
            return current + r.choice((-2, -1, 1, 2))
        if kind == "u8":
            return r.choice(INTERESTING_8) if choice < 0.8 else r.randrange(256)
        if kind in ("i16", "u16le"):
            return r.choice(INTERESTING_16) if choice < 0.8 else r.randrange(1 << 16)
        return r.choice(INTERESTING_32) if choice < 0.8 else r.randrange(1 << 32)

    def blob(self, current: bytes) -> bytes:
        r = self.rng
        op = r.randrange(9)
        if op == 0:
            return r.choice(NAMES)
        if op == 1:
            return b""
        if op == 2:
            return self.bytes_(current)
        if op == 3:
            return current * r.randrange(2, 5)
        if op == 4:
            return r.randbytes(r.randrange(0, 64))
        if op == 5 and current:
            return current[: r.randrange(len(current))]
        if op == 6:
            return self.sql(current)
        if op == 7:
            return current + b"\x00" + r.randbytes(r.randrange(1, 8))
        return bytes(r.randrange(0x20, 0x7F) for _ in range(r.randrange(1, 40)))

    def sql(self, text: bytes) -> bytes:
        """Token-ish edits of statement text: noise at a random point, a cut, a doubled span."""
        r = self.rng
        for _ in range(r.randrange(1, 4)):
            pos = r.randrange(len(text) + 1)
            op = r.randrange(5)
            if op <= 1:
                text = text[:pos] + r.choice(SQL_NOISE) + text[pos:]
            elif op == 2:
                text = text[:pos]
            elif op == 3 and text:
                end = min(len(text), pos + r.randrange(1, 16))
                text = text[:end] + text[pos:end] + text[end:]
            else:
                text = text.upper() if r.random() < 0.5 else text.lower()
        return text

    def bytes_(self, data: bytes) -> bytes:
        """Byte-level havoc on encoded bytes."""
        r = self.rng
        buf = bytearray(data)
        for _ in range(r.randrange(1, 4)):
            op = r.randrange(9)
            pos = r.randrange(len(buf) + 1)
            if op == 0 and buf:  # flip a bit
                i = min(pos, len(buf) - 1)
                buf[i] ^= 1 << r.randrange(8)
            elif op == 1 and buf:  # set a byte
                buf[min(pos, len(buf) - 1)] = r.choice((*INTERESTING_8, r.randrange(256)))
            elif op == 2:  # insert random bytes
                buf[pos:pos] = r.randbytes(r.randrange(1, 16))
            elif op == 3 and buf:  # delete a span
                del buf[pos : pos + r.randrange(1, 16)]
            elif op == 4 and buf:  # duplicate a span
                span = buf[pos : pos + r.randrange(1, 32)]
                buf[pos:pos] = span
            elif op == 5 and len(buf) >= 4:  # an interesting 32-bit value at a random offset
                i = r.randrange(len(buf) - 3)
                fmt = "!I" if r.random() < 0.5 else "<I"
                buf[i : i + 4] = struct.pack(fmt, r.choice(INTERESTING_32))
            elif op == 6 and len(buf) >= 2:  # an interesting 16-bit value
                i = r.randrange(len(buf) - 1)
                fmt = "!H" if r.random() < 0.5 else "<H"
                buf[i : i + 2] = struct.pack(fmt, r.choice(INTERESTING_16))
            elif op == 7:  # truncate
                del buf[pos:]
            else:  # append garbage
                buf += r.randbytes(r.randrange(1, 32))
        return bytes(buf)

    # ------------------------------------------------------------------ messages

    def field(self, msg: Message) -> None:
        """Change one field's value, or its written length."""
        if not msg.fields:
            msg.fields.append(Field("raw", self.rng.randbytes(self.rng.randrange(1, 8))))
            msg.altered = True
            return
        i = self.rng.randrange(len(msg.fields))
        f = msg.fields[i]
        if f.kind in ("len32", "lenenc", "len8") and self.rng.random() < 0.3:
            true = len(f.value) if isinstance(f.value, bytes) else -1
            msg.fields[i] = replace(f, lie=self.int_for("i32" if f.kind != "len8" else "u8", true))
        elif isinstance(f.value, int):
            msg.fields[i] = replace(f, value=self.int_for(f.kind, f.value))
        elif f.value is None:
            msg.fields[i] = replace(f, value=self.blob(b""))
        else:
            msg.fields[i] = replace(f, value=self.blob(f.value))
        msg.altered = True

    def structure(self, msg: Message) -> None:
        """Add, drop or duplicate a field (counts then disagree with what follows)."""
        r = self.rng
        if msg.fields and r.random() < 0.4:
            del msg.fields[r.randrange(len(msg.fields))]
        elif msg.fields and r.random() < 0.5:
            i = r.randrange(len(msg.fields))
            msg.fields.insert(i, msg.fields[i])
        else:
            kind = r.choice(("i16", "i32", "cstr", "len32", "u8", "u32le", "lenenc"))
            value: bytes | int = (
                r.randrange(1 << 16) if kind in ("i16", "i32", "u8", "u32le") else r.choice(NAMES)
            )
            msg.fields.insert(r.randrange(len(msg.fields) + 1), Field(kind, value))
        msg.altered = True

    def mutate_message(self, msg: Message, encode: object) -> None:
        r = self.rng
        op = r.random()
        if op < 0.6:
            for _ in range(r.randrange(1, 3)):
                self.field(msg)
        elif op < 0.75:
            self.structure(msg)
        elif op < 0.83 and msg.type:
            msg.type = bytes((r.choice(b"BCDEFHPQSXdcfpHS\x00\xff" + bytes((r.randrange(256),))),))
            msg.altered = True
        elif op < 0.88:
            msg.header_lie = self.int_for("i32", len(encode_fields(msg.fields)) + (4 if msg.type else 0))
            msg.altered = True
        else:
            msg.raw = self.bytes_(encode(msg))  # type: ignore[operator]
            msg.altered = True

    def sequence(self, msgs: list[Message], pool: list[Message]) -> list[Message]:
        """Duplicate, drop, swap or splice in messages (from `pool`, other valid templates)."""
        r = self.rng
        msgs = list(msgs)
        op = r.randrange(5)
        if op == 0 and msgs:
            i = r.randrange(len(msgs))
            msgs.insert(r.randrange(len(msgs) + 1), clone(msgs[i]))
        elif op == 1 and len(msgs) > 1:
            del msgs[r.randrange(len(msgs))]
        elif op == 2 and len(msgs) > 1:
            i, j = r.randrange(len(msgs)), r.randrange(len(msgs))
            msgs[i], msgs[j] = msgs[j], msgs[i]
        elif op == 3 and pool:
            msgs.insert(r.randrange(len(msgs) + 1), clone(r.choice(pool)))
        elif msgs:
            i = r.randrange(len(msgs))
            msgs[i:i] = [clone(m) for m in msgs[i : i + r.randrange(1, 4)]] * r.randrange(1, 4)
        return msgs

    def split(self, data: bytes) -> list[bytes]:
        """Cut the bytes into sends: mostly one, sometimes several, occasionally byte by byte."""
        r = self.rng
        op = r.random()
        if op < 0.6 or len(data) < 2:
            return [data]
        if op < 0.97:
            cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.randrange(1, 6))))
            return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        return [data[i : i + 1] for i in range(min(len(data), 200))] + (
            [data[200:]] if len(data) > 200 else []
        )


def clone(msg: Message) -> Message:
    return replace(msg, fields=list(msg.fields))


@dataclass
class Case:
    """One generated case: the messages, their bytes, how they were cut into sends."""

    seed: int
    messages: list[Message] = field(default_factory=list)
    sends: list[bytes] = field(default_factory=list)
    framing_broken: bool = False  # a length lie: the server may wait for bytes that never come

    @property
    def altered(self) -> int:
        return sum(1 for m in self.messages if m.altered)

    def describe(self) -> str:
        labels = " ".join(m.label or m.type.decode("latin-1") for m in self.messages)
        data = b"".join(self.sends)
        return f"seed={self.seed} messages=[{labels}] bytes={data[:4096].hex()}" + (
            f"…(+{len(data) - 4096})" if len(data) > 4096 else ""
        )

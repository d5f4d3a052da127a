"""PostgreSQL cases: valid message sequences as typed fields, and their mutations.

`frontend_*` build each frontend message the way the proxy's codec does (tests/fuzz/test_fuzz_codec.py
checks they encode to exactly the bytes of `proxy.wire.pg.protocol.make_*`); `command_case(seed)`
draws a valid sequence from the scenarios below and mutates it; `login_plan(seed)` says how one
hostile login goes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from proxy.wire.pg import protocol as pgp
from tests.fuzz.mutate import Case, Field, Message, Mutator, clone, encode_pg

TABLE = "fz_items"

# Statements a read/propose user might send, and the writes and privileged statements the
# gateway must hold or deny. Mutations start from these.
SQL = (
    f"SELECT * FROM {TABLE}",
    f"SELECT name FROM {TABLE} WHERE id = $1",
    "SELECT $1::int + $2::int",
    "SELECT 1",
    f"SELECT count(*) FROM {TABLE}",
    f"TABLE {TABLE}",
    "VALUES (1, 'a'), (2, 'b')",
    "SHOW search_path",
    "EXPLAIN SELECT 1",
    f"SELECT * FROM {TABLE} FOR UPDATE",
    f"INSERT INTO {TABLE} VALUES (99, 'fuzz')",
    f"UPDATE {TABLE} SET name = 'fuzzed'",
    f"DELETE FROM {TABLE} WHERE id = $1",
    f"WITH d AS (DELETE FROM {TABLE} RETURNING *) SELECT * FROM d",
    f"EXPLAIN ANALYZE DELETE FROM {TABLE}",
    f"TRUNCATE {TABLE}",
    f"DROP TABLE {TABLE}",
    "CREATE TABLE fz_new (a int)",
    f"COPY {TABLE} TO STDOUT",
    f"COPY {TABLE} FROM STDIN",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SET default_transaction_read_only = off",
    "RESET default_transaction_read_only",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "SET ROLE qb_admin",
    f"DECLARE c CURSOR WITH HOLD FOR SELECT * FROM {TABLE}",
    "FETCH 1 FROM c",
    f"PREPARE q AS UPDATE {TABLE} SET name = 'y'",
    "EXECUTE q",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "SET standard_conforming_strings = off",
    "SET client_encoding = 'SJIS'",
    f"SELECT 'a\\'; UPDATE {TABLE} SET name = ''--'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT query_to_xml('DELETE FROM fz_items', true, true, '')",
    "LISTEN fz",
    "NOTIFY fz",
    "SELECT repeat('x', 200000)",
    "",
)

# Function oids for FunctionCall: random(), set_config, pg_terminate_backend, lo_import, nonsense.
FUNCTION_OIDS = (1598, 2078, 2096, 764, 0, 0xFFFFFFFF)


def query(sql: bytes) -> Message:
    return Message(b"Q", [Field("cstr", sql)], label="Q")


def parse(name: bytes, sql: bytes, oids: list[int]) -> Message:
    fields = [Field("cstr", name), Field("cstr", sql), Field("i16", len(oids))]
    fields += [Field("i32", oid) for oid in oids]
    return Message(b"P", fields, label="P")


def bind(
    portal: bytes, statement: bytes, formats: list[int], values: list[bytes | None], result_formats: list[int]
) -> Message:
    fields = [Field("cstr", portal), Field("cstr", statement), Field("i16", len(formats))]
    fields += [Field("i16", f) for f in formats]
    fields.append(Field("i16", len(values)))
    fields += [Field("len32", v) for v in values]
    fields.append(Field("i16", len(result_formats)))
    fields += [Field("i16", f) for f in result_formats]
    return Message(b"B", fields, label="B")


def describe(what: bytes, name: bytes) -> Message:
    return Message(b"D", [Field("raw", what), Field("cstr", name)], label="D" + what.decode())


def execute(portal: bytes, max_rows: int = 0) -> Message:
    return Message(b"E", [Field("cstr", portal), Field("i32", max_rows)], label="E")


def close(what: bytes, name: bytes) -> Message:
    return Message(b"C", [Field("raw", what), Field("cstr", name)], label="C" + what.decode())


def simple(type_byte: bytes, label: str) -> Message:
    return Message(type_byte, [], label=label)


def copy_data(data: bytes) -> Message:
    return Message(b"d", [Field("raw", data)], label="d")


def copy_fail(reason: bytes) -> Message:
    return Message(b"f", [Field("cstr", reason)], label="f")


def function_call(oid: int, args: list[bytes | None]) -> Message:
    fields = [Field("i32", oid), Field("i16", 1), Field("i16", 0), Field("i16", len(args))]
    fields += [Field("len32", a) for a in args]
    fields.append(Field("i16", 0))
    return Message(b"F", fields, label="F")


def startup(params: dict[bytes, bytes], version: int = pgp.PROTOCOL_3_0) -> Message:
    fields = [Field("i32", version)]
    for k, v in params.items():
        fields += [Field("cstr", k), Field("cstr", v)]
    fields.append(Field("raw", b"\x00"))
    return Message(b"", fields, label="startup")


def ssl_request() -> Message:
    return Message(b"", [Field("i32", pgp.SSL_REQUEST_CODE)], label="SSLRequest")


def gssenc_request() -> Message:
    return Message(b"", [Field("i32", pgp.GSSENC_REQUEST_CODE)], label="GSSENCRequest")


def cancel_request(pid: int, key: int) -> Message:
    return Message(
        b"", [Field("i32", pgp.CANCEL_REQUEST_CODE), Field("i32", pid), Field("i32", key)], label="Cancel"
    )


def sasl_initial(mechanism: bytes, data: bytes) -> Message:
    return Message(b"p", [Field("cstr", mechanism), Field("len32", data)], label="SASLInitial")


def sasl_response(data: bytes) -> Message:
    return Message(b"p", [Field("raw", data)], label="SASLResponse")


# ------------------------------------------------------------------------ scenarios


def _sql(r: random.Random) -> bytes:
    return r.choice(SQL).encode()


def _values(r: random.Random) -> list[bytes | None]:
    return [
        r.choice((b"1", b"2", b"abc", None, b"\x00\x00\x00\x01", b"")) for _ in range(r.choice((0, 1, 2)))
    ]


def scenario(r: random.Random) -> list[Message]:
    """One valid sequence of frontend messages."""
    kind = r.randrange(9)
    s1, s2, p1 = r.choice((b"", b"s1")), r.choice((b"", b"s2")), r.choice((b"", b"p1"))
    if kind == 0:
        return [query(_sql(r))]
    if kind == 1:  # a whole extended batch
        values = _values(r)
        return [
            parse(s1, _sql(r), [r.choice((0, 23, 25))] * len(values)),
            bind(p1, s1, [r.choice((0, 1))] if values else [], values, [r.choice((0, 1))]),
            describe(b"P", p1),
            execute(p1, r.choice((0, 0, 1, 2))),
            simple(b"S", "S"),
        ]
    if kind == 2:  # bind, then swap the statement's name before Execute (class 1 of issue 10)
        return [
            parse(s1, f"UPDATE {TABLE} SET name = 'swapped'".encode(), []),
            bind(p1, s1, [], [], []),
            close(b"S", s1),
            parse(s1, b"SELECT 1", []),
            execute(p1),
            simple(b"S", "S"),
        ]
    if kind == 3:  # Describe statement, Flush without Sync, then Sync
        return [parse(s2, _sql(r), []), describe(b"S", s2), simple(b"H", "H"), simple(b"S", "S")]
    if kind == 4:  # a transaction around the batch
        return [query(b"BEGIN"), *scenario(r), query(r.choice((b"COMMIT", b"ROLLBACK")))]
    if kind == 5:  # COPY messages, in and outside COPY
        return [
            query(r.choice((f"COPY {TABLE} FROM STDIN", f"COPY {TABLE} TO STDOUT")).encode()),
            copy_data(b"100\tcopied\n"),
            r.choice((simple(b"c", "c"), copy_fail(b"no"))),
        ]
    if kind == 6:
        return [function_call(r.choice(FUNCTION_OIDS), [b"default_transaction_read_only", b"off", b"f"])]
    if kind == 7:  # portal with a row limit, continued
        return [
            parse(b"", f"SELECT * FROM {TABLE}".encode(), []),
            bind(b"c1", b"", [], [], []),
            execute(b"c1", 1),
            execute(b"c1", 1),
            close(b"P", b"c1"),
            simple(b"S", "S"),
        ]
    return [close(r.choice((b"S", b"P")), r.choice((s1, p1))), simple(b"S", "S")]


ALL_TEMPLATES = [
    query(b"SELECT 1"),
    parse(b"s1", b"SELECT $1::int", [23]),
    bind(b"", b"s1", [0], [b"1"], [0]),
    describe(b"S", b"s1"),
    execute(b"", 0),
    close(b"S", b"s1"),
    simple(b"S", "S"),
    simple(b"H", "H"),
    copy_data(b"x"),
    simple(b"c", "c"),
    copy_fail(b"x"),
    function_call(1598, []),
    sasl_response(b"x"),
]


def probe(marker: bytes) -> bytes:
    """Sync (ends any failed batch) and a query whose answer carries `marker`."""
    return encode_pg(simple(b"S", "S")) + encode_pg(query(b"SELECT '" + marker + b"'"))


def command_case(seed: int, *, mutations: float = 1.0) -> Case:
    """2-8 scenarios, up to three messages mutated, then sequence edits and a cut into sends.
    Rarely a Terminate at the end (the probe then finds the session gone)."""
    r = random.Random(seed)
    m = Mutator(r)
    msgs: list[Message] = []
    for _ in range(r.randrange(2, 9)):
        msgs += scenario(r)
    msgs = [clone(x) for x in msgs]
    if r.random() < mutations:
        for _ in range(r.choice((0, 1, 1, 2, 2, 3))):  # how many messages a mutation touches
            m.mutate_message(r.choice(msgs), encode_pg)
        for _ in range(r.randrange(0, 3)):
            msgs = m.sequence(msgs, ALL_TEMPLATES)
        if r.random() < 0.02:
            msgs.append(simple(b"X", "X"))
    data = b"".join(encode_pg(x) for x in msgs)
    if r.random() < 0.03:  # random bytes after valid ones
        data += r.randbytes(r.randrange(1, 64))
        msgs.append(Message(b"", [], altered=True, label="garbage"))
    case = Case(seed, msgs, m.split(data))
    case.framing_broken = any(x.header_lie is not None or x.raw is not None for x in msgs) or (
        msgs and msgs[-1].label == "garbage"
    )
    return case


# --------------------------------------------------------------------------- logins


@dataclass
class LoginPlan:
    """How one hostile login goes: what to send before the startup, the startup itself, how to
    answer SCRAM, and where to stop (`stop_after`: 0 = after connecting, 1 = after the startup…)."""

    seed: int
    pre: list[Message]
    startup: Message
    tls_garbage: bytes | None  # after an SSLRequest answered "S": these bytes instead of a handshake
    mechanism: bytes
    mutate_first: bool
    mutate_final: bool
    stop_after: int
    linger: float  # seconds to stay connected without sending before closing (half-open)
    mutator: Mutator


def login_plan(seed: int, user: bytes, database: bytes) -> LoginPlan:
    r = random.Random(seed)
    m = Mutator(r)
    pre: list[Message] = []
    tls_garbage = None
    op = r.random()
    if op < 0.15:
        pre.append(ssl_request())
        if r.random() < 0.6:
            tls_garbage = r.choice(
                (
                    r.randbytes(r.randrange(1, 300)),
                    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a ClientHello cut short
                    b"\x16\x03\x01\xff\xff" + r.randbytes(50),
                    b"GET / HTTP/1.1\r\n\r\n",
                )
            )
    elif op < 0.2:
        pre.append(gssenc_request())
    elif op < 0.25:
        pre.append(cancel_request(r.randrange(1 << 31), r.randrange(1 << 32)))
    params = {
        b"user": r.choice((user, user, b"nobody-" + str(r.randrange(100000)).encode(), b"")),
        b"database": database,
    }
    if r.random() < 0.3:
        params[r.choice((b"application_name", b"options", b"_pq_.x", b"replication", b"client_encoding"))] = (
            r.choice((b"fuzz", b"-c default_transaction_read_only=off", b"true", b"SJIS", b""))
        )
    start = startup(params, r.choice((pgp.PROTOCOL_3_0,) * 8 + (196609, 0x00020000, 1234)))
    if r.random() < 0.35:
        m.mutate_message(start, encode_pg)
    for msg in pre:
        if r.random() < 0.3:
            m.mutate_message(msg, encode_pg)
    return LoginPlan(
        seed=seed,
        pre=pre,
        startup=start,
        tls_garbage=tls_garbage,
        mechanism=r.choice((b"SCRAM-SHA-256",) * 6 + (b"SCRAM-SHA-256-PLUS", b"MD5", b"")),
        mutate_first=r.random() < 0.35,
        mutate_final=r.random() < 0.5,
        stop_after=r.choice((0, 1, 2, 3, 3, 3, 3, 3)),
        linger=r.choice((0.0, 0.0, 0.0, 0.05, 0.3)),
        mutator=m,
    )

"""MySQL/MariaDB cases: valid command sequences as typed fields, and their mutations.

Each command payload is built from fields the way the proxy's codec builds it
(tests/fuzz/test_fuzz_codec.py compares with `proxy.wire.mysql.protocol`); a command packet starts at
sequence id 0. `command_case(seed, state)` draws valid commands (with statement ids the
connection has really been given, and the greeting's scramble for COM_CHANGE_USER) and mutates
them; `login_plan(seed)` says how one hostile login goes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from proxy.upstream.mysql import scramble_caching_sha2, scramble_native
from proxy.wire.mysql import protocol as my
from tests.fuzz.mutate import Case, Field, Message, Mutator, clone, encode_my

TABLE = "fz_items"
C = my.Command

SQL = (
    f"SELECT * FROM {TABLE}",
    f"SELECT name FROM {TABLE} WHERE id = ?",
    "SELECT ? + ?",
    "SELECT 1",
    f"SELECT count(*) FROM {TABLE}",
    "SHOW DATABASES",
    "SHOW PROCESSLIST",
    "SELECT * FROM mysql.user",
    f"SELECT * FROM {TABLE} FOR UPDATE",
    f"INSERT INTO {TABLE} VALUES (99, 'fuzz')",
    f"UPDATE {TABLE} SET name = 'fuzzed'",
    f"DELETE FROM {TABLE} WHERE id = ?",
    f"REPLACE INTO {TABLE} VALUES (1, 'r')",
    f"TRUNCATE {TABLE}",
    f"DROP TABLE {TABLE}",
    "CREATE TABLE fz_new (a int)",
    f"SELECT * FROM {TABLE} INTO OUTFILE '/tmp/fz.out'",
    "SET SESSION TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "START TRANSACTION READ WRITE",
    "SET autocommit = 0",
    "SET NAMES sjis",
    "SET sql_mode = 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES'",
    "SET STATEMENT max_statement_time=1 FOR SELECT 1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "USE mysql",
    "USE qbtest",
    "KILL QUERY 1",
    "/* x */ KILL QUERY 2",
    "/*!50000 KILL CONNECTION 3 */",
    "LOCK TABLES fz_items WRITE",
    "UNLOCK TABLES",
    f"PREPARE q FROM 'UPDATE {TABLE} SET name = 1'",
    "EXECUTE q",
    "EXECUTE IMMEDIATE 'DELETE FROM fz_items'",
    f"SELECT 'a\\'; UPDATE {TABLE} SET name = ''-- '",
    f"SELECT 1 --x\nUPDATE {TABLE} SET name = 'c'",
    "SELECT LOAD_FILE('/etc/passwd')",
    "SELECT REPEAT('x', 200000)",
    "SELECT 1; SELECT 2",
    "",
)

CAPABILITIES = (
    my.Capability.CLIENT_LONG_PASSWORD
    | my.Capability.CLIENT_PROTOCOL_41
    | my.Capability.CLIENT_SECURE_CONNECTION
    | my.Capability.CLIENT_PLUGIN_AUTH
    | my.Capability.CLIENT_TRANSACTIONS
    | my.Capability.CLIENT_MULTI_RESULTS
)


@dataclass
class ConnState:
    """What a command case may know about its connection: statement ids and parameter counts the
    server returned, the greeting's scramble, who may be switched to with COM_CHANGE_USER."""

    scramble: bytes = b""
    statements: dict[int, int] = field(default_factory=dict)  # id → parameter count
    change_user: tuple[str, str] = ("", "")  # (user, password)
    database: str = ""


def command(cmd: int, *fields: Field, label: str = "") -> Message:
    return Message(b"", [Field("u8", cmd), *fields], label=label or C(cmd).name.removeprefix("COM_"))


def com_query(sql: bytes) -> Message:
    return command(C.COM_QUERY, Field("raw", sql))


def com_prepare(sql: bytes) -> Message:
    return command(C.COM_STMT_PREPARE, Field("raw", sql))


def com_execute(stmt_id: int, params: int, r: random.Random, flags: int = 0) -> Message:
    """COM_STMT_EXECUTE with new parameters bound: strings, integers and NULLs."""
    fields = [Field("u32le", stmt_id), Field("u8", flags), Field("u32le", 1)]
    if params:
        kinds = [
            r.choice(
                (
                    my.ColumnType.MYSQL_TYPE_VAR_STRING,
                    my.ColumnType.MYSQL_TYPE_LONGLONG,
                    my.ColumnType.MYSQL_TYPE_NULL,
                )
            )
            for _ in range(params)
        ]
        bitmap = bytearray((params + 7) // 8)
        for i, kind in enumerate(kinds):
            if kind is my.ColumnType.MYSQL_TYPE_NULL:
                bitmap[i >> 3] |= 1 << (i & 7)
        fields += [Field("raw", bytes(bitmap)), Field("u8", 1)]
        fields += [Field("raw", bytes((int(k), 0))) for k in kinds]
        for kind in kinds:
            if kind is my.ColumnType.MYSQL_TYPE_VAR_STRING:
                fields.append(Field("lenenc", r.choice((b"1", b"abc", b"\xff\x00", b""))))
            elif kind is my.ColumnType.MYSQL_TYPE_LONGLONG:
                fields.append(Field("raw", r.randrange(1 << 64).to_bytes(8, "little")))
    return command(C.COM_STMT_EXECUTE, *fields)


def com_stmt(cmd: int, stmt_id: int) -> Message:
    return command(cmd, Field("u32le", stmt_id))


def com_fetch(stmt_id: int, rows: int) -> Message:
    return command(C.COM_STMT_FETCH, Field("u32le", stmt_id), Field("u32le", rows))


def com_long_data(stmt_id: int, param: int, data: bytes) -> Message:
    return command(
        C.COM_STMT_SEND_LONG_DATA, Field("u32le", stmt_id), Field("u16le", param), Field("raw", data)
    )


def com_change_user(user: bytes, auth: bytes, database: bytes, plugin: bytes) -> Message:
    return command(
        C.COM_CHANGE_USER,
        Field("cstr", user),
        Field("len8", auth),
        Field("cstr", database),
        Field("u16le", my.UTF8MB4_GENERAL_CI),
        Field("cstr", plugin),
    )


def handshake_response(
    caps: int, user: bytes, auth: bytes, database: bytes | None, plugin: bytes, attrs: bytes | None = None
) -> Message:
    caps |= int(my.Capability.CLIENT_PROTOCOL_41)
    caps = (
        caps | int(my.Capability.CLIENT_CONNECT_WITH_DB)
        if database is not None
        else caps & ~int(my.Capability.CLIENT_CONNECT_WITH_DB)
    )
    if attrs is not None:
        caps |= int(my.Capability.CLIENT_CONNECT_ATTRS)
    fields = [
        Field("u32le", caps),
        Field("u32le", my.DEFAULT_MAX_PAYLOAD),
        Field("u8", my.UTF8MB4_GENERAL_CI),
        Field("raw", bytes(23)),
        Field("cstr", user),
        Field("len8", auth),
    ]
    if database is not None:
        fields.append(Field("cstr", database))
    fields.append(Field("cstr", plugin))
    if attrs is not None:
        fields.append(Field("lenenc", attrs))
    return Message(b"", fields, seq=1, label="HandshakeResponse41")


def ssl_request(caps: int) -> Message:
    caps |= int(my.Capability.CLIENT_SSL | my.Capability.CLIENT_PROTOCOL_41)
    fields = [
        Field("u32le", caps),
        Field("u32le", my.DEFAULT_MAX_PAYLOAD),
        Field("u8", my.UTF8MB4_GENERAL_CI),
        Field("raw", bytes(23)),
    ]
    return Message(b"", fields, seq=1, label="SSLRequest")


# ------------------------------------------------------------------------ scenarios


def _stmt_id(r: random.Random, state: ConnState) -> tuple[int, int]:
    if state.statements and r.random() < 0.8:
        stmt_id = r.choice(list(state.statements))
        return stmt_id, state.statements[stmt_id]
    return r.choice(
        (0, 1, 2, 3, 0xFFFFFFFF, my.MARIADB_LAST_PREPARED_STATEMENT, 0x7F000000, 0x7F000001)
    ), r.randrange(3)


def scenario(r: random.Random, state: ConnState) -> list[Message]:
    kind = r.randrange(12)
    sql = r.choice(SQL).encode()
    if kind <= 2:
        return [com_query(sql)]
    if kind == 3:
        stmt_id, params = _stmt_id(r, state)
        return [com_execute(stmt_id, params, r, r.choice((0, 0, 1)))]
    if kind == 4:
        stmt_id, params = _stmt_id(r, state)
        return [
            com_execute(stmt_id, params, r, 1),
            com_fetch(stmt_id, r.choice((1, 2, 100))),
            com_stmt(C.COM_STMT_RESET, stmt_id),
        ]
    if kind == 5:
        stmt_id, _ = _stmt_id(r, state)
        return [com_long_data(stmt_id, r.randrange(2), b"long data"), com_stmt(C.COM_STMT_CLOSE, stmt_id)]
    if kind == 6:
        return [com_prepare(sql)]
    if kind == 7:
        return [
            command(C.COM_SET_OPTION, Field("u16le", r.randrange(2))),
            com_query(b"SELECT 1; UPDATE fz_items SET name = 'm'"),
        ]
    if kind == 8:
        user, password = state.change_user
        plugin = r.choice((b"caching_sha2_password", b"mysql_native_password"))
        auth = (scramble_caching_sha2 if plugin.startswith(b"caching") else scramble_native)(
            password, state.scramble
        )
        return [com_change_user(user.encode(), auth, state.database.encode(), plugin)]
    if kind == 9:
        return [
            command(C.COM_INIT_DB, Field("raw", r.choice((b"qbtest", b"mysql", b"information_schema", b""))))
        ]
    if kind == 10:
        return [command(C.COM_PROCESS_KILL, Field("u32le", r.randrange(1, 50)))]
    simple = r.choice(
        (
            command(C.COM_PING),
            command(C.COM_STATISTICS),
            command(C.COM_RESET_CONNECTION),
            command(C.COM_FIELD_LIST, Field("cstr", TABLE.encode()), Field("raw", b"")),
            command(C.COM_REFRESH, Field("u8", 1)),
            command(C.COM_SHUTDOWN, Field("u8", 0)),
            command(C.COM_CREATE_DB, Field("raw", b"fz_db")),
            command(C.COM_DROP_DB, Field("raw", b"qbtest")),
            command(C.COM_DEBUG),
            command(C.COM_PROCESS_INFO),
            command(C.COM_SLEEP),
            command(C.COM_TIME),
            command(
                C.COM_BINLOG_DUMP, Field("u32le", 4), Field("u16le", 0), Field("u32le", 1), Field("raw", b"")
            ),
            command(C.COM_REGISTER_SLAVE, Field("raw", bytes(18))),
            command(C.COM_STMT_BULK_EXECUTE, Field("u32le", 1), Field("u16le", 0)),
            Message(b"", [Field("u8", r.randrange(0x22, 0xFA))], label="unknown"),
        )
    )
    return [simple]


ALL_TEMPLATES = [
    com_query(b"SELECT 1"),
    com_prepare(b"SELECT ?"),
    com_stmt(C.COM_STMT_CLOSE, 1),
    com_stmt(C.COM_STMT_RESET, 1),
    com_fetch(1, 1),
    command(C.COM_PING),
    command(C.COM_SET_OPTION, Field("u16le", 0)),
    command(C.COM_QUIT),
]


def probe(marker: bytes) -> bytes:
    return encode_my(com_query(b"SELECT '" + marker + b"'"))


def command_case(seed: int, state: ConnState, *, mutations: float = 1.0) -> Case:
    r = random.Random(seed)
    m = Mutator(r)
    msgs: list[Message] = []
    for _ in range(r.randrange(2, 10)):
        msgs += scenario(r, state)
    msgs = [clone(x) for x in msgs]
    if r.random() < mutations:
        for _ in range(r.choice((0, 1, 1, 2, 2, 3))):  # how many messages a mutation touches
            msg = r.choice(msgs)
            if r.random() < 0.1:
                msg.seq = r.choice((1, 2, 0xFF, r.randrange(256)))
                msg.altered = True
            else:
                m.mutate_message(msg, encode_my)
        for _ in range(r.randrange(0, 3)):
            msgs = m.sequence(msgs, ALL_TEMPLATES)
    data = b"".join(encode_my(x) for x in msgs)
    case = Case(seed, msgs, m.split(data))
    case.framing_broken = any(x.header_lie is not None or x.raw is not None for x in msgs)
    return case


# --------------------------------------------------------------------------- logins


@dataclass
class LoginPlan:
    seed: int
    ssl: Message | None
    tls_garbage: bytes | None
    response: Message
    switch_answer: bytes | None  # the answer to an AuthSwitchRequest (None: the right one)
    stop_after: int  # 0: after the greeting; 1: after the SSLRequest; 2: after the response; 3: to the end
    linger: float
    correct: bool  # compute the right scramble for the user (when the plan's user is real)
    mutate_response: bool
    mutator: Mutator
    user: bytes
    password: str
    database: bytes | None
    plugin: bytes


def login_plan(seed: int, user: str, password: str, database: str) -> LoginPlan:
    r = random.Random(seed)
    m = Mutator(r)
    ssl = None
    tls_garbage = None
    if r.random() < 0.15:
        ssl = ssl_request(int(CAPABILITIES))
        if r.random() < 0.3:
            m.mutate_message(ssl, encode_my)
        tls_garbage = r.choice(
            (
                r.randbytes(r.randrange(1, 300)),
                b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
                b"\x16\x03\x01\xff\xff" + r.randbytes(50),
                b"\x15\x03\x03\x00\x02\x02\x28",  # a TLS alert
                b"",  # nothing: hang up right after the SSLRequest
            )
        )
    name = r.choice((user.encode(), user.encode(), b"nobody-" + str(r.randrange(100000)).encode(), b""))
    plugin = r.choice(
        (b"caching_sha2_password",) * 4 + (b"mysql_native_password", b"mysql_clear_password", b"dialog", b"")
    )
    db = r.choice((database.encode(), database.encode(), b"", b"nosuchdb", None))
    return LoginPlan(
        seed=seed,
        ssl=ssl,
        tls_garbage=tls_garbage,
        response=handshake_response(int(CAPABILITIES), name, b"", db, plugin),
        switch_answer=None if r.random() < 0.7 else r.randbytes(r.choice((0, 20, 21, 255))),
        stop_after=r.choice((0, 1, 2, 3, 3, 3, 3, 3)),
        linger=r.choice((0.0, 0.0, 0.0, 0.05, 0.3)),
        correct=r.random() < 0.6,
        mutate_response=r.random() < 0.4,
        mutator=m,
        user=name,
        password=password,
        database=db,
        plugin=plugin,
    )

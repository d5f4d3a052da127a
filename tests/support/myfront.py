"""A running QueryBase in front of the test MariaDB, for the MySQL front end's tests.

`running_gateway()` builds a QueryBase home with MySQL source `shop_my` on the test server's
`qbtest` (read login qb_reader, write login qb_native), a second MySQL source `other_my` granted
only to dave (so dave reaches two MySQL sources and must name one), the users below with their
grants, and starts `querybase serve`. The `Gateway` it yields knows the MySQL port and the
passwords, can look at the database directly (as root) and at the change requests in the store.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.upstream.mysql import scramble_caching_sha2
from proxy.wire.mysql import protocol as my
from tests.support.localdb import MARIADB_PASSWORDS, MariaDBServer
from tests.support.pgfront import cli, listen_port
from tests.support.querybase import ServeProcess, init_home, start_serve

SOURCE = "shop_my"
OTHER_SOURCE = "other_my"  # granted to dave only: he reaches two MySQL sources
SCHEMA = "qbtest"

# user → (group, level on SOURCE); frank has no grant at all.
USERS: dict[str, tuple[str, str]] = {
    "alice": ("analysts", "propose"),
    "bob": ("approvers", "approve"),
    "carol": ("readers", "read"),
    "dave": ("writers", "write"),
    "frank": ("outsiders", ""),
}
PASSWORDS = {name: f"{name}-My-Secret-42" for name in USERS}

ITEMS = [(1, "apple"), (2, "banana"), (3, "cherry"), (4, "date"), (5, "elderberry")]

TABLE_SQL = f"""
DROP TABLE IF EXISTS items;
DROP TABLE IF EXISTS items_copy;
CREATE TABLE items (id int PRIMARY KEY, name varchar(50));
CREATE TABLE items_copy (id int PRIMARY KEY, name varchar(50));
INSERT INTO items VALUES {", ".join(f"({i}, '{n}')" for i, n in ITEMS)};
"""


def setup_items(server: MariaDBServer) -> None:
    """(Re)create `items` (with ITEMS) and an empty `items_copy` in qbtest, as root."""
    server.execute_sql(TABLE_SQL)


def provision(config: Path, server: MariaDBServer, users: Iterable[str] | None = None) -> None:
    """Sources `shop_my` and `other_my` on the server's qbtest, the USERS with groups and grants."""
    chosen = {name: USERS[name] for name in (USERS if users is None else users)}
    env = {
        "READ_PW": MARIADB_PASSWORDS["qb_reader"],
        "WRITE_PW": MARIADB_PASSWORDS["qb_native"],
        **{f"PW_{name.upper()}": pw for name, pw in PASSWORDS.items()},
    }
    for name in (SOURCE, OTHER_SOURCE):
        cli(
            config,
            *("source", "add", name, "--engine", "mysql", "--host", server.host),
            *("--port", str(server.port), "--database", SCHEMA),
            *("--user", "qb_reader", "--password-env", "READ_PW"),
            *("--write-user", "qb_native", "--write-password-env", "WRITE_PW", "--tls", "disable"),
            env=env,
        )
    for group, level in dict(chosen.values()).items():
        cli(config, "group", "add", group)
        if level:
            cli(config, "grant", group, SOURCE, level)
    if "writers" in dict(chosen.values()):
        cli(config, "grant", "writers", OTHER_SOURCE, "read")
    for user, (group, _) in chosen.items():
        cli(config, "user", "add", user, "--password-env", f"PW_{user.upper()}", env=env)
        cli(config, "group", "member", "add", group, user)


def add_tiny_source(config: Path, server: MariaDBServer, name: str = "tiny_my") -> None:
    """A source `name` on qbtest with a pool of ONE read connection (2 s timeout), readable by
    the `readers` group (carol): every session on it shares that one upstream connection."""
    cli(
        config,
        *("source", "add", name, "--engine", "mysql", "--host", server.host),
        *("--port", str(server.port), "--database", SCHEMA),
        *("--user", "qb_reader", "--password-env", "READ_PW", "--tls", "disable"),
        *("--pool-size", "1", "--pool-timeout", "2"),
        env={"READ_PW": MARIADB_PASSWORDS["qb_reader"]},
    )
    cli(config, "grant", "readers", name, "read")


def store_path(config: Path) -> Path:
    return config.parent / "querybase.db"


@dataclass
class Gateway:
    """A running `querybase serve` with the provisioned catalog; `port` is the MySQL listener."""

    config: Path
    serve: ServeProcess
    server: MariaDBServer
    host: str = "127.0.0.1"
    port: int = 0
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    def connect_args(self, user: str, database: str | None = SOURCE) -> dict[str, Any]:
        """host, port, user, password (and database) for PyMySQL through QueryBase."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": self.passwords.get(user, "x"),
            "connect_timeout": 10,
            "read_timeout": 30,
        }
        if database is not None:
            args["database"] = database
        return args

    def root_sql(self, sql: str) -> str:
        """Run SQL directly on MariaDB as root (unix socket); batch output."""
        return self.server.execute_sql(sql)

    def count(self, table: str = "items") -> int:
        return int(self.root_sql(f"SELECT count(*) FROM {table}").strip())

    def rows(self, sql: str) -> list[list[str]]:
        return [line.split("\t") for line in self.root_sql(sql).splitlines() if line]

    def change_requests(self) -> list[dict[str, Any]]:
        """Every change request in the store, oldest first, JSON columns decoded."""
        with contextlib.closing(sqlite3.connect(store_path(self.config))) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT id, status, statement_text, parameters, kind, session_facts, classification "
                "FROM change_requests ORDER BY id"
            ).fetchall()
        out = []
        for row in rows:
            record = dict(row)
            for key in ("parameters", "session_facts", "classification"):
                if record[key] is not None:
                    record[key] = json.loads(record[key])
            out.append(record)
        return out

    def last_request_id(self) -> int:
        requests = self.change_requests()
        return requests[-1]["id"] if requests else 0

    def new_requests(self, before: int) -> list[dict[str, Any]]:
        return [r for r in self.change_requests() if r["id"] > before]


@contextlib.contextmanager
def running_gateway(
    server: MariaDBServer, home: Path, *, tls_mode: str = "allow", users: Iterable[str] | None = None
) -> Iterator[Gateway]:
    """Provision a QueryBase home, start `querybase serve`, stop it afterwards."""
    config = init_home(home, tls_mode=tls_mode)
    provision(config, server, users)
    serve = start_serve(config)
    try:
        yield Gateway(config, serve, server, port=listen_port(config, "mysql"))
    finally:
        if serve.stop() != 0:
            serve.kill()


RAW_CAPABILITIES = (
    my.Capability.CLIENT_LONG_PASSWORD
    | my.Capability.CLIENT_PROTOCOL_41
    | my.Capability.CLIENT_SECURE_CONNECTION
    | my.Capability.CLIENT_PLUGIN_AUTH
    | my.Capability.CLIENT_TRANSACTIONS
)


class RawMy:
    """A blocking MySQL protocol client on a plain socket built on QueryBase's codec, for checking
    exact packets; every read has a timeout."""

    def __init__(self, gw: Gateway, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((gw.host, gw.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = my.PacketReader()
        self.hello: my.HandshakeV10 | None = None
        self.capabilities = RAW_CAPABILITIES

    def close(self) -> None:
        self.sock.close()

    def read(self) -> tuple[int, bytes] | None:
        """The next payload, or None at EOF."""
        while True:
            got = self.reader.next()
            if got is not None:
                return got
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.reader.feed(data)

    def must_read(self) -> tuple[int, bytes]:
        got = self.read()
        assert got is not None, "the server closed the connection"
        return got

    def send(self, payload: bytes, seq: int = 0) -> None:
        self.sock.sendall(my.make_packets(payload, seq)[0])

    def login(
        self,
        gw: Gateway,
        user: str,
        *,
        byte_by_byte: bool = False,
        extra: int = 0,
        database: str | None = SOURCE,
    ) -> None:
        seq, greeting = self.must_read()
        hello = self.hello = my.parse_handshake_v10(greeting)
        self.capabilities = RAW_CAPABILITIES | my.Capability(extra)
        answer = scramble_caching_sha2(gw.passwords[user], hello.scramble)
        payload = my.make_handshake_response41(
            self.capabilities, user, answer, database, "caching_sha2_password"
        )
        wire, _ = my.make_packets(payload, my.next_seq(seq))
        if byte_by_byte:
            for i in range(len(wire)):
                self.sock.sendall(wire[i : i + 1])
                time.sleep(0.002)
        else:
            self.sock.sendall(wire)
        _, reply = self.must_read()
        if reply[:1] == b"\x01":  # caching_sha2 fast-auth success
            assert reply == b"\x01\x03", reply
            _, reply = self.must_read()
        assert reply[:1] == b"\x00", f"login failed: {reply!r}"

    def query_one(self, sql: bytes) -> list[bytes]:
        """COM_QUERY returning the raw payloads of one result, up to its end (ERR, OK, or the
        terminator after the rows: EOF, or OK with the 0xFE header under DEPRECATE_EOF)."""
        self.send(b"\x03" + sql)
        return self.read_result()

    def read_result(self) -> list[bytes]:
        out = [self.must_read()[1]]
        if out[0][:1] in (b"\x00", b"\xff"):
            return out
        deprecate = bool(self.capabilities & my.Capability.CLIENT_DEPRECATE_EOF)
        terminators = 0
        while terminators < (1 if deprecate else 2):
            payload = self.must_read()[1]
            out.append(payload)
            if payload[:1] == b"\xff":
                break
            if my.is_terminator(payload, deprecate):
                terminators += 1
        return out

    def ends(self, timeout: float) -> bool:
        """True when the server closes the connection within `timeout` (ERR packets allowed)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                got = self.read()
                if got is None:
                    return True
        except TimeoutError:
            return False


# --------------------------------------------------------------------------- adversarial sources

ADV_LOGIN = "qb_adv"
ADV_PASSWORD = "qb-adv-secret-7"
ADV_SOURCE = "adv_my"  # read login qb_adv: it could write on its own, so QueryBase must stop writes
SCOPED_SOURCE = "scoped_my"  # the same login, restricted with --schemas qbtest
OTHER_SCHEMA = "qbother"  # a schema outside scoped_my's allowlist that qb_adv can read
VICTIM_SCHEMA = "qbvictim"  # a schema qb_adv may drop (COM_DROP_DB must not reach it)

ADV_SQL = f"""
CREATE DATABASE IF NOT EXISTS {OTHER_SCHEMA};
CREATE TABLE IF NOT EXISTS {OTHER_SCHEMA}.secrets (id int PRIMARY KEY, secret varchar(50));
REPLACE INTO {OTHER_SCHEMA}.secrets VALUES (1, 'the other schema');
CREATE DATABASE IF NOT EXISTS {VICTIM_SCHEMA};
CREATE USER IF NOT EXISTS '{ADV_LOGIN}'@'%';
ALTER USER '{ADV_LOGIN}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{ADV_PASSWORD}');
GRANT ALL PRIVILEGES ON qbtest.* TO '{ADV_LOGIN}'@'%';
GRANT ALL PRIVILEGES ON {OTHER_SCHEMA}.* TO '{ADV_LOGIN}'@'%';
GRANT ALL PRIVILEGES ON `qbvictim%`.* TO '{ADV_LOGIN}'@'%';
GRANT SELECT ON mysql.* TO '{ADV_LOGIN}'@'%';
"""


def provision_adversarial(config: Path, server: MariaDBServer) -> None:
    """A login `qb_adv` that can write qbtest, qbother and qbvictim* and read `mysql.*` (a careless
    read login), and two sources reading through it: `adv_my` and `scoped_my` (--schemas
    qbtest), with carol read, alice propose and dave write on both. Needs `provision` first."""
    server.execute_sql(ADV_SQL)
    env = {"ADV_PW": ADV_PASSWORD, "WRITE_PW": MARIADB_PASSWORDS["qb_native"]}
    for name in (ADV_SOURCE, SCOPED_SOURCE):
        cli(
            config,
            *("source", "add", name, "--engine", "mysql", "--host", server.host),
            *("--port", str(server.port), "--database", SCHEMA),
            *("--user", ADV_LOGIN, "--password-env", "ADV_PW"),
            *("--write-user", "qb_native", "--write-password-env", "WRITE_PW", "--tls", "disable"),
            env=env,
        )
        for group, level in (("readers", "read"), ("analysts", "propose"), ("writers", "write")):
            cli(config, "grant", group, name, level)
    cli(config, "source", "set", SCOPED_SOURCE, "--schemas", SCHEMA)


@contextlib.contextmanager
def adversarial_gateway(server: MariaDBServer, home: Path) -> Iterator[Gateway]:
    """`running_gateway` with the adversarial sources too (TLS disabled: raw clients speak plain)."""
    config = init_home(home, tls_mode="disable")
    provision(config, server)
    provision_adversarial(config, server)
    serve = start_serve(config)
    try:
        yield Gateway(config, serve, server, port=listen_port(config, "mysql"))
    finally:
        if serve.stop() != 0:
            serve.kill()


def raw_error(payload: bytes) -> tuple[int, str]:
    """(errno, message) of an ERR payload; (0, "") for anything else."""
    if payload[:1] != b"\xff":
        return 0, ""
    err = my.parse_err(payload)
    return err.errno, err.message


def connect_raw(gw: Gateway, user: str, database: str = ADV_SOURCE, *, multi: bool = True) -> RawMy:
    """A logged-in RawMy (multi-statements on by default: most attacks need them)."""
    raw = RawMy(gw)
    extra = int(my.Capability.CLIENT_MULTI_STATEMENTS | my.Capability.CLIENT_MULTI_RESULTS) if multi else 0
    raw.login(gw, user, database=database, extra=extra)
    return raw


def results(raw: RawMy, sql: bytes) -> list[list[bytes]]:
    """Every result of one COM_QUERY (several under multi-statements), each as raw payloads."""
    raw.send(b"\x03" + sql)
    out = []
    while True:
        result = raw.read_result()
        out.append(result)
        last = result[-1]
        if last[:1] == b"\xff":
            return out
        status = (
            my.parse_ok(last).status
            if last[:1] == b"\x00" or (last[:1] == b"\xfe" and len(last) > 5)
            else my.parse_eof(last).status
        )
        if not status & my.ServerStatus.SERVER_MORE_RESULTS_EXISTS:
            return out

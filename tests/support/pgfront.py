"""A running QueryBase in front of the test PostgreSQL, and a tiny raw-protocol client for it.

`running_gateway()` builds a QueryBase home with source `shop` (and `tiny`, pool size 1) on the
test cluster's `qbtest`, the users below with their grants, a fresh `items` table, and starts
`querybase serve`; the `Gateway` it yields knows the port and the passwords and can look at the
database directly (as qb_admin) and at the change requests in the SQLite store.

`RawPg` speaks the PostgreSQL protocol over a plain socket, for tests that need to control every
byte or the reading speed: startup, SCRAM login (`proxy.auth.scram.ScramClient`), simple queries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.auth.scram import ScramClient
from proxy.wire.pg import protocol as pgp
from tests.support.localdb import PG_PASSWORDS, PostgresCluster, find_pg_bindir
from tests.support.querybase import ServeProcess, init_home, run_cli_in_process, start_serve

SOURCE = "shop"
TINY_SOURCE = "tiny"  # pool size 1: for pool exhaustion
TINY_POOL_TIMEOUT = 2.0

# user → (group, level on shop). erin exists to be locked out by the login rate limit, gina to be
# disabled; frank has no grant on shop at all.
USERS: dict[str, tuple[str, str]] = {
    "alice": ("analysts", "propose"),
    "bob": ("approvers", "approve"),
    "carol": ("readers", "read"),
    "dave": ("writers", "write"),
    "erin": ("lockouts", "read"),
    "frank": ("outsiders", ""),
    "gina": ("readers", "read"),
}
PASSWORDS = {name: f"{name}-Secret-pw-42" for name in USERS}

ITEMS = [(1, "apple"), (2, "banana"), (3, "cherry"), (4, "date"), (5, "elderberry")]

TABLE_SQL = f"""
DROP TABLE IF EXISTS items CASCADE;
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO items VALUES {", ".join(f"({i}, '{n}')" for i, n in ITEMS)};
GRANT SELECT ON items TO qb_reader;
GRANT ALL ON items TO qb_scram;
CREATE OR REPLACE PROCEDURE wipe_items() LANGUAGE sql AS $$ DELETE FROM items $$;
"""


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = run_cli_in_process(config, *args, env=env)
    assert result.returncode == 0, f"querybase {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def listen_port(config: Path, section: str = "postgres") -> int:
    """The port of `[section] listen = "HOST:PORT"` in a config written by `write_config`."""
    text = config.read_text(encoding="utf-8").split(f"[{section}]", 1)[1]
    address = text.split('listen = "', 1)[1].split('"', 1)[0]
    return int(address.rpartition(":")[2])


def provision(
    config: Path, pg: PostgresCluster, users: Iterable[str] | None = None, pool_mode: str = "transaction"
) -> None:
    """Sources `shop` and `tiny` on pg's qbtest, the USERS (or some) with their groups and grants."""
    chosen = {name: USERS[name] for name in (USERS if users is None else users)}
    env = {
        "READ_PW": PG_PASSWORDS["qb_reader"],
        "WRITE_PW": PG_PASSWORDS["qb_scram"],
        **{f"PW_{name.upper()}": pw for name, pw in PASSWORDS.items()},
    }
    tiny = ("--pool-size", "1", "--pool-timeout", str(TINY_POOL_TIMEOUT))
    for name, extra in ((SOURCE, ()), (TINY_SOURCE, tiny)):
        cli(
            config,
            *("source", "add", name, "--engine", "postgresql", "--host", pg.host, "--port", str(pg.port)),
            *("--database", "qbtest", "--user", "qb_reader", "--password-env", "READ_PW"),
            *("--write-user", "qb_scram", "--write-password-env", "WRITE_PW", "--tls", "disable"),
            *("--pool-mode", pool_mode),
            *extra,
            env=env,
        )
    for group, level in dict(chosen.values()).items():
        cli(config, "group", "add", group)
        if level:
            cli(config, "grant", group, SOURCE, level)
    for user, (group, _) in chosen.items():
        cli(config, "user", "add", user, "--password-env", f"PW_{user.upper()}", env=env)
        cli(config, "group", "member", "add", group, user)
    if "readers" in dict(chosen.values()):
        cli(config, "grant", "readers", TINY_SOURCE, "read")


def store_path(config: Path) -> Path:
    return config.parent / "querybase.db"


@dataclass
class Gateway:
    """A running `querybase serve` with the provisioned catalog."""

    config: Path
    serve: ServeProcess
    pg: PostgresCluster
    host: str = "127.0.0.1"
    port: int = 0
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    @property
    def pid(self) -> int:
        return self.serve.process.pid

    def conninfo(self, user: str, dbname: str = SOURCE, **options: str) -> str:
        """A libpq keyword/value connection string for `user` through QueryBase."""
        params = {
            "host": self.host,
            "port": str(self.port),
            "dbname": dbname,
            "user": user,
            "password": self.passwords.get(user, "x"),
            "sslmode": "disable",
            "connect_timeout": "10",
        }
        params.update(options)
        return " ".join(f"{k}='{v}'" for k, v in params.items())

    def admin_sql(self, sql: str) -> str:
        """Run SQL directly on the test cluster as qb_admin (unix socket); psql's -A -t output."""
        return self.pg.execute_sql(sql)

    def count(self, table: str = "items") -> int:
        return int(self.admin_sql(f"SELECT count(*) FROM {table}").strip())

    def rows(self, sql: str) -> list[list[str]]:
        return [line.split("|") for line in self.admin_sql(sql).splitlines() if line]

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

    def new_requests(self, before: int) -> list[dict[str, Any]]:
        """Change requests with an id above `before`."""
        return [r for r in self.change_requests() if r["id"] > before]

    def last_request_id(self) -> int:
        requests = self.change_requests()
        return requests[-1]["id"] if requests else 0

    def rss_kib(self) -> int:
        """The serve process's resident set size (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")


def setup_items(pg: PostgresCluster) -> None:
    pg.execute_sql(TABLE_SQL)


def pg_program(name: str) -> str:
    """A PostgreSQL client program (psql, pgbench); the test is skipped if it is not installed."""
    found = shutil.which(name) or str(find_pg_bindir() / name)
    if not Path(found).is_file():
        pytest.skip(f"{name} is not installed")
    return found


def client_env(password: str, **extra: str) -> dict[str, str]:
    """The environment for a libpq program: no inherited PG* variables, the password given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGPASSWORD": password, "LC_ALL": "C.UTF-8", "PGCONNECT_TIMEOUT": "10"}, **extra)
    return env


def pgbench_select_only(gw: Gateway, source: str, *, clients: int, transactions: int, mode: str) -> str:
    """Run `pgbench -S` as carol through QueryBase; assert every transaction succeeded; its output."""
    target = ["-h", gw.host, "-p", str(gw.port), "-U", "carol", source]
    result = subprocess.run(
        [pg_program("pgbench"), "-n", "-S", "-t", str(transactions), "-c", str(clients), "-M", mode, *target],
        capture_output=True,
        text=True,
        env=client_env(gw.passwords["carol"]),
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    total = clients * transactions
    assert f"number of transactions actually processed: {total}/{total}" in result.stdout, result.stdout
    assert "number of failed transactions: 0 (0.000%)" in result.stdout
    return result.stdout


PGBENCH_TABLES = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"


@contextlib.contextmanager
def pgbench_tables(pg: PostgresCluster) -> Iterator[None]:
    """pgbench's tables at scale 1, made directly on the server, readable by qb_reader; dropped after."""
    where = ["-h", pg.host, "-p", str(pg.port), "-U", "qb_admin", "qbtest"]
    result = subprocess.run(
        [pg_program("pgbench"), "-i", "-s", "1", "-q", *where],
        capture_output=True,
        text=True,
        env=client_env(PG_PASSWORDS["qb_admin"]),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pg.execute_sql(f"GRANT SELECT ON {PGBENCH_TABLES} TO qb_reader")
    try:
        yield
    finally:
        pg.execute_sql(f"DROP TABLE IF EXISTS {PGBENCH_TABLES}")


@contextlib.contextmanager
def running_gateway(
    pg: PostgresCluster,
    home: Path,
    *,
    tls_mode: str = "allow",
    users: Iterable[str] | None = None,
    pool_mode: str = "transaction",
) -> Iterator[Gateway]:
    """Provision a QueryBase home (all USERS, or `users`), start `querybase serve`, stop it afterwards."""
    config = init_home(home, tls_mode=tls_mode)
    provision(config, pg, users, pool_mode)
    serve = start_serve(config)
    try:
        yield Gateway(config, serve, pg, port=listen_port(config))
    finally:
        if serve.stop() != 0:
            serve.kill()


# ------------------------------------------------------------------------------ raw protocol


class ServerError(Exception):
    """An ErrorResponse received by RawPg; `fields` maps field codes (C, M, S…) to values."""

    def __init__(self, fields: dict[str, str], messages: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")
        self.fields = fields
        self.messages = messages or []  # for query(): every message up to ReadyForQuery

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")


class RawPg:
    """A blocking PostgreSQL protocol client on a plain socket; every call has a timeout."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.reader = pgp.BackendReader()
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPg:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_raw(self, size: int = 65536) -> bytes:
        """One recv(); b"" at EOF (a reset counts as EOF)."""
        try:
            data = self.sock.recv(size)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        return data

    def read_message(self) -> tuple[bytes, bytes] | None:
        """The next whole backend message, or None at EOF."""
        while True:
            msg = self.reader.next()
            if msg is not None:
                return msg
            if self.eof:
                return None
            data = self.recv_raw()
            if data:
                self.reader.feed(data)

    def read_all_until_eof(self) -> list[tuple[bytes, bytes]]:
        """Every message until the server closes the connection."""
        out = []
        while (msg := self.read_message()) is not None:
            out.append(msg)
        return out

    def expect(self, type_byte: bytes) -> bytes:
        msg = self.read_message()
        if msg is None:
            raise AssertionError(f"connection closed while waiting for {type_byte!r}")
        if msg[0] == b"E" and type_byte != b"E":
            raise ServerError(pgp.parse_error_fields(msg[1]))
        assert msg[0] == type_byte, f"expected {type_byte!r}, got {msg[0]!r}: {msg[1][:200]!r}"
        return msg[1]

    # -- login

    def login(
        self,
        user: str,
        password: str,
        database: str = SOURCE,
        *,
        version: int = pgp.PROTOCOL_3_0,
        extra: dict[str, str] | None = None,
        byte_by_byte: float | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Startup and SCRAM; returns every message up to and including ReadyForQuery.

        With `byte_by_byte` (a delay in seconds), every client message is sent one byte per send().
        """
        startup = pgp.make_startup({"user": user, "database": database, **(extra or {})}, version)
        seen: list[tuple[bytes, bytes]] = []
        self._send(startup, byte_by_byte)
        scram = ScramClient(password)
        while True:
            msg = self.read_message()
            if msg is None:
                raise AssertionError(f"connection closed during login; got {seen}")
            seen.append(msg)
            type_byte, body = msg
            if type_byte == b"E":
                raise ServerError(pgp.parse_error_fields(body))
            if type_byte == b"Z":
                return seen
            if type_byte != b"R":
                continue
            code, payload = pgp.parse_auth(body)
            if code == pgp.AuthCode.SASL:
                self._send(pgp.make_sasl_initial("SCRAM-SHA-256", scram.first()), byte_by_byte)
            elif code == pgp.AuthCode.SASL_CONTINUE:
                self._send(pgp.make_sasl_response(scram.final(payload)), byte_by_byte)
            elif code == pgp.AuthCode.SASL_FINAL:
                assert scram.verify(payload), "QueryBase's SCRAM server signature is wrong"
            elif code != pgp.AuthCode.OK:
                raise AssertionError(f"unexpected authentication request {code}")

    def _send(self, data: bytes, delay: float | None) -> None:
        if delay is None:
            self.send(data)
            return
        for i in range(len(data)):
            self.send(data[i : i + 1])
            time.sleep(delay)

    # -- queries

    def query(self, sql: str) -> tuple[list[list[bytes | None]], list[tuple[bytes, bytes]]]:
        """Simple Query: (data rows as lists of raw values, every message up to ReadyForQuery).

        An ErrorResponse is raised as ServerError after ReadyForQuery has been read.
        """
        self.send(pgp.make_query(sql))
        rows: list[list[bytes | None]] = []
        seen: list[tuple[bytes, bytes]] = []
        error: dict[str, str] | None = None
        while True:
            msg = self.read_message()
            if msg is None:
                raise AssertionError(f"connection closed during a query; got {seen[-5:]}")
            seen.append(msg)
            if msg[0] == b"D":
                rows.append(parse_data_row(msg[1]))
            elif msg[0] == b"E":
                error = pgp.parse_error_fields(msg[1])
            elif msg[0] == b"Z":
                if error is not None:
                    raise ServerError(error, seen)
                return rows, seen


def parse_data_row(body: bytes) -> list[bytes | None]:
    count = int.from_bytes(body[:2], "big")
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        size = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + size])
            pos += size
    return values


def errors_in(messages: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    """The ErrorResponse fields among `messages`."""
    return [pgp.parse_error_fields(body) for type_byte, body in messages if type_byte == b"E"]

"""The MySQL front end under faults: disconnects, killed upstreams, pool exhaustion, slow readers,
huge rows, LOAD DATA LOCAL INFILE and malformed packets, against the real MariaDB fixture.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors
import pytest

from proxy.wire.mysql import protocol as my
from tests.support.localdb import MARIADB_PASSWORDS, MariaDBServer
from tests.support.myfront import SOURCE, Gateway, RawMy, provision, running_gateway, setup_items
from tests.support.pgfront import cli, listen_port
from tests.support.querybase import init_home, start_serve

SLEEP_SQL = "SELECT SLEEP(30)"
SLEEPING = f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '{SLEEP_SQL}%'"
TINY = "tiny_my"


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with running_gateway(mariadb_server, tmp_path_factory.mktemp("qb-myfault") / "home") as gw:
        yield gw


@pytest.fixture(scope="module")
def tiny_gateway(
    mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway whose extra source `tiny_my` has a pool of one connection and a 2 s timeout."""
    setup_items(mariadb_server)
    config = init_home(tmp_path_factory.mktemp("qb-mytiny") / "home")
    provision(config, mariadb_server, ["carol"])
    cli(
        config,
        *("source", "add", TINY, "--engine", "mysql", "--host", mariadb_server.host),
        *("--port", str(mariadb_server.port), "--database", "qbtest"),
        *("--user", "qb_reader", "--password-env", "READ_PW", "--tls", "disable"),
        *("--pool-size", "1", "--pool-timeout", "2"),
        env={"READ_PW": MARIADB_PASSWORDS["qb_reader"]},
    )
    cli(config, "grant", "readers", TINY, "read")
    serve = start_serve(config)
    try:
        yield Gateway(config, serve, mariadb_server, port=listen_port(config, "mysql"))
    finally:
        if serve.stop() != 0:
            serve.kill()


def connect(gw: Gateway, user: str, database: str | None = SOURCE, **extra: Any) -> pymysql.Connection:
    extra.setdefault("ssl_disabled", True)
    return pymysql.connect(**{**gw.connect_args(user, database), **extra}, autocommit=True)


def query(conn: pymysql.Connection, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def sleeping(gw: Gateway) -> int:
    return int(gw.root_sql(SLEEPING).strip())


def rss_kib(gw: Gateway) -> int:
    for line in Path(f"/proc/{gw.serve.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


class Runner:
    """Runs `sql` on `conn` in a thread; keeps the outcome (rows or exception) and when it ended."""

    def __init__(self, conn: pymysql.Connection, sql: str) -> None:
        self.conn, self.sql = conn, sql
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = query(self.conn, self.sql)
        except BaseException as exc:  # recorded for the test
            self.error = exc
        finally:
            self.ended = time.monotonic()


@pytest.fixture
def no_sleepers(gateway: Gateway) -> Iterator[None]:
    yield
    for tid in gateway.rows(f"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '{SLEEP_SQL}%'"):
        gateway.root_sql(f"KILL {int(tid[0])}")


# ------------------------------------------------------------------ 1. client disconnect


def test_client_disconnect_mid_query_cancels_upstream(gateway: Gateway, no_sleepers: None) -> None:
    conn = connect(gateway, "carol")
    runner = Runner(conn, SLEEP_SQL)
    try:
        assert wait_for(lambda: sleeping(gateway) == 1, 10), "the SLEEP never reached MariaDB"
        sock = conn._sock  # the runner thread clears conn._sock once its read fails
        sock.shutdown(socket.SHUT_RDWR)  # abrupt: no COM_QUIT
        sock.close()
        assert wait_for(lambda: sleeping(gateway) == 0, 5), "SLEEP(30) still runs after the client left"
    finally:
        runner.thread.join(10)
    assert not runner.thread.is_alive()
    probe = connect(gateway, "carol")
    try:
        assert query(probe, "SELECT 1") == [(1,)]
    finally:
        probe.close()


# ------------------------------------------------------------------- 2. upstream killed


def test_upstream_killed_mid_query_errors_quickly(gateway: Gateway, no_sleepers: None) -> None:
    conn = connect(gateway, "carol", read_timeout=15)
    runner = Runner(conn, SLEEP_SQL)
    try:
        assert wait_for(lambda: sleeping(gateway) == 1, 10), "the SLEEP never reached MariaDB"
        ids = gateway.rows(f"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '{SLEEP_SQL}%'")
        killed = time.monotonic()
        gateway.root_sql(f"KILL CONNECTION {int(ids[0][0])}")
        runner.thread.join(12)
        assert not runner.thread.is_alive(), "the client hangs after its upstream was killed"
        assert runner.error is not None, f"no error, got {runner.result!r}"
        assert isinstance(runner.error, pymysql.MySQLError), repr(runner.error)
        assert runner.ended is not None
        assert runner.ended - killed < 5, "the error came only by timeout"
        assert not isinstance(runner.error, TimeoutError)
        assert "timed out" not in str(runner.error).lower(), repr(runner.error)
    finally:
        conn.close()
    fresh = connect(gateway, "carol")
    try:
        assert query(fresh, "SELECT 1") == [(1,)]
        assert query(fresh, "SELECT id FROM items ORDER BY id LIMIT 1") == [(1,)]
    finally:
        fresh.close()


# ------------------------------------------------------------------- 3. pool exhaustion


def connect_and_select(gw: Gateway, database: str) -> None:
    """Log in as carol to `database` and run one SELECT (the pool is used from login on)."""
    conn = connect(gw, "carol", database, read_timeout=15)
    try:
        query(conn, "SELECT 1")
    finally:
        conn.close()


def test_pool_exhaustion_times_out_then_recovers(tiny_gateway: Gateway) -> None:
    first = connect(tiny_gateway, "carol", TINY)
    try:
        assert query(first, "SELECT 1") == [(1,)]
        started = time.monotonic()
        with pytest.raises(pymysql.MySQLError) as info:
            connect_and_select(tiny_gateway, TINY)
        waited = time.monotonic() - started
        assert 1.5 <= waited <= 6, f"the pool timeout took {waited:.1f}s"
        errno, message = info.value.args[0], str(info.value.args[1])
        assert errno == 1040, info.value.args
        assert "pool" in message.lower() or "timeout" in message.lower() or "timed out" in message.lower()
        assert query(first, "SELECT 2") == [(2,)]  # the holder is unaffected
    finally:
        first.close()

    def fresh_works() -> bool:
        try:
            conn = connect(tiny_gateway, "carol", TINY)
        except pymysql.MySQLError:
            return False
        try:
            return query(conn, "SELECT 3") == [(3,)]
        except pymysql.MySQLError:
            return False
        finally:
            conn.close()

    assert wait_for(fresh_works, 10, 0.5), "the pool never gave the connection back"


# ---------------------------------------------------------- 4. slow reader, bounded memory


def test_large_result_read_slowly_keeps_memory_bounded(gateway: Gateway) -> None:
    conn = connect(gateway, "carol", cursorclass=pymysql.cursors.SSCursor, read_timeout=60)
    try:
        before = rss_kib(gateway)
        peak = before
        total = 0
        with conn.cursor() as cur:
            cur.execute("SELECT REPEAT('x', 1000) FROM seq_1_to_100000")
            first = cur.fetchone()
            assert first is not None
            assert first[0] == "x" * 1000
            total = 1
            for _ in range(20):  # stall: QueryBase must stop reading the upstream, not buffer 100 MB
                time.sleep(0.15)
                peak = max(peak, rss_kib(gateway))
            while True:
                batch = cur.fetchmany(2000)
                if not batch:
                    break
                assert all(len(row[0]) == 1000 for row in batch)
                total += len(batch)
                time.sleep(0.02)
                peak = max(peak, rss_kib(gateway))
        assert total == 100_000
        growth_mib = (peak - before) / 1024
        assert growth_mib < 50, f"serve RSS grew {growth_mib:.1f} MiB for a slowly read 100 MB result"
        assert query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


# ---------------------------------------------------------------------- 5. a 16 MiB+ row


def test_row_larger_than_one_packet(gateway: Gateway) -> None:
    server_max = int(gateway.root_sql("SELECT @@global.max_allowed_packet").strip())
    size = min(17 * 1024 * 1024, server_max - 1)
    if size + 4 <= my.MAX_PACKET_PAYLOAD:
        pytest.skip(f"MariaDB max_allowed_packet={server_max} cannot produce a row over one packet")
    conn = connect(gateway, "carol", max_allowed_packet=64 * 1024 * 1024, read_timeout=60)
    try:
        rows = query(conn, f"SELECT REPEAT('a', {size}), 'tail'")
        assert len(rows) == 1
        value, tail = rows[0]
        assert value is not None, "MariaDB returned NULL (over its max_allowed_packet)"
        assert len(value) == size
        assert value == "a" * size
        assert tail == "tail"
        assert query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


# ------------------------------------------------------------ 6. LOAD DATA LOCAL INFILE


def test_load_data_local_infile_is_refused(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "rows.tsv"
    data.write_text("100\tzzz\n101\tyyy\n")
    reads: list[str] = []
    original = pymysql.connections._send_local_file

    def spy(filename: Any, conn: Any) -> None:
        reads.append(filename)
        original(filename, conn)

    monkeypatch.setattr(pymysql.connections, "_send_local_file", spy)
    before = gateway.rows("SELECT id, name FROM items ORDER BY id")
    conn = connect(gateway, "dave", local_infile=True)
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as info:
            cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE items")
        assert info.value.args, repr(info.value)
        assert isinstance(info.value.args[0], int), repr(info.value)
        assert str(info.value.args[1]).strip(), "the error has no message"
        assert reads == [], f"the client was asked for {reads}"
        assert query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()
    assert gateway.rows("SELECT id, name FROM items ORDER BY id") == before


# ---------------------------------------------------- 7. malformed and truncated packets


@pytest.fixture
def bystander(gateway: Gateway) -> Iterator[pymysql.Connection]:
    """Another client that must keep working before and after the malformed traffic."""
    conn = connect(gateway, "carol")
    assert query(conn, "SELECT 1") == [(1,)]
    yield conn
    try:
        assert query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


def test_handshake_response_byte_by_byte(gateway: Gateway, bystander: pymysql.Connection) -> None:
    raw = RawMy(gateway)
    try:
        raw.login(gateway, "carol", byte_by_byte=True)
        result = raw.query_one(b"SELECT 1")
        assert result[0] == b"\x01", result
        assert any(p == b"\x011" for p in result), result
    finally:
        raw.close()


def test_truncated_packet_then_half_close(gateway: Gateway, bystander: pymysql.Connection) -> None:
    raw = RawMy(gateway)
    try:
        raw.login(gateway, "carol")
        raw.sock.sendall((1000).to_bytes(3, "little") + b"\x00" + b"\x03SELECT 1")  # 10 of 1000 bytes
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.ends(5), "the session hangs on a truncated packet after the client's FIN"
    finally:
        raw.close()
    assert query(bystander, "SELECT 2") == [(2,)]


def test_query_with_invalid_utf8(gateway: Gateway, bystander: pymysql.Connection) -> None:
    """Bytes that are not UTF-8 inside a literal are data (issue 10): the read is classified and
    relayed byte for byte, and its result comes back; a write next to them is still seen."""
    raw = RawMy(gateway)
    try:
        raw.login(gateway, "carol")
        answer = raw.query_one(b"SELECT HEX('\xff\xfe\xc3(')")
        assert answer[0][:1] not in (b"\xff", b"\x00"), answer
        assert b"FFFEC328" in b"".join(answer)
        refused = raw.query_one(b"SELECT 1 \xff\xfe; DELETE FROM items")
        assert refused[0][:1] == b"\xff", refused
    finally:
        raw.close()
    assert query(bystander, "SELECT 2") == [(2,)]


def test_malformed_handshake_response(gateway: Gateway, bystander: pymysql.Connection) -> None:
    raw = RawMy(gateway)
    try:
        seq, _ = raw.must_read()
        raw.sock.sendall(my.make_packets(b"\x05\xa2\x00", my.next_seq(seq))[0])  # cut inside the flags
        raw.sock.settimeout(5)
        got = raw.read()
        if got is not None:
            assert got[1][:1] == b"\xff", f"a malformed login was answered with {got[1][:80]!r}"
        assert raw.ends(5), "the session stays open after a malformed HandshakeResponse"
    finally:
        raw.close()
    assert query(bystander, "SELECT 2") == [(2,)]

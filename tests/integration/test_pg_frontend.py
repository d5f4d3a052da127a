"""The PostgreSQL front end's behaviour through a real `querybase serve`: login, TLS, policy, faults.

Clients are real drivers (psycopg 3, asyncpg) where they can express the case, and `RawPg` (a
blocking socket speaking the protocol) where a test must control every byte or the reading speed.
Everything runs against one QueryBase (module fixture `gateway`) in front of the session's
PostgreSQL; the TLS-required case starts a second one.
"""

from __future__ import annotations

import concurrent.futures
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from proxy.wire.pg import protocol as pgp
from tests.support.localdb import PostgresCluster
from tests.support.pgfront import (
    ITEMS,
    SOURCE,
    TINY_POOL_TIMEOUT,
    TINY_SOURCE,
    Gateway,
    RawPg,
    ServerError,
    cli,
    errors_in,
    running_gateway,
    setup_items,
)

pytestmark = pytest.mark.integration

ITEM_ROWS = [[str(i), n] for i, n in ITEMS]


@pytest.fixture(scope="module")
def gateway(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(pg_server)
    pg_server.execute_sql(
        """
CREATE OR REPLACE FUNCTION sneaky_delete() RETURNS int LANGUAGE plpgsql SECURITY DEFINER
    AS $$ BEGIN DELETE FROM items; RETURN 1; END $$;
"""
    )
    with running_gateway(pg_server, tmp_path_factory.mktemp("qb-front")) as gw:
        yield gw


@pytest.fixture
def items_unchanged(gateway: Gateway) -> Iterator[None]:
    """The test must leave `items` exactly as it found it."""
    assert gateway.rows("SELECT id, name FROM items ORDER BY id") == ITEM_ROWS
    yield
    assert gateway.rows("SELECT id, name FROM items ORDER BY id") == ITEM_ROWS


def connect(gw: Gateway, user: str, **options: str) -> psycopg.Connection:
    return psycopg.connect(gw.conninfo(user, **options), autocommit=True)


def scalar(conn: psycopg.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def raw_login_error(gw: Gateway, user: str, password: str, database: str = SOURCE) -> dict[str, str]:
    """Log in with RawPg and return the ErrorResponse fields it must end with."""
    with RawPg(gw.host, gw.port) as raw:
        with pytest.raises(ServerError) as caught:
            raw.login(user, password, database)
        assert raw.read_message() is None, "the connection must close after a login error"
    return caught.value.fields


# ----------------------------------------------------------------------------------- login


def test_wrong_password_and_unknown_user_fail_alike(gateway: Gateway) -> None:
    wrong = raw_login_error(gateway, "carol", "not-the-password")
    unknown = raw_login_error(gateway, "nobody", "not-the-password")
    assert (wrong["S"], wrong["C"]) == ("FATAL", "28P01")
    assert wrong["M"] == 'password authentication failed for user "carol"'
    # No user enumeration: the same code and the same message, only the name differs.
    assert (unknown["S"], unknown["C"]) == ("FATAL", "28P01")
    assert unknown["M"] == 'password authentication failed for user "nobody"'
    assert set(wrong) == set(unknown)


async def test_wrong_password_through_asyncpg(gateway: Gateway) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=gateway.host, port=gateway.port, user="carol", password="nope", database=SOURCE, ssl=False
        )


async def test_unknown_source_is_3D000(gateway: Gateway) -> None:
    with pytest.raises(asyncpg.InvalidCatalogNameError, match='"nosuchdb" does not exist'):
        await asyncpg.connect(
            host=gateway.host,
            port=gateway.port,
            user="carol",
            password=gateway.passwords["carol"],
            database="nosuchdb",
            ssl=False,
        )


@pytest.mark.parametrize("user", ["frank", "bob"], ids=["no-grant", "approve-only"])
async def test_user_without_data_grant_is_refused_at_connect(gateway: Gateway, user: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f'user "{user}" has no grant'):
        await asyncpg.connect(
            host=gateway.host,
            port=gateway.port,
            user=user,
            password=gateway.passwords[user],
            database=SOURCE,
            ssl=False,
        )


def test_failed_logins_lock_the_user_out(gateway: Gateway) -> None:
    for _ in range(5):
        fields = raw_login_error(gateway, "erin", "wrong-password")
        assert fields["C"] == "28P01"
        assert "too many" not in fields["M"]
    fields = raw_login_error(gateway, "erin", gateway.passwords["erin"])
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01")
    assert "too many failed logins" in fields["M"]
    # Other users are not affected.
    with connect(gateway, "carol") as conn:
        assert scalar(conn, "SELECT 1") == 1


def test_disabled_user_fails_like_a_wrong_password(gateway: Gateway) -> None:
    cli(gateway.config, "user", "disable", "gina")
    try:
        fields = raw_login_error(gateway, "gina", gateway.passwords["gina"])
    finally:
        cli(gateway.config, "user", "enable", "gina")
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01")
    assert fields["M"] == 'password authentication failed for user "gina"'
    with connect(gateway, "gina") as conn:  # enabled again: in effect at the next login
        assert scalar(conn, "SELECT 1") == 1


# ------------------------------------------------------------------------------------- TLS


def test_tls_required(pg_server: PostgresCluster, tmp_path: Path) -> None:
    with running_gateway(pg_server, tmp_path / "qb", tls_mode="require", users=["carol"]) as gw:
        with pytest.raises(psycopg.OperationalError, match="requires TLS"):
            psycopg.connect(gw.conninfo("carol", sslmode="disable"))
        with RawPg(gw.host, gw.port) as raw, pytest.raises(ServerError) as caught:
            raw.login("carol", gw.passwords["carol"])
        assert caught.value.fields["S"] == "FATAL"
        assert caught.value.sqlstate == "28000"
        with psycopg.connect(gw.conninfo("carol", sslmode="require")) as conn:
            assert conn.pgconn.ssl_in_use
            assert scalar(conn, "SELECT current_user") == "qb_reader"


# ----------------------------------------------------------------------- disguised writes

DISGUISED_WRITES = {
    "data-modifying-cte": "WITH d AS (DELETE FROM items RETURNING *) SELECT count(*) FROM d",
    "explain-analyze": "EXPLAIN ANALYZE DELETE FROM items",
    "do-block": "DO $$ BEGIN DELETE FROM items; END $$",
    "call": "CALL wipe_items()",
    "multi-statement": "SELECT 1; DELETE FROM items",
    "select-into": "SELECT * INTO items_copy FROM items",
    "truncate": "TRUNCATE items",
}


@pytest.mark.parametrize("sql", DISGUISED_WRITES.values(), ids=DISGUISED_WRITES.keys())
@pytest.mark.usefixtures("items_unchanged")
def test_disguised_write_is_held_for_propose(gateway: Gateway, sql: str) -> None:
    before = gateway.last_request_id()
    with connect(gateway, "alice") as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql)
        assert caught.value.sqlstate == "QB001", caught.value
        assert f'on source "{SOURCE}"' in str(caught.value)
        assert scalar(conn, "SELECT count(*) FROM items") == len(ITEMS)  # the session goes on
    held = gateway.new_requests(before)
    assert [(r["statement_text"], r["status"]) for r in held] == [(sql, "pending")]
    assert held[0]["kind"] in ("write", "ddl")
    assert held[0]["session_facts"]["protocol"] == "postgresql"


@pytest.mark.usefixtures("items_unchanged")
def test_set_config_lifting_read_only_with_a_delete_is_denied(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("alice", gateway.passwords["alice"])
        with pytest.raises(ServerError) as caught:
            raw.query("SELECT set_config('default_transaction_read_only','off',false); DELETE FROM items")
        assert caught.value.sqlstate == "42501"
        rows, _ = raw.query("SHOW default_transaction_read_only")
        assert rows == [[b"on"]]
    assert gateway.new_requests(before) == []


@pytest.mark.usefixtures("items_unchanged")
def test_sql_prepare_of_a_write_is_denied_and_execute_runs_nothing(gateway: Gateway) -> None:
    with connect(gateway, "alice") as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("PREPARE wipe AS DELETE FROM items")
        assert caught.value.sqlstate == "42501"
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("EXECUTE wipe")
        # Held (unknown statement) or "prepared statement does not exist": either way, not run.
        assert caught.value.sqlstate in ("QB001", "26000")
        # A read can still be prepared and executed with SQL PREPARE.
        conn.execute("PREPARE two AS SELECT count(*) FROM items")
        assert scalar(conn, "EXECUTE two") == len(ITEMS)


@pytest.mark.usefixtures("items_unchanged")
def test_copy_from_is_held_before_copy_in_response(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("alice", gateway.passwords["alice"])
        with pytest.raises(ServerError) as caught:
            raw.query("COPY items FROM STDIN")
        assert caught.value.sqlstate == "QB001"
        # Held before CopyInResponse: the client never enters COPY mode (no CopyData can leak).
        assert [m[0] for m in caught.value.messages] == [b"E", b"Z"]
        rows, _ = raw.query("SELECT count(*) FROM items")
        assert rows == [[str(len(ITEMS)).encode()]]
    held = gateway.new_requests(before)
    assert [(r["statement_text"], r["kind"]) for r in held] == [("COPY items FROM STDIN", "write")]


# ------------------------------------------------------------------------------- backstop


@pytest.mark.parametrize("user", ["alice", "carol"])
def test_read_sessions_are_read_only_at_the_database(gateway: Gateway, user: str) -> None:
    with connect(gateway, user) as conn:
        assert scalar(conn, "SELECT current_setting('default_transaction_read_only')") == "on"
        assert scalar(conn, "SHOW transaction_read_only") == "on"
        conn.execute("RESET ALL")  # asyncpg's pool reset; RESET restores the startup value
        assert scalar(conn, "SHOW default_transaction_read_only") == "on"


@pytest.mark.usefixtures("items_unchanged")
def test_a_function_that_is_not_a_vetted_built_in_fails_closed(gateway: Gateway) -> None:
    # sneaky_delete() is a SECURITY DEFINER function owned by the superuser. Functions are an
    # allowlist (issue 10 class 6), so the read is refused, naming the function; the read-only
    # upstream session would stop it too (tests/integration/test_pg_backstop.py).
    with connect(gateway, "carol") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute("SELECT sneaky_delete()")
        assert "sneaky_delete()" in str(caught.value)
        assert scalar(conn, "SELECT 1") == 1


def test_write_user_session_is_not_read_only(gateway: Gateway) -> None:
    with connect(gateway, "dave") as conn:
        assert scalar(conn, "SHOW transaction_read_only") == "off"
        assert scalar(conn, "SELECT current_user") == "qb_scram"


# ---------------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("mode", ["cancel", "cancel_safe-over-tls"])
def test_cancel_stops_the_running_query(gateway: Gateway, mode: str) -> None:
    sslmode = "require" if mode.endswith("tls") else "disable"
    with connect(gateway, "carol", sslmode=sslmode) as conn:
        cancel = conn.cancel if mode == "cancel" else conn.cancel_safe
        timer = threading.Timer(0.3, cancel)
        timer.start()
        started = time.monotonic()
        try:
            # Short enough that an ignored cancel costs little, long enough to tell.
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(3)")
        finally:
            timer.cancel()
            timer.join()
        assert time.monotonic() - started < 2
        assert scalar(conn, "SELECT 42") == 42


def test_cancel_with_a_wrong_key_cancels_nothing(gateway: Gateway) -> None:
    with connect(gateway, "carol") as conn:
        pid = conn.info.backend_pid

        def forge() -> None:
            with RawPg(gateway.host, gateway.port) as raw:
                raw.send(cancel_request(pid, b"\x00\x00\x00\x00"))
                assert raw.read_message() is None

        timer = threading.Timer(0.2, forge)
        timer.start()
        try:
            row = conn.execute("SELECT pg_sleep(1), 7").fetchone()
            assert row == ("", 7)
        finally:
            timer.join()


def cancel_request(pid: int, key: bytes) -> bytes:
    """A CancelRequest built here, not with the codec under test."""
    return struct.pack("!iii", 12 + len(key), pgp.CANCEL_REQUEST_CODE, pid) + key


def _sleepers(gw: Gateway, marker: str) -> list[list[str]]:
    return gw.rows(
        f"SELECT pid, state FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    )


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_client_disconnect_stops_its_upstream_query(gateway: Gateway) -> None:
    marker = "qb-disconnect-probe"
    raw = RawPg(gateway.host, gateway.port)
    try:
        raw.login("carol", gateway.passwords["carol"])
        raw.send(pgp.make_query(f"SELECT pg_sleep(30) /* {marker} */"))
        _wait_for(
            lambda: any(state == "active" for _, state in _sleepers(gateway, marker)), 5, "the query to run"
        )
    finally:
        raw.close()
    try:
        _wait_for(
            lambda: not any(state == "active" for _, state in _sleepers(gateway, marker)),
            5,
            "the abandoned pg_sleep to stop upstream",
        )
    finally:  # do not leave a 30 s sleeper behind if QueryBase failed to stop it
        gateway.admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        )


def test_upstream_killed_mid_query_gives_an_error(gateway: Gateway) -> None:
    marker = "qb-kill-probe"
    conn = connect(gateway, "carol")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            future = pool.submit(conn.execute, f"SELECT pg_sleep(30) /* {marker} */")
            _wait_for(lambda: _sleepers(gateway, marker), 5, "the query to run")
            gateway.admin_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
            )
            with pytest.raises(psycopg.OperationalError):
                future.result(timeout=10)
            assert time.monotonic() - started < 10
    finally:
        conn.close()
    with connect(gateway, "carol") as again:
        assert scalar(again, "SELECT count(*) FROM items") == len(ITEMS)


# ----------------------------------------------------------------------------------- pool


def test_pool_exhaustion_is_53300_after_the_pool_timeout(gateway: Gateway) -> None:
    """The tiny source pools by transaction: a client holds its one connection only inside a
    transaction, and a login waiting for it meanwhile ends after the pool timeout."""
    with connect(gateway, "carol", dbname=TINY_SOURCE) as holder:
        assert scalar(holder, "SELECT 1") == 1
        with connect(gateway, "carol", dbname=TINY_SOURCE) as between:  # no transaction open: shared
            assert scalar(between, "SELECT 10") == 10
        holder.execute("BEGIN")
        started = time.monotonic()
        with (
            RawPg(gateway.host, gateway.port, timeout=TINY_POOL_TIMEOUT + 10) as raw,
            pytest.raises(ServerError) as caught,
        ):
            raw.login("carol", gateway.passwords["carol"], TINY_SOURCE)
        waited = time.monotonic() - started
        assert (caught.value.fields["S"], caught.value.sqlstate) == ("FATAL", "53300")
        assert TINY_POOL_TIMEOUT - 0.5 <= waited < TINY_POOL_TIMEOUT + 5
        assert scalar(holder, "SELECT 2") == 2  # the holder is unaffected
        holder.execute("COMMIT")
    # Released: the next client gets the connection.
    with connect(gateway, "carol", dbname=TINY_SOURCE) as conn:
        assert scalar(conn, "SELECT 3") == 3


# ------------------------------------------------------------------------------- flow control


class _RowCounter:
    """Counts DataRow messages in a byte stream without keeping it; notes the final CommandComplete."""

    def __init__(self) -> None:
        self.rows = 0
        self.tag = b""
        self.ready = False
        self._pending = b""
        self._skip = 0

    def feed(self, data: bytes) -> None:
        if self._skip:
            step = min(self._skip, len(data))
            self._skip -= step
            data = data[step:]
        buf = self._pending + data
        pos = 0
        while len(buf) - pos >= 5:
            type_byte, length = struct.unpack_from("!ci", buf, pos)
            end = pos + 1 + length
            if type_byte == b"D":
                self.rows += 1
            elif type_byte in (b"C", b"Z", b"E"):
                if end > len(buf):
                    break  # need the whole body
                if type_byte == b"C":
                    self.tag = buf[pos + 5 : end - 1]
                elif type_byte == b"E":
                    raise ServerError(pgp.parse_error_fields(buf[pos + 5 : end]))
                else:
                    self.ready = True
            if end > len(buf):
                self._skip = end - len(buf)
                pos = len(buf)
                break
            pos = end
        self._pending = buf[pos:]


def test_slow_reader_of_a_large_result_keeps_memory_bounded(gateway: Gateway) -> None:
    rows = 100_000  # ~100 MB of DataRows
    with RawPg(gateway.host, gateway.port, rcvbuf=64 * 1024, timeout=30) as raw:
        raw.login("carol", gateway.passwords["carol"])
        baseline = peak = gateway.rss_kib()
        raw.send(pgp.make_query(f"SELECT repeat('x', 1000) FROM generate_series(1, {rows})"))
        counter = _RowCounter()
        # Stall for a while (an unbounded relay would now buffer the whole result), then read
        # slowly, then drain.
        stall_until = time.monotonic() + 1.5
        while time.monotonic() < stall_until:
            peak = max(peak, gateway.rss_kib())
            time.sleep(0.05)
        slow_until = time.monotonic() + 1.0
        while time.monotonic() < slow_until:
            counter.feed(raw.recv_raw(64 * 1024))
            peak = max(peak, gateway.rss_kib())
            time.sleep(0.005)
        assert counter.rows < rows, "the slow phase must not have read everything"
        while not counter.ready:
            data = raw.recv_raw(1 << 20)
            assert data, "connection closed before ReadyForQuery"
            counter.feed(data)
            if counter.rows % 10_000 < 60:
                peak = max(peak, gateway.rss_kib())
        assert counter.rows == rows
        assert counter.tag == f"SELECT {rows}".encode()
        rows_after, _ = raw.query("SELECT 1")
        assert rows_after == [[b"1"]]
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 50, f"serve grew by {growth_mib:.0f} MiB while a client read a 100 MB result slowly"


# ------------------------------------------------------------------------ malformed input


@pytest.fixture
def bystander(gateway: Gateway) -> Iterator[psycopg.Connection]:
    """A session that must keep working while a test abuses another connection."""
    with connect(gateway, "carol") as conn:
        assert scalar(conn, "SELECT count(*) FROM items") == len(ITEMS)
        yield conn
        assert scalar(conn, "SELECT count(*) FROM items") == len(ITEMS)


def _assert_closed_with_protocol_violation(raw: RawPg, *, error_required: bool) -> None:
    messages = raw.read_all_until_eof()
    errors = errors_in(messages)
    if error_required or messages:
        assert [m[0] for m in messages] == [b"E"], messages
        assert (errors[0]["S"], errors[0]["C"]) == ("FATAL", "08P01")


@pytest.mark.usefixtures("bystander")
def test_garbage_first_packet_closes_the_connection(gateway: Gateway) -> None:
    with RawPg(gateway.host, gateway.port) as raw:
        raw.send(b"GET / HTTP/1.1\r\nHost: querybase\r\n\r\n")
        # PostgreSQL closes silently here; an 08P01 ErrorResponse first is fine too.
        _assert_closed_with_protocol_violation(raw, error_required=False)


@pytest.mark.usefixtures("bystander")
@pytest.mark.parametrize(
    "message",
    [b"!" + struct.pack("!i", 4), b"Q" + struct.pack("!i", 2), b"Q" + struct.pack("!i", -1)],
    ids=["invalid-type-byte", "length-below-4", "negative-length"],
)
def test_malformed_message_after_login_is_fatal_08P01(gateway: Gateway, message: bytes) -> None:
    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("carol", gateway.passwords["carol"])
        raw.send(message)
        _assert_closed_with_protocol_violation(raw, error_required=True)


@pytest.mark.usefixtures("bystander")
def test_login_fed_one_byte_at_a_time(gateway: Gateway) -> None:
    with RawPg(gateway.host, gateway.port) as raw:
        messages = raw.login("carol", gateway.passwords["carol"], byte_by_byte=0.001)
        assert messages[-1] == (b"Z", b"I")
        assert b"K" in [m[0] for m in messages]
        rows, _ = raw.query("SELECT name FROM items WHERE id = 1")
        assert rows == [[b"apple"]]


@pytest.mark.usefixtures("bystander")
def test_truncated_startup_then_disconnect(gateway: Gateway) -> None:
    startup = pgp.make_startup({"user": "carol", "database": SOURCE})
    with RawPg(gateway.host, gateway.port) as raw:
        raw.send(startup[: len(startup) // 2])
    # A truncated query message after login, then a disconnect.
    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("carol", gateway.passwords["carol"])
        raw.send(pgp.make_query("SELECT 1")[:7])


@pytest.mark.usefixtures("bystander")
def test_ssl_request_with_pipelined_bytes_is_refused(gateway: Gateway) -> None:
    startup = pgp.make_startup({"user": "carol", "database": SOURCE})
    with RawPg(gateway.host, gateway.port) as raw:
        raw.send(pgp.make_ssl_request() + startup)
        data = b""
        while chunk := raw.recv_raw():
            data += chunk
    # Never 'S' (a TLS handshake over injected plaintext) nor 'N' followed by a login on the
    # plaintext that came with the request (CVE-2021-23214 class).
    assert data[:1] not in (b"S", b"N"), data[:50]
    if data:
        reader = pgp.BackendReader()
        reader.feed(data)
        msg = reader.next()
        assert msg is not None, data[:100]
        assert msg[0] == b"E", data[:100]
        fields = pgp.parse_error_fields(msg[1])
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
        assert reader.next() is None


def test_gssenc_request_is_declined_and_startup_follows(gateway: Gateway) -> None:
    with RawPg(gateway.host, gateway.port) as raw:
        raw.send(struct.pack("!ii", 8, pgp.GSSENC_REQUEST_CODE))
        assert raw.recv_raw(16) == b"N"
        assert raw.login("carol", gateway.passwords["carol"])[-1] == (b"Z", b"I")


def test_direct_tls_negotiation_works_or_fails_fast(gateway: Gateway) -> None:
    if psycopg.pq.version() < 170000:
        pytest.skip("needs libpq 17 (sslnegotiation=direct)")
    started = time.monotonic()
    try:
        with connect(gateway, "carol", sslmode="require", sslnegotiation="direct") as conn:
            assert conn.pgconn.ssl_in_use
            assert scalar(conn, "SELECT 1") == 1
    except psycopg.OperationalError:
        assert time.monotonic() - started < 3, "a direct TLS ClientHello must fail at once, not time out"


def test_empty_query(gateway: Gateway) -> None:
    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("carol", gateway.passwords["carol"])
        for sql in ("", ";", "  -- nothing\n"):
            _, messages = raw.query(sql)
            assert [m[0] for m in messages] == [b"I", b"Z"], sql


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_client_encoding_latin1_statement_text(gateway: Gateway, protocol: str) -> None:
    with connect(gateway, "carol", client_encoding="LATIN1") as conn:
        assert scalar(conn, "SHOW client_encoding") == "LATIN1"
        if protocol == "simple":
            row = conn.execute("SELECT 'café' AS word").fetchone()
        else:
            row = conn.execute("SELECT %s::text || 'é' AS word", ("caf",)).fetchone()
        assert row == ("café",)
        assert scalar(conn, "SELECT name FROM items WHERE id = 1") == "apple"


# ------------------------------------------------------------------ protocol negotiation


def test_newer_minor_version_and_pq_options_get_negotiate_protocol_version(gateway: Gateway) -> None:
    with RawPg(gateway.host, gateway.port) as raw:
        messages = raw.login(
            "carol", gateway.passwords["carol"], version=(3 << 16) | 2, extra={"_pq_.foo": "bar"}
        )
        types = [m[0] for m in messages]
        assert types[0] == b"v", types
        assert types.index(b"v") < types.index(b"R")
        body = messages[0][1]
        newest, count = struct.unpack_from("!ii", body)
        assert newest == 3 << 16  # what PostgreSQL sends: PG_PROTOCOL_LATEST, i.e. 3.0
        assert count == 1
        assert body[8:] == b"_pq_.foo\x00"
        key = next(body for t, body in messages if t == b"K")
        assert len(key) == 8  # a 3.0 session gets a 4-byte cancel key
        rows, _ = raw.query("SELECT 1")
        assert rows == [[b"1"]]


def test_libpq_asking_for_protocol_3_2_is_downgraded(gateway: Gateway) -> None:
    if psycopg.pq.version() < 180000:
        pytest.skip("needs libpq 18 (max_protocol_version)")
    with connect(gateway, "carol", max_protocol_version="3.2") as conn:
        assert conn.pgconn.protocol_version == 3
        assert scalar(conn, "SELECT count(*) FROM items") == len(ITEMS)

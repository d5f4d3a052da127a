"""Transaction pooling on PostgreSQL through a real `querybase serve` (docs/pooling.md).

Source `pooled` has two upstream connections per role and pools by transaction. Many clients share
them; each client's session settings follow it from connection to connection and never reach
another client; what cannot move (temporary tables, LISTEN, SQL PREPARE, advisory locks, named
protocol statements) pins the client to its connection, and the pin metric says so.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator

import asyncpg
import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.localdb import PG_PASSWORDS, PostgresCluster
from tests.support.pgfront import (
    Gateway,
    RawPg,
    ServerError,
    cli,
    pgbench_select_only,
    pgbench_tables,
    running_gateway,
    setup_items,
)

pytestmark = pytest.mark.integration

POOLED = "pooled"
POOL_SIZE = 2


@pytest.fixture(scope="module")
def gateway(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(pg_server)
    with running_gateway(pg_server, tmp_path_factory.mktemp("qb-txpool")) as gw:
        env = {"READ_PW": PG_PASSWORDS["qb_reader"], "WRITE_PW": PG_PASSWORDS["qb_scram"]}
        cli(
            gw.config,
            *("source", "add", POOLED, "--engine", "postgresql", "--host", gw.pg.host),
            *("--port", str(gw.pg.port), "--database", "qbtest", "--user", "qb_reader"),
            *("--password-env", "READ_PW", "--write-user", "qb_scram", "--write-password-env", "WRITE_PW"),
            *("--tls", "disable", "--pool-size", str(POOL_SIZE), "--pool-timeout", "20"),
            env=env,
        )
        for group, level in (("readers", "read"), ("writers", "write"), ("analysts", "propose")):
            cli(gw.config, "grant", group, POOLED, level)
        yield gw


def connect(gw: Gateway, user: str = "carol", dbname: str = POOLED, **options: str) -> psycopg.Connection:
    return psycopg.connect(gw.conninfo(user, dbname=dbname, **options), autocommit=True)


def scalar(conn: psycopg.Connection, sql: str, params: tuple[object, ...] | None = None) -> object:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


async def asyncpg_connect(gw: Gateway, user: str = "carol", **options: object) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=gw.host,
        port=gw.port,
        user=user,
        password=gw.passwords[user],
        database=POOLED,
        ssl=False,
        **options,
    )


def until_ready(raw: RawPg) -> list[tuple[bytes, bytes]]:
    out = []
    while (msg := raw.read_message()) is not None:
        out.append(msg)
        if msg[0] == b"Z":
            break
    return out


def metric(gw: Gateway, name: str, **labels: str) -> float:
    answer = httpx.get(f"{gw.serve.admin_url}/metrics", timeout=10)
    want = set(labels.items())
    found = 0.0
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == name and want <= set(sample.labels.items()):
                found += sample.value
    return found


def pins(gw: Gateway, reason: str) -> float:
    return metric(gw, "querybase_pool_pins_total", source=POOLED, reason=reason)


# ------------------------------------------------------------------------------ sharing


def test_source_shows_its_pool_mode(gateway: Gateway) -> None:
    shown = cli(gateway.config, "source", "list")
    assert any(line.split()[0] == POOLED and "transaction" in line.split() for line in shown.splitlines()[1:])


def test_thirty_clients_share_two_connections(gateway: Gateway) -> None:
    """More clients than connections, all at once, simple and extended protocol: none fails."""
    clients = 30
    barrier = threading.Barrier(clients)

    def work(index: int) -> int:
        with connect(gateway) as conn:
            barrier.wait(timeout=60)
            total = 0
            for i in range(20):
                if i % 2:
                    total += int(scalar(conn, "SELECT %s::int + 0", (index,)))  # extended
                else:
                    total += int(scalar(conn, f"SELECT {index}"))  # simple
            with conn.transaction():
                assert scalar(conn, "SELECT count(*) FROM items") == 5
            return total

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(work, range(clients)))
    assert results == [20 * i for i in range(clients)]
    assert metric(gateway, "querybase_pool_in_use_connections", source=POOLED, role="read") == 0


def test_many_asyncpg_clients_without_a_statement_cache(gateway: Gateway) -> None:
    import asyncio

    async def one(index: int) -> int:
        conn = await asyncpg_connect(gateway, statement_cache_size=0)
        try:
            got = 0
            for _ in range(10):
                got += await conn.fetchval("SELECT $1::int", index)
            return got
        finally:
            await conn.close()

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(20)))

    assert asyncio.run(main()) == [10 * i for i in range(20)]


def test_a_transaction_keeps_its_connection_until_it_ends(gateway: Gateway) -> None:
    with connect(gateway) as a, a.transaction():
        first = scalar(a, "SELECT pg_backend_pid()")
        others = [connect(gateway) for _ in range(3)]
        try:
            for other in others:  # the other connection serves everyone else meanwhile
                assert scalar(other, "SELECT 1") == 1
            for _ in range(5):
                assert scalar(a, "SELECT pg_backend_pid()") == first
        finally:
            for other in others:
                other.close()


# ---------------------------------------------------------------------------- settings


def test_session_settings_follow_their_client_and_reach_nobody_else(gateway: Gateway) -> None:
    with connect(gateway) as a, connect(gateway, application_name="client-b") as b:
        a.execute("SET search_path TO pg_catalog")
        a.execute("SET TimeZone TO 'Pacific/Auckland'")
        a.execute("SET application_name TO 'client-a'")
        a.execute("SET work_mem TO '7MB'")
        b_defaults = (
            scalar(b, "SHOW search_path"),
            scalar(b, "SHOW TimeZone"),
            scalar(b, "SHOW work_mem"),
        )
        assert scalar(b, "SHOW application_name") == "client-b"
        assert b_defaults[0] != "pg_catalog"
        assert b_defaults[1] != "Pacific/Auckland"
        assert b_defaults[2] != "7MB"
        for _ in range(10):  # many transactions, interleaved, on whichever connection is free
            assert scalar(a, "SHOW search_path") == "pg_catalog"
            assert scalar(a, "SHOW TimeZone") == "Pacific/Auckland"
            assert scalar(a, "SHOW application_name") == "client-a"
            assert scalar(a, "SHOW work_mem") == "7MB"
            assert (
                scalar(b, "SHOW search_path"),
                scalar(b, "SHOW TimeZone"),
                scalar(b, "SHOW work_mem"),
            ) == (b_defaults)
            assert scalar(b, "SHOW application_name") == "client-b"
        # RESET and a rolled-back SET are followed too.
        a.execute("RESET work_mem")
        with a.transaction(force_rollback=True):
            a.execute("SET TimeZone TO 'UTC'")
        assert scalar(a, "SHOW work_mem") == b_defaults[2]
        assert scalar(a, "SHOW TimeZone") == "Pacific/Auckland"
        # SET LOCAL ends with its transaction.
        with a.transaction():
            a.execute("SET LOCAL work_mem TO '9MB'")
            assert scalar(a, "SHOW work_mem") == "9MB"
        assert scalar(a, "SHOW work_mem") == b_defaults[2]


def test_a_new_client_never_sees_the_settings_of_one_that_left(gateway: Gateway) -> None:
    with connect(gateway) as gone:
        gone.execute("SET statement_timeout TO '1234s'")
        gone.execute("SELECT set_config('application_name', 'leaver', false)")
        assert scalar(gone, "SHOW statement_timeout") == "1234s"
    for _ in range(POOL_SIZE * 2):
        with connect(gateway) as new:
            assert scalar(new, "SHOW statement_timeout") != "1234s"
            assert scalar(new, "SHOW application_name") != "leaver"


def test_a_setting_changed_inside_a_write_is_carried_and_kept_to_its_client(gateway: Gateway) -> None:
    with connect(gateway, "dave") as writer, connect(gateway, "dave") as other:
        writer.execute(
            "WITH s AS (SELECT set_config('work_mem', '11MB', false) AS v) "
            "UPDATE items SET name = name FROM s WHERE id = 1 AND s.v IS NOT NULL"
        )
        for _ in range(POOL_SIZE * 2):
            assert scalar(writer, "SHOW work_mem") == "11MB"
            assert scalar(other, "SHOW work_mem") != "11MB"


def test_startup_parameters_are_the_clients_own(gateway: Gateway) -> None:
    with (
        connect(gateway, options="-c work_mem=5MB", application_name="with-opts") as a,
        connect(gateway) as b,
    ):
        for _ in range(5):
            assert scalar(a, "SHOW work_mem") == "5MB"
            assert scalar(a, "SHOW application_name") == "with-opts"
            assert scalar(b, "SHOW work_mem") != "5MB"


def test_read_only_backstop_holds_on_every_connection(gateway: Gateway) -> None:
    with connect(gateway) as reader:
        for _ in range(POOL_SIZE * 3):
            assert scalar(reader, "SHOW default_transaction_read_only") == "on"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("SET default_transaction_read_only TO off")
    with connect(gateway, "dave") as writer:
        assert scalar(writer, "SHOW default_transaction_read_only") == "off"


# ------------------------------------------------------------------------------- pinning


def test_temp_table_pins_the_client_and_keeps_working(gateway: Gateway) -> None:
    before = pins(gateway, "temp_object")
    with connect(gateway, "dave") as owner, connect(gateway, "dave") as other:
        owner.execute("CREATE TEMP TABLE scratch (n int)")
        for n in range(5):
            owner.execute("INSERT INTO scratch VALUES (%s)", (n,))
            assert scalar(other, "SELECT 1") == 1
        assert scalar(owner, "SELECT sum(n) FROM scratch") == 10
        assert metric(gateway, "querybase_pool_pinned_sessions", source=POOLED, role="write") >= 1
    assert pins(gateway, "temp_object") == before + 1


def test_listen_pins_and_receives_notifications(gateway: Gateway) -> None:
    before = pins(gateway, "listen")
    with connect(gateway) as listener, connect(gateway, "dave") as notifier:
        listener.execute("LISTEN qb_channel")
        for _ in range(3):
            assert scalar(notifier, "SELECT 1") == 1
        notifier.execute("NOTIFY qb_channel, 'hello'")
        received = next(listener.notifies(timeout=10, stop_after=1))
        assert (received.channel, received.payload) == ("qb_channel", "hello")
    assert pins(gateway, "listen") == before + 1


def test_sql_prepare_pins_and_executes_later(gateway: Gateway) -> None:
    before = pins(gateway, "sql_prepare")
    with connect(gateway) as conn, connect(gateway) as other:
        conn.execute("PREPARE two AS SELECT 2")
        for _ in range(3):
            assert scalar(other, "SELECT 1") == 1
            assert scalar(conn, "EXECUTE two") == 2
    assert pins(gateway, "sql_prepare") == before + 1


def test_advisory_lock_pins_and_stays_held(gateway: Gateway) -> None:
    before = pins(gateway, "advisory_lock")
    with connect(gateway) as holder, connect(gateway) as other:
        assert scalar(holder, "SELECT pg_try_advisory_lock(4242)") is True
        for _ in range(3):
            assert scalar(other, "SELECT pg_try_advisory_xact_lock(4242)") is False  # still held
        assert scalar(holder, "SELECT pg_advisory_unlock(4242)") is True
    assert pins(gateway, "advisory_lock") == before + 1


def test_transaction_scoped_advisory_lock_does_not_pin(gateway: Gateway) -> None:
    before = metric(gateway, "querybase_pool_pins_total", source=POOLED)
    with connect(gateway) as conn:
        with conn.transaction():
            assert scalar(conn, "SELECT pg_try_advisory_xact_lock(77)") is True
        conn.execute("SET work_mem TO '3MB'")
        assert scalar(conn, "SHOW work_mem") == "3MB"
    assert metric(gateway, "querybase_pool_pins_total", source=POOLED) == before


def test_asyncpg_prepared_statements_do_not_pin(gateway: Gateway) -> None:
    """asyncpg prepares a named statement for every query: twenty clients on two connections,
    each preparing and re-running statements, all get right answers and none is pinned."""
    import asyncio

    before = metric(gateway, "querybase_pool_pins_total", source=POOLED)

    async def one(index: int) -> int:
        conn = await asyncpg_connect(gateway)
        try:
            statement = await conn.prepare("SELECT $1::int * 2")
            got = 0
            for i in range(5):
                got += await statement.fetchval(index + i)
                got += await conn.fetchval("SELECT count(*) FROM items WHERE id <= $1", 5)
            return got
        finally:
            await conn.close()

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(20)))

    assert asyncio.run(main()) == [10 * i + 20 + 25 for i in range(20)]
    assert metric(gateway, "querybase_pool_pins_total", source=POOLED) == before


@pytest.fixture(scope="module")
def pgbench_ready(gateway: Gateway, pg_server: PostgresCluster) -> Iterator[None]:
    with pgbench_tables(pg_server):
        yield


@pytest.mark.usefixtures("pgbench_ready")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_with_ten_times_more_clients_than_connections(gateway: Gateway, mode: str) -> None:
    pgbench_select_only(gateway, POOLED, clients=POOL_SIZE * 10, transactions=50, mode=mode)


def test_a_named_statement_follows_its_client_to_another_connection(gateway: Gateway) -> None:
    """On a fresh pool of two: the statement is prepared on the first connection; while another
    client holds that one, it runs on the second, where QueryBase prepares it first."""
    from proxy.wire.pg import protocol as pgp

    cli(
        gateway.config,
        *("source", "add", "fresh", "--engine", "postgresql", "--host", gateway.pg.host),
        *("--port", str(gateway.pg.port), "--database", "qbtest", "--user", "qb_reader"),
        *("--password-env", "READ_PW", "--tls", "disable", "--pool-size", "2"),
        env={"READ_PW": PG_PASSWORDS["qb_reader"]},
    )
    cli(gateway.config, "grant", "readers", "fresh", "read")
    with RawPg(gateway.host, gateway.port) as a, connect(gateway, dbname="fresh") as b:
        a.login("carol", gateway.passwords["carol"], "fresh")
        a.send(pgp.make_parse(b"s1", b"SELECT 40 + $1::int", []) + pgp.SYNC)
        assert [m[0] for m in until_ready(a)] == [b"1", b"Z"]
        first = a.query("SELECT pg_backend_pid()")[0]
        b.execute("BEGIN")
        b_pid = scalar(b, "SELECT pg_backend_pid()")
        a.query("BEGIN")
        a_pid = a.query("SELECT pg_backend_pid()")[0][0][0]
        assert int(a_pid) != b_pid
        a.send(pgp.make_bind(b"", b"s1", [0], [b"2"], []) + pgp.make_execute(b"") + pgp.SYNC)
        replies = until_ready(a)
        assert [m[0] for m in replies] == [b"2", b"D", b"C", b"Z"]  # no ParseComplete of QueryBase's own
        assert replies[1][1].endswith(b"42")
        names = a.query("SELECT name FROM pg_prepared_statements ORDER BY name")[0]
        assert [n[0][:4] for n in names] == [b"_qb_"]  # the shared name, never the client's
        a.query("COMMIT")
        b.execute("COMMIT")
        assert first  # the first connection served the Parse
        # Close is answered without touching the shared statement; the name is gone for the client.
        a.send(pgp.make_close(b"S", b"s1") + pgp.SYNC)
        assert [m[0] for m in until_ready(a)] == [b"3", b"Z"]
        a.send(pgp.make_bind(b"", b"s1", [], [], []) + pgp.make_execute(b"") + pgp.SYNC)
        replies = until_ready(a)
        assert [m[0] for m in replies] == [b"E", b"Z"]
        assert pgp.parse_error_fields(replies[0][1])["C"] == "26000"


def test_statement_names_behave_as_on_the_server(gateway: Gateway) -> None:
    from proxy.wire.pg import protocol as pgp

    with RawPg(gateway.host, gateway.port) as a, RawPg(gateway.host, gateway.port) as b:
        a.login("carol", gateway.passwords["carol"], POOLED)
        b.login("carol", gateway.passwords["carol"], POOLED)
        a.send(pgp.make_parse(b"same", b"SELECT 7", []) + pgp.SYNC)
        assert [m[0] for m in until_ready(a)] == [b"1", b"Z"]
        # Another client's statement of the same name is its own.
        b.send(pgp.make_parse(b"same", b"SELECT 8", []) + pgp.SYNC)
        assert [m[0] for m in until_ready(b)] == [b"1", b"Z"]
        for raw, want in ((a, b"7"), (b, b"8"), (a, b"7")):
            raw.send(pgp.make_bind(b"", b"same", [], [], []) + pgp.make_execute(b"") + pgp.SYNC)
            replies = until_ready(raw)
            assert replies[1][1].endswith(want), replies
        # Preparing a name twice fails as on the server, and the batch is skipped to its Sync.
        a.send(pgp.make_parse(b"same", b"SELECT 9", []) + pgp.make_bind(b"", b"same", [], [], []) + pgp.SYNC)
        replies = until_ready(a)
        assert [m[0] for m in replies] == [b"E", b"Z"]
        assert pgp.parse_error_fields(replies[0][1])["C"] == "42P05"
        # A name nobody prepared, and QueryBase's own names, do not exist for a client.
        for name in (b"never", b"_qb_none"):
            a.send(pgp.make_describe(b"S", name) + pgp.SYNC)
            replies = until_ready(a)
            assert pgp.parse_error_fields(replies[0][1])["C"] == "26000"


def test_sql_names_in_querybases_namespace_are_refused(gateway: Gateway) -> None:
    with connect(gateway) as conn:
        for sql in ("PREPARE _qb_x AS SELECT 1", "EXECUTE _qb_x", "DEALLOCATE _qb_x"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="reserved by QueryBase"):
                conn.execute(sql)


@pytest.mark.parametrize("drop_all", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_deallocate_all_drops_the_shared_statements_of_that_connection(
    gateway: Gateway, drop_all: str
) -> None:
    """DEALLOCATE ALL / DISCARD ALL drop every prepared statement of the connection, the shared
    ones included (as on the server, the client's names are gone): QueryBase prepares them
    again when the client prepares the same text anew."""
    from proxy.wire.pg import protocol as pgp

    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("carol", gateway.passwords["carol"], "tiny")  # one connection: always the same
        raw.send(pgp.make_parse(b"a", b"SELECT 5", []) + pgp.SYNC)
        assert [m[0] for m in until_ready(raw)] == [b"1", b"Z"]
        raw.query(drop_all)
        raw.send(pgp.make_bind(b"", b"a", [], [], []) + pgp.SYNC)
        replies = until_ready(raw)
        assert pgp.parse_error_fields(replies[0][1])["C"] == "26000"
        raw.send(
            pgp.make_parse(b"b", b"SELECT 5", [])
            + pgp.make_bind(b"", b"b", [], [], [])
            + pgp.make_execute(b"")
            + pgp.SYNC
        )
        assert [m[0] for m in until_ready(raw)] == [b"1", b"2", b"D", b"C", b"Z"]


# -------------------------------------------------------------------- statements across


def test_unnamed_statement_is_kept_until_it_runs_and_not_trusted_after(gateway: Gateway) -> None:
    """pg8000 parses the unnamed statement, syncs, describes it, syncs, then binds and runs it:
    the connection stays with the client until the statement ran. A Bind of it after that (the
    connection may serve someone else by now) is refused, never run."""
    from proxy.wire.pg import protocol as pgp

    with RawPg(gateway.host, gateway.port) as raw:
        raw.login("carol", gateway.passwords["carol"], POOLED)
        raw.send(pgp.make_parse(b"", b"SELECT 41", []) + pgp.SYNC)
        assert [m[0] for m in until_ready(raw)] == [b"1", b"Z"]
        raw.send(pgp.make_describe(b"S", b"") + pgp.SYNC)
        assert [m[0] for m in until_ready(raw)] == [b"t", b"T", b"Z"]
        raw.send(pgp.make_bind(b"", b"", [], [], []) + pgp.make_execute(b"") + pgp.SYNC)
        assert [m[0] for m in until_ready(raw)] == [b"2", b"D", b"C", b"Z"]
        raw.send(pgp.make_bind(b"", b"", [], [], []) + pgp.make_execute(b"") + pgp.SYNC)
        replies = until_ready(raw)
        assert [m[0] for m in replies if m[0] != b"2"] == [b"E", b"Z"], replies
        assert raw.query("SELECT 42")[0] == [[b"42"]]


def test_pool_timeout_mid_session_ends_only_that_session(gateway: Gateway) -> None:
    holders = [connect(gateway) for _ in range(POOL_SIZE)]
    try:
        for holder in holders:
            holder.execute("BEGIN")
            assert scalar(holder, "SELECT 1") == 1
        started = time.monotonic()
        with RawPg(gateway.host, gateway.port, timeout=40) as raw:
            with pytest.raises(ServerError) as caught:
                raw.login("carol", gateway.passwords["carol"], POOLED)
            assert caught.value.sqlstate == "53300"
        assert time.monotonic() - started >= 19
        for holder in holders:
            assert scalar(holder, "SELECT 2") == 2
            holder.execute("COMMIT")
    finally:
        for holder in holders:
            holder.close()
    with connect(gateway) as after:
        assert scalar(after, "SELECT 3") == 3


def test_cancel_reaches_the_clients_own_statement_and_nobody_elses(gateway: Gateway) -> None:
    """On a pool of one connection, shared by both clients: a client's cancel stops its own
    running statement, and a cancel from a client that runs nothing stops nobody's."""
    with (
        connect(gateway, dbname="tiny") as idle,
        connect(gateway, dbname="tiny") as busy,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        assert scalar(idle, "SELECT 1") == 1  # the connection served `idle` last; now it is free
        sleeping = pool.submit(scalar, busy, "SELECT pg_sleep(1.5)::text")
        time.sleep(0.5)
        idle.cancel()  # `idle` runs nothing: the connection now runs `busy`'s statement
        assert sleeping.result(timeout=10) == ""
        started = time.monotonic()
        sleeping = pool.submit(scalar, busy, "SELECT pg_sleep(30)::text")
        time.sleep(0.5)
        busy.cancel()
        with pytest.raises(psycopg.errors.QueryCanceled):
            sleeping.result(timeout=20)
        assert time.monotonic() - started < 10
        assert scalar(busy, "SELECT 2") == 2
        assert scalar(idle, "SELECT 3") == 3

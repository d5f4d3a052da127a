"""Real PostgreSQL clients through a real `querybase serve`: psql, psycopg 3, asyncpg, pg8000, pgbench.

Each client logs in with QueryBase's own accounts (tests/support/pgfront.py) and talks to the
`shop` source, in front of the session's PostgreSQL. Reads must come back exactly as PostgreSQL
sends them; writes of a `propose` user are held (SQLSTATE QB001) and change nothing; a `read` user's
writes are denied (42501); a `write` user's writes run.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg.types.numeric import Int4

from tests.support.localdb import PostgresCluster
from tests.support.pgfront import (
    ITEMS,
    SOURCE,
    Gateway,
    client_env,
    pg_program,
    pgbench_select_only,
    pgbench_tables,
    running_gateway,
    setup_items,
)

pytestmark = pytest.mark.integration

ITEM_ROWS = [[str(i), n] for i, n in ITEMS]
PSQL_TIMEOUT = 30


@pytest.fixture(scope="module")
def gateway(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(pg_server)
    with running_gateway(pg_server, tmp_path_factory.mktemp("qb-clients")) as gw:
        yield gw


@pytest.fixture
def items_unchanged(gateway: Gateway) -> Iterator[None]:
    assert gateway.rows("SELECT id, name FROM items ORDER BY id") == ITEM_ROWS
    yield
    assert gateway.rows("SELECT id, name FROM items ORDER BY id") == ITEM_ROWS


@pytest.fixture
def scratch_ids(gateway: Gateway) -> Iterator[None]:
    """Rows with id >= 1000 are the test's own; removed afterwards."""
    yield
    gateway.admin_sql("DELETE FROM items WHERE id >= 1000")


# ------------------------------------------------------------------------------------ psql


def psql(
    gw: Gateway, user: str, *args: str, stdin: str = "", sslmode: str = "disable", **options: str
) -> subprocess.CompletedProcess[str]:
    conninfo = gw.conninfo(user, sslmode=sslmode, **options).replace(f"password='{gw.passwords[user]}'", "")
    return subprocess.run(
        [pg_program("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-d", conninfo, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=client_env(gw.passwords[user]),
        timeout=PSQL_TIMEOUT,
        check=False,
    )


def test_psql_command(gateway: Gateway) -> None:
    result = psql(gateway, "carol", "-A", "-t", "-c", "SELECT name FROM items WHERE id = 2")
    assert (result.returncode, result.stdout, result.stderr) == (0, "banana\n", "")


def test_psql_script(gateway: Gateway, tmp_path: Path) -> None:
    script = tmp_path / "reads.sql"
    script.write_text(
        "\\set first 1\n"
        "SELECT name FROM items WHERE id = :first;\n"
        "SELECT count(*) FROM items;\n"
        "BEGIN READ ONLY;\n"
        "SELECT string_agg(name, ',' ORDER BY id) FROM items WHERE id > 3;\n"
        "COMMIT;\n"
        "SHOW server_version_num;\n",
        encoding="utf-8",
    )
    result = psql(gateway, "alice", "-A", "-t", "-q", "-f", str(script))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["apple", "5", "date,elderberry"]
    assert int(lines[3]) >= 100000


def test_psql_copy_to_stdout(gateway: Gateway) -> None:
    result = psql(gateway, "carol", "-c", "\\copy items to stdout")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"{i}\t{n}\n" for i, n in ITEMS)


def test_psql_describe_table(gateway: Gateway) -> None:
    result = psql(gateway, "carol", "-c", "\\d items")
    assert result.returncode == 0, result.stderr
    assert 'Table "public.items"' in result.stdout
    assert " id     | integer |           | not null | " in result.stdout
    assert " name   | text    |           | not null | " in result.stdout
    assert '"items_pkey" PRIMARY KEY, btree (id)' in result.stdout


@pytest.mark.usefixtures("items_unchanged")
def test_psql_copy_from_stdin_is_held_for_propose(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    result = psql(gateway, "alice", "-c", "\\copy items from stdin", stdin="100\tsmuggled\n\\.\n")
    assert result.returncode != 0
    assert "ERROR:  QB001: write held for approval as change request #" in result.stderr, result.stderr
    # psql sends the \copy as "COPY " + the rest of the line, kept exactly as sent.
    assert [r["statement_text"] for r in gateway.new_requests(before)] == ["COPY  items FROM STDIN "]


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psql_ssl_modes(gateway: Gateway, sslmode: str) -> None:
    result = psql(gateway, "carol", "-c", "\\conninfo", "-c", "SELECT 7 AS seven", sslmode=sslmode)
    assert result.returncode == 0, result.stderr
    assert ("SSL connection (protocol: TLS" in result.stdout) is (sslmode == "require"), result.stdout
    assert " seven \n-------\n     7\n" in result.stdout


def test_psql_channel_binding_required_over_tls(gateway: Gateway) -> None:
    result = psql(
        gateway, "carol", "-A", "-t", "-c", "SELECT 'bound'", sslmode="require", channel_binding="require"
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "bound\n", "")


# --------------------------------------------------------------------------------- psycopg


def pconnect(gw: Gateway, user: str, *, autocommit: bool = True, **options: str) -> psycopg.Connection:
    return psycopg.connect(gw.conninfo(user, **options), autocommit=autocommit)


def test_psycopg_text_and_binary_parameters(gateway: Gateway) -> None:
    with pconnect(gateway, "carol") as conn:
        row = conn.execute("SELECT %s::int + 1, %t || '!', %s::bytea", (41, "hi", b"a\x00b")).fetchone()
        assert row == (42, "hi!", b"a\x00b")
        cur = conn.cursor(binary=True)
        row = cur.execute(
            "SELECT %b + 1, %b::text, %b, name FROM items WHERE id = %b",
            (Int4(41), "hé", b"\x00\xff", Int4(3)),
        ).fetchone()
        assert row == (42, "hé", b"\x00\xff", "cherry")


def test_psycopg_prepared_statement_reused(gateway: Gateway) -> None:
    with pconnect(gateway, "carol") as conn:
        cur = conn.cursor()
        names = []
        for i in range(1, 7):
            cur.execute("SELECT name FROM items WHERE id = %s", (i,), prepare=True)
            names.append(cur.fetchone())
        assert names == [(n,) for _, n in ITEMS] + [None]
        # psycopg prepared it as `_pg3_0`; the source pools by transaction, so the server
        # connection has it under QueryBase's shared name (docs/pooling.md).
        prepared = conn.execute("SELECT name, statement FROM pg_prepared_statements").fetchall()
        assert [name[:4] for name, text in prepared if text == "SELECT name FROM items WHERE id = $1"] == [
            "_qb_"
        ]


def test_psycopg_pipeline(gateway: Gateway) -> None:
    with pconnect(gateway, "carol") as conn:
        with conn.pipeline():
            cursors = [conn.execute("SELECT name FROM items WHERE id = %s", (i,)) for i in (5, 1, 3)]
            count = conn.execute("SELECT count(*) FROM items")
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1 / 0").fetchone()
        assert [c.fetchone() for c in cursors] == [("elderberry",), ("apple",), ("cherry",)]
        assert count.fetchone() == (len(ITEMS),)
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_psycopg_copy_to(gateway: Gateway) -> None:
    with pconnect(gateway, "alice") as conn:
        cur = conn.cursor()
        with cur.copy("COPY items TO STDOUT") as copy:
            rows = list(copy.rows())
        assert rows == [(str(i), n) for i, n in ITEMS]
        with cur.copy("COPY (SELECT id, name FROM items WHERE id < 3) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "text"])
            assert list(copy.rows()) == [(1, "apple"), (2, "banana")]


@pytest.mark.usefixtures("items_unchanged")
def test_psycopg_pipeline_with_a_held_write_ends_the_batch(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    with pconnect(gateway, "alice") as conn:
        cursors: list[psycopg.Cursor] = []

        def batch() -> None:
            with conn.pipeline():
                cursors.append(conn.execute("SELECT %s::int", (1,)))
                cursors.append(conn.execute("UPDATE items SET name = %s WHERE id = %s", ("kiwi", 1)))
                cursors.append(conn.execute("SELECT %s::int", (3,)))

        with pytest.raises(psycopg.Error) as caught:
            batch()
        assert caught.value.sqlstate == "QB001"
        first, _, third = cursors
        assert first.fetchall() == [(1,)]
        # As after any error in a pipeline: what followed, up to Sync, was skipped.
        with pytest.raises(psycopg.ProgrammingError):
            third.fetchall()
        assert conn.execute("SELECT name FROM items WHERE id = 1").fetchone() == ("apple",)
    assert [r["statement_text"] for r in gateway.new_requests(before)] == [
        "UPDATE items SET name = $1 WHERE id = $2"
    ]


@pytest.mark.usefixtures("items_unchanged")
def test_psycopg_copy_from_is_held_for_propose(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    with pconnect(gateway, "alice") as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.Error) as caught, cur.copy("COPY items (id, name) FROM STDIN") as copy:
            copy.write_row((100, "smuggled"))
        assert caught.value.sqlstate == "QB001"
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (len(ITEMS),)
    assert [r["statement_text"] for r in gateway.new_requests(before)] == ["COPY items (id, name) FROM STDIN"]


@pytest.mark.usefixtures("scratch_ids")
def test_psycopg_copy_from_runs_for_write(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    with pconnect(gateway, "dave") as conn:
        cur = conn.cursor()
        with cur.copy("COPY items (id, name) FROM STDIN") as copy:
            copy.write_row((1001, "fig"))
            copy.write_row((1002, "grape"))
        assert cur.rowcount == 2
    assert gateway.rows("SELECT id, name FROM items WHERE id >= 1000 ORDER BY id") == [
        ["1001", "fig"],
        ["1002", "grape"],
    ]
    assert gateway.new_requests(before) == []


@pytest.mark.usefixtures("items_unchanged")
def test_psycopg_parameterised_update_is_held_with_its_parameters(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    with pconnect(gateway, "alice", autocommit=False) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("UPDATE items SET name = %t WHERE id = %b", ("kiwi", Int4(2)))
        assert caught.value.sqlstate == "QB001"
        assert caught.value.diag.message_detail  # what happens next is explained
        conn.rollback()
        assert conn.execute("SELECT name FROM items WHERE id = 2").fetchone() == ("banana",)
        conn.rollback()
    [held] = gateway.new_requests(before)
    assert held["status"] == "pending"
    assert held["kind"] == "write"
    assert held["statement_text"] == "UPDATE items SET name = $1 WHERE id = $2"
    params = held["parameters"]
    assert [p["format"] for p in params] == [0, 1]
    assert params[0]["type_oid"] in (0, 25)  # psycopg sends str as unknown (or text)
    assert params[1]["type_oid"] == 23  # int4
    assert base64.b64decode(params[0]["value_b64"]) == b"kiwi"
    assert base64.b64decode(params[1]["value_b64"]) == (2).to_bytes(4, "big")
    facts = held["session_facts"]
    assert facts["protocol"] == "postgresql"
    assert facts["tls"] is False


# --------------------------------------------------------------------------------- asyncpg


async def aconnect(gw: Gateway, user: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=gw.host, port=gw.port, user=user, password=gw.passwords[user], database=SOURCE, ssl=False
    )


async def test_asyncpg_fetch_and_prepared_statements(gateway: Gateway) -> None:
    conn = await aconnect(gateway, "carol")
    try:
        rows = await conn.fetch("SELECT id, name FROM items WHERE id <= $1 ORDER BY id", 3)
        assert [tuple(r) for r in rows] == ITEMS[:3]
        stmt = await conn.prepare("SELECT name FROM items WHERE id = $1")
        for i, name in ITEMS:
            assert await stmt.fetchval(i) == name
        assert await conn.fetchval("SELECT $1::text || $2::int", "n", 5) == "n5"
    finally:
        await conn.close()


@pytest.mark.usefixtures("items_unchanged")
async def test_asyncpg_prepared_write_is_held_at_execute(gateway: Gateway) -> None:
    # asyncpg prepares with Parse + Describe + Flush (no Sync): that must be answered at once.
    before = gateway.last_request_id()
    conn = await aconnect(gateway, "alice")
    try:
        stmt = await conn.prepare("DELETE FROM items WHERE id = $1")
        assert [p.name for p in stmt.get_parameters()] == ["int4"]
        with pytest.raises(asyncpg.PostgresError) as caught:
            await stmt.fetch(2)
        assert caught.value.sqlstate == "QB001"
        assert await conn.fetchval("SELECT count(*) FROM items") == len(ITEMS)
    finally:
        await conn.close()
    [held] = gateway.new_requests(before)
    assert held["statement_text"] == "DELETE FROM items WHERE id = $1"
    [param] = held["parameters"]
    assert (param["format"], base64.b64decode(param["value_b64"])) == (1, (2).to_bytes(4, "big"))
    # asyncpg's Parse declares no types (the server infers int4): the declared 0 is what was sent.
    assert param["type_oid"] in (0, 23)


async def test_upstream_identity_is_passed_through(gateway: Gateway, pg_server: PostgresCluster) -> None:
    conn = await aconnect(gateway, "carol")
    try:
        settings = conn.get_settings()
        assert settings.server_version == pg_server.version
        assert settings.client_encoding == "UTF8"
        assert settings.standard_conforming_strings == "on"
        assert settings.integer_datetimes == "on"
        assert settings.session_authorization == "qb_reader"
    finally:
        await conn.close()
    with pconnect(gateway, "carol", application_name="qb-test-app") as pconn:
        assert pconn.info.parameter_status("application_name") == "qb-test-app"
        assert pconn.execute("SHOW application_name").fetchone() == ("qb-test-app",)
        assert pconn.info.parameter_status("server_version") == pg_server.version


@pytest.mark.usefixtures("items_unchanged")
async def test_asyncpg_copy_records_is_held_for_propose(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    conn = await aconnect(gateway, "alice")
    try:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.copy_records_to_table("items", records=[(100, "smuggled"), (101, "more")])
        assert caught.value.sqlstate == "QB001"
        assert await conn.fetchval("SELECT count(*) FROM items") == len(ITEMS)
    finally:
        await conn.close()
    held = gateway.new_requests(before)
    assert [r["statement_text"] for r in held] == ['COPY "items" FROM STDIN (FORMAT binary) ']


@pytest.mark.usefixtures("items_unchanged")
async def test_asyncpg_delete_as_reader_is_denied(gateway: Gateway) -> None:
    before = gateway.last_request_id()
    conn = await aconnect(gateway, "carol")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match='has read on source "shop"'):
            await conn.execute("DELETE FROM items WHERE id = 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM items WHERE id = $1", 1)
        assert await conn.fetchval("SELECT count(*) FROM items") == len(ITEMS)
    finally:
        await conn.close()
    assert gateway.new_requests(before) == []


@pytest.mark.usefixtures("scratch_ids")
async def test_asyncpg_insert_as_writer_runs(gateway: Gateway) -> None:
    conn = await aconnect(gateway, "dave")
    try:
        assert await conn.execute("INSERT INTO items VALUES ($1, $2)", 1010, "honeydew") == "INSERT 0 1"
        async with conn.transaction():
            await conn.execute("INSERT INTO items VALUES (1011, 'jackfruit')")
    finally:
        await conn.close()
    assert gateway.rows("SELECT id, name FROM items WHERE id >= 1000 ORDER BY id") == [
        ["1010", "honeydew"],
        ["1011", "jackfruit"],
    ]


# ---------------------------------------------------------------------------------- pg8000


@pytest.mark.usefixtures("items_unchanged")
def test_pg8000(gateway: Gateway) -> None:
    native = pytest.importorskip("pg8000.native")
    before = gateway.last_request_id()
    conn = native.Connection(
        "alice", host=gateway.host, port=gateway.port, database=SOURCE, password=gateway.passwords["alice"]
    )
    try:
        assert conn.run("SELECT name FROM items WHERE id = :id", id=4) == [["date"]]
        with pytest.raises(native.DatabaseError) as caught:
            conn.run("DELETE FROM items WHERE id = :id", id=4)
        assert caught.value.args[0]["C"] == "QB001"
        assert conn.run("SELECT count(*) FROM items") == [[len(ITEMS)]]
    finally:
        conn.close()
    [held] = gateway.new_requests(before)
    assert held["statement_text"] == "DELETE FROM items WHERE id = $1"


# --------------------------------------------------------------------------------- pgbench


@pytest.fixture(scope="module")
def pgbench_ready(gateway: Gateway, pg_server: PostgresCluster) -> Iterator[None]:
    with pgbench_tables(pg_server):
        yield


@pytest.mark.usefixtures("pgbench_ready")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(gateway: Gateway, mode: str) -> None:
    output = pgbench_select_only(gateway, SOURCE, clients=2, transactions=200, mode=mode)
    assert f"query mode: {mode}" in output


# ---------------------------------------------------------------- every driver, TLS on and off


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _psycopg_session(gw: Gateway, user: str, tls: bool) -> tuple[str, str]:
    with psycopg.connect(gw.conninfo(user, sslmode="require" if tls else "disable"), autocommit=True) as conn:
        encrypted = conn.pgconn.ssl_in_use
        try:
            conn.execute("DELETE FROM items WHERE id = %s", [1])
            outcome = "ran"
        except psycopg.Error as exc:
            outcome = exc.sqlstate or "?"
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (len(ITEMS),)
        return ("tls" if encrypted else "plain"), outcome


async def _asyncpg_session(gw: Gateway, user: str, tls: bool) -> tuple[str, str]:
    conn = await asyncpg.connect(
        host=gw.host, port=gw.port, user=user, password=gw.passwords[user], database=SOURCE,
        ssl=_no_verify() if tls else False,
    )  # fmt: skip
    try:
        encrypted = conn._transport.get_extra_info("sslcontext") is not None  # type: ignore[attr-defined]
        try:
            await conn.execute("DELETE FROM items WHERE id = $1", 1)
            outcome = "ran"
        except asyncpg.PostgresError as exc:
            outcome = exc.sqlstate
        assert await conn.fetchval("SELECT count(*) FROM items") == len(ITEMS)
        return ("tls" if encrypted else "plain"), outcome
    finally:
        await conn.close()


def _pg8000_session(gw: Gateway, user: str, tls: bool) -> tuple[str, str]:
    pg8000 = pytest.importorskip("pg8000.native")
    conn = pg8000.Connection(
        user, password=gw.passwords[user], host=gw.host, port=gw.port, database=SOURCE,
        ssl_context=_no_verify() if tls else False,
    )  # fmt: skip
    try:
        try:
            conn.run("DELETE FROM items WHERE id = :id", id=1)
            outcome = "ran"
        except pg8000.DatabaseError as exc:
            outcome = exc.args[0]["C"]
        assert conn.run("SELECT count(*) FROM items") == [[len(ITEMS)]]
        return ("tls" if isinstance(conn._usock, ssl.SSLSocket) else "plain"), outcome
    finally:
        conn.close()


@pytest.mark.usefixtures("items_unchanged")
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize(("user", "expected"), [("alice", "QB001"), ("carol", "42501")])
async def test_every_driver_with_and_without_tls(
    gateway: Gateway, tls: bool, user: str, expected: str
) -> None:
    wanted = ("tls" if tls else "plain", expected)
    assert _psycopg_session(gateway, user, tls) == wanted
    assert await _asyncpg_session(gateway, user, tls) == wanted
    assert _pg8000_session(gateway, user, tls) == wanted

"""tests/support/localdb.py and its fixtures: real servers, promised logins, reuse, demo data."""

from __future__ import annotations

from pathlib import Path

import aiomysql
import asyncpg
import psycopg
import pymysql
import pytest

from tests.support.localdb import (
    MARIADB_PASSWORDS,
    PG_PASSWORDS,
    LocalServerError,
    MariaDBServer,
    PostgresCluster,
    free_port,
)

pytestmark = pytest.mark.integration

ER_ACCESS_DENIED_ERROR = 1045
ER_TABLEACCESS_DENIED_ERROR = 1142


# --------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.parametrize("user", ["qb_scram", "qb_md5", "qb_trust", "qb_reader", "qb_admin"])
async def test_pg_login_with_asyncpg(pg_server: PostgresCluster, user: str) -> None:
    conn = await asyncpg.connect(pg_server.dsn(user))
    try:
        assert await conn.fetchval("SELECT current_user") == user
        assert await conn.fetchval("SHOW server_version") == pg_server.version
    finally:
        await conn.close()


@pytest.mark.parametrize("user", ["qb_scram", "qb_md5"])
async def test_pg_wrong_password_is_refused(pg_server: PostgresCluster, user: str) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=pg_server.host,
            port=pg_server.port,
            user=user,
            password="not-" + PG_PASSWORDS[user],
            database="qbtest",
        )


async def test_pg_scram_role_needs_its_password(pg_server: PostgresCluster) -> None:
    # Without a password the server asks for one and asyncpg has none to give.
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=pg_server.host, port=pg_server.port, user="qb_scram", database="qbtest")


def test_pg_auth_methods_are_what_the_role_names_say(pg_server: PostgresCluster) -> None:
    stored = pg_server.execute_sql(
        "SELECT rolname, coalesce(substr(rolpassword, 1, 14), '-') FROM pg_authid"
        " WHERE rolname LIKE 'qb\\_%' ORDER BY rolname"
    )
    rows = dict(line.split("|") for line in stored.splitlines())
    assert rows["qb_scram"] == rows["qb_reader"] == rows["qb_admin"] == "SCRAM-SHA-256$"
    assert rows["qb_md5"].startswith("md5")
    assert rows["qb_trust"] == "-"

    rules = pg_server.execute_sql(
        "SELECT type, array_to_string(user_name, ','), coalesce(address, ''), auth_method"
        " FROM pg_hba_file_rules ORDER BY line_number"
    )
    assert rules.splitlines() == [
        "local|all||trust",
        "host|qb_trust|127.0.0.1|trust",
        "host|qb_md5|127.0.0.1|md5",
        "host|all|127.0.0.1|scram-sha-256",
    ]


@pytest.mark.parametrize("user", ["qb_scram", "qb_md5", "qb_trust"])
def test_pg_login_with_psycopg(pg_server: PostgresCluster, user: str) -> None:
    with psycopg.connect(pg_server.dsn(user), connect_timeout=10) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == (user, "qbtest")


async def test_pg_reader_reads_but_cannot_write(pg_server: PostgresCluster) -> None:
    # Tables the superuser creates are readable by qb_reader and writable by qb_scram
    # (default privileges set up by PostgresCluster).
    pg_server.execute_sql(
        "DROP TABLE IF EXISTS localdb_probe;"
        " CREATE TABLE localdb_probe (id serial PRIMARY KEY, note text);"
        " INSERT INTO localdb_probe (note) VALUES ('seed');"
    )
    reader = await asyncpg.connect(pg_server.dsn("qb_reader"))
    writer = await asyncpg.connect(pg_server.dsn("qb_scram"))
    try:
        assert await reader.fetchval("SELECT count(*) FROM localdb_probe") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("INSERT INTO localdb_probe (note) VALUES ('no')")
        await writer.execute("INSERT INTO localdb_probe (note) VALUES ('yes')")
        assert await reader.fetchval("SELECT count(*) FROM localdb_probe") == 2
    finally:
        await reader.close()
        await writer.close()
        pg_server.execute_sql("DROP TABLE localdb_probe")


def test_pg_second_start_adopts_the_running_server(pg_server: PostgresCluster) -> None:
    again = PostgresCluster(pg_server.basedir).start()  # not stopped: it is the session's server
    assert again.reused
    assert (again.port, again.socket_dir, again.version) == (
        pg_server.port,
        pg_server.socket_dir,
        pg_server.version,
    )
    with pytest.raises(LocalServerError, match="already runs on port"):
        PostgresCluster(pg_server.basedir, port=free_port()).start()
    assert pg_server.is_running()


def test_pg_restart_keeps_the_data_directory(localdb_dir: Path) -> None:
    cluster = PostgresCluster(localdb_dir)
    with cluster:
        assert not cluster.reused
        cluster.execute_sql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    assert not cluster.is_running()
    with pytest.raises(LocalServerError, match="not started"):
        _ = cluster.port

    port = free_port()
    with PostgresCluster(localdb_dir, port=port) as restarted:
        assert not restarted.reused
        assert restarted.port == port
        assert restarted.execute_sql("SELECT v FROM kept") == "42\n"
    assert not restarted.is_running()


# --------------------------------------------------------------------------------------------
# MariaDB


def test_mariadb_login_with_pymysql(mariadb_server: MariaDBServer) -> None:
    conn = pymysql.connect(**mariadb_server.connect_args("qb_native"), database="qbtest")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE(), VERSION()")
            assert cur.fetchone() == ("qb_native@%", "qbtest", mariadb_server.version)
    finally:
        conn.close()


async def test_mariadb_login_with_aiomysql(mariadb_server: MariaDBServer) -> None:
    conn = await aiomysql.connect(**mariadb_server.connect_args("qb_native"), db="qbtest")
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT CURRENT_USER(), @@character_set_server")
            assert await cur.fetchone() == ("qb_native@%", "utf8mb4")
    finally:
        conn.close()


@pytest.mark.parametrize("user", ["qb_native", "qb_reader", "root"])
def test_mariadb_wrong_password_is_refused(mariadb_server: MariaDBServer, user: str) -> None:
    # root has no TCP account at all, so it is refused over TCP whatever the password.
    args = mariadb_server.connect_args(user) | {"password": "wrong-" + MARIADB_PASSWORDS.get(user, "")}
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        pymysql.connect(**args, connect_timeout=10)
    assert excinfo.value.args[0] == ER_ACCESS_DENIED_ERROR


async def test_mariadb_wrong_password_is_refused_aiomysql(mariadb_server: MariaDBServer) -> None:
    args = mariadb_server.connect_args("qb_native") | {"password": "wrong"}
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        await aiomysql.connect(**args)
    assert excinfo.value.args[0] == ER_ACCESS_DENIED_ERROR


def test_mariadb_reader_reads_but_cannot_write(mariadb_server: MariaDBServer) -> None:
    mariadb_server.execute_sql(
        "DROP TABLE IF EXISTS localdb_probe;"
        " CREATE TABLE localdb_probe (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20));"
        " INSERT INTO localdb_probe (note) VALUES ('seed');"
    )
    reader = pymysql.connect(**mariadb_server.connect_args("qb_reader"), database="qbtest")
    writer = pymysql.connect(**mariadb_server.connect_args("qb_native"), database="qbtest")
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM localdb_probe")
            assert cur.fetchone() == (1,)
            with pytest.raises(pymysql.err.OperationalError) as excinfo:
                cur.execute("INSERT INTO localdb_probe (note) VALUES ('no')")
            assert excinfo.value.args[0] == ER_TABLEACCESS_DENIED_ERROR
        with writer.cursor() as cur:
            cur.execute("INSERT INTO localdb_probe (note) VALUES ('yes')")
        writer.commit()
        assert mariadb_server.execute_sql("SELECT count(*) FROM localdb_probe") == "2\n"
    finally:
        reader.close()
        writer.close()
        mariadb_server.execute_sql("DROP TABLE localdb_probe")


def test_mariadb_second_start_adopts_the_running_server(mariadb_server: MariaDBServer) -> None:
    again = MariaDBServer(mariadb_server.basedir).start()  # not stopped: the session's server
    assert again.reused
    assert (again.port, again.version) == (mariadb_server.port, mariadb_server.version)
    with pytest.raises(LocalServerError, match="already runs on port"):
        MariaDBServer(mariadb_server.basedir, port=free_port()).start()
    assert mariadb_server.is_running()


def test_mariadb_restart_keeps_the_data_directory(localdb_dir: Path) -> None:
    server = MariaDBServer(localdb_dir)
    with server:
        assert not server.reused
        server.execute_sql("CREATE TABLE kept (v INT); INSERT INTO kept VALUES (42)")
    assert not server.is_running()

    with MariaDBServer(localdb_dir) as restarted:
        assert not restarted.reused
        assert restarted.execute_sql("SELECT v FROM kept") == "42\n"
    assert not restarted.is_running()


# --------------------------------------------------------------------------------------------
# Demo data (deploy/demo), loaded twice into a scratch database to prove it is idempotent and
# that its own grants (not qbtest's defaults) give qb_reader reads and the writer DML.

DEMO_DIR = Path(__file__).resolve().parents[2] / "deploy" / "demo"
SHOP_COUNTS = {"customers": 12, "products": 15, "orders": 20, "order_items": 34}


async def test_pg_demo_shop_loads_with_its_grants(pg_server: PostgresCluster) -> None:
    script = (DEMO_DIR / "shop_postgres.sql").read_text()
    pg_server.execute_sql("DROP DATABASE IF EXISTS localdb_shop", database="postgres")
    pg_server.execute_sql("CREATE DATABASE localdb_shop OWNER qb_admin", database="postgres")
    try:
        for _ in range(2):
            pg_server.execute_sql(script, database="localdb_shop")
        reader = await asyncpg.connect(pg_server.dsn("qb_reader", "localdb_shop"))
        writer = await asyncpg.connect(pg_server.dsn("qb_scram", "localdb_shop"))
        try:
            for table, count in SHOP_COUNTS.items():
                query = f"SELECT count(*) FROM {table}"
                assert await reader.fetchval(query) == count
            assert (
                await reader.fetchval(
                    "SELECT full_name FROM customers WHERE email = 'zoe.martin@example.org'"
                )
                == "Zoë Martin"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute("DELETE FROM order_items")
            new_id = await writer.fetchval("INSERT INTO orders (customer_id) VALUES (3) RETURNING id")
            assert new_id == SHOP_COUNTS["orders"] + 1
        finally:
            await reader.close()
            await writer.close()
    finally:
        pg_server.execute_sql("DROP DATABASE localdb_shop WITH (FORCE)", database="postgres")


def test_mariadb_demo_shop_loads_with_its_grants(mariadb_server: MariaDBServer) -> None:
    script = (DEMO_DIR / "shop_mysql.sql").read_text()
    mariadb_server.execute_sql("DROP DATABASE IF EXISTS localdb_shop; CREATE DATABASE localdb_shop")
    try:
        for _ in range(2):
            mariadb_server.execute_sql(script, database="localdb_shop")
        reader = pymysql.connect(**mariadb_server.connect_args("qb_reader"), database="localdb_shop")
        writer = pymysql.connect(**mariadb_server.connect_args("qb_native"), database="localdb_shop")
        try:
            with reader.cursor() as cur:
                for table, count in SHOP_COUNTS.items():
                    cur.execute(f"SELECT count(*) FROM {table}")
                    assert cur.fetchone() == (count,)
                cur.execute("SELECT full_name FROM customers WHERE email = 'zoe.martin@example.org'")
                assert cur.fetchone() == ("Zoë Martin",)
                with pytest.raises(pymysql.err.OperationalError) as excinfo:
                    cur.execute("DELETE FROM order_items")
                assert excinfo.value.args[0] == ER_TABLEACCESS_DENIED_ERROR
            with writer.cursor() as cur:
                cur.execute("INSERT INTO orders (customer_id) VALUES (3)")
                assert cur.lastrowid == SHOP_COUNTS["orders"] + 1
            writer.rollback()
        finally:
            reader.close()
            writer.close()
    finally:
        mariadb_server.execute_sql("DROP DATABASE localdb_shop")

"""A source's schema allowlist applies to every table reference (issue 10, class 3, MySQL side).

`scoped_my` reads through `qb_adv`, a careless read login that may also read `mysql.*` and the
`qbother` schema; the source is restricted with `--schemas qbtest`. Every statement that names
another schema — qualified names in FROM, joins, subqueries and CTEs, DESCRIBE/TABLE/CHECKSUM,
SHOW … FROM, SHOW DATABASES (which lists them all), information_schema, USE and COM_INIT_DB — is
refused, for every level; nothing from another schema reaches the client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ADV_LOGIN,
    ADV_PASSWORD,
    OTHER_SCHEMA,
    SCHEMA,
    SCOPED_SOURCE,
    Gateway,
    adversarial_gateway,
    connect_raw,
    raw_error,
    results,
    setup_items,
)

pytestmark = pytest.mark.integration

OUTSIDE = [
    "SELECT User, Password FROM mysql.user",
    "select * from `mysql`.`user`",
    "/*!50000 SELECT * FROM mysql.user */",
    "SELECT (SELECT max(User) FROM mysql.user)",
    "SELECT * FROM items WHERE EXISTS (SELECT 1 FROM mysql.user)",
    "SELECT i.name, s.secret FROM items i JOIN qbother.secrets s ON s.id = i.id",
    "WITH x AS (SELECT * FROM qbother.secrets) SELECT * FROM x",
    "SELECT * FROM items UNION SELECT * FROM qbother.secrets",
    "TABLE mysql.user",
    "DESC mysql.user",
    "EXPLAIN SELECT * FROM qbother.secrets",
    "CHECKSUM TABLE qbother.secrets",
    "SHOW DATABASES",
    "SHOW SCHEMAS",
    "SHOW TABLES FROM qbother",
    "SHOW TABLES IN mysql",
    "SHOW COLUMNS FROM user FROM mysql",
    "SHOW CREATE TABLE mysql.user",
    "SHOW TABLES WHERE EXISTS (SELECT 1 FROM mysql.user)",
    "SHOW FUNCTION STATUS",
    "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES",
    "SELECT * FROM INFORMATION_SCHEMA.SCHEMATA",
    "USE qbother",
    "USE mysql; SELECT * FROM user",
    "SELECT 1; SELECT * FROM qbother.secrets",
]


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with adversarial_gateway(mariadb_server, tmp_path_factory.mktemp("adv-scope") / "home") as gw:
        yield gw


def test_the_read_login_itself_reads_other_schemas(gateway: Gateway) -> None:
    """The proof: without QueryBase, the source's read login reads mysql.user and qbother."""
    with (
        pymysql.connect(
            host=gateway.server.host,
            port=gateway.server.port,
            user=ADV_LOGIN,
            password=ADV_PASSWORD,
            database=SCHEMA,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT count(*) FROM mysql.user")
        assert cur.fetchone()[0] > 0
        cur.execute(f"SELECT secret FROM {OTHER_SCHEMA}.secrets")
        assert cur.fetchall() == (("the other schema",),)


@pytest.mark.parametrize("user", ["carol", "alice", "dave"])
def test_no_statement_reaches_another_schema(gateway: Gateway, user: str) -> None:
    """Rule: with --schemas set, every table reference is checked against the allowlist; nothing
    from another schema is returned (DESIGN.md §3 binding rules), whatever the user's level."""
    raw = connect_raw(gateway, user, SCOPED_SOURCE)
    leaked = {}
    try:
        for sql in OUTSIDE:
            answer = results(raw, sql.encode())
            errno, message = raw_error(answer[-1][-1])
            if errno not in (1044, 1142):
                leaked[sql] = (errno, message, len(answer))
        raw.send(bytes([0x02]) + OTHER_SCHEMA.encode())  # COM_INIT_DB
        errno, message = raw_error(raw.must_read()[1])
        if errno != 1044:
            leaked["COM_INIT_DB qbother"] = (errno, message, 0)
        # Still in qbtest: an unqualified name is resolved there.
        answer = results(raw, b"SELECT * FROM secrets")
        assert raw_error(answer[-1][-1])[0] == 1146, answer
    finally:
        raw.close()
    assert not leaked, leaked


@pytest.mark.parametrize("user", ["carol", "alice"])
def test_the_allowed_schema_still_works(gateway: Gateway, user: str) -> None:
    """Rule: references inside the allowlist pass — unqualified, qualified, SHOW TABLES, USE."""
    raw = connect_raw(gateway, user, SCOPED_SOURCE)
    try:
        for sql in (
            b"SELECT count(*) FROM items",
            b"SELECT count(*) FROM qbtest.items",
            b"SHOW TABLES",
            b"SHOW COLUMNS FROM items",
            b"USE qbtest",
            b"SELECT i.id FROM items i JOIN qbtest.items j USING (id)",
        ):
            assert raw_error(results(raw, sql)[-1][-1]) == (0, ""), sql
    finally:
        raw.close()

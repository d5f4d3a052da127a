"""Reads may call only functions known to be safe (issue 10, class 6, MySQL side).

For `read` and `propose` users a statement that would otherwise pass may call only vetted built-ins
(policies/mysql.py `_SAFE_FUNCTION_GROUPS`); a stored function (qualified or not), a backquoted
name or an unknown built-in fails closed — denied for read, held for propose — with the function
named. `EXECUTE IMMEDIATE` runs its text at once and is classified by it; a statement named like a
keyword (`PREPARE immediate …`) is refused. Each attack first runs directly on MariaDB as the
source's DML-capable read login to prove it changes the database there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ADV_LOGIN,
    ADV_PASSWORD,
    ADV_SOURCE,
    SCHEMA,
    Gateway,
    adversarial_gateway,
    connect_raw,
    raw_error,
    results,
    setup_items,
)
from tests.support.pgfront import cli

pytestmark = pytest.mark.integration

FUNCTION_SQL = """
DROP TABLE IF EXISTS fn_probe;
CREATE TABLE fn_probe (id int);
DROP FUNCTION IF EXISTS qb_adv_fn;
DELIMITER //
CREATE FUNCTION qb_adv_fn() RETURNS int MODIFIES SQL DATA
BEGIN
  INSERT INTO fn_probe VALUES (1);
  RETURN 1;
END//
DELIMITER ;
"""
ATTACKS = [
    ("stored-function", [b"SELECT qb_adv_fn()"], "qb_adv_fn"),
    ("qualified-stored-function", [b"SELECT id, qbtest.qb_adv_fn() FROM items"], "qbtest.qb_adv_fn"),
    ("stored-function-in-set", [b"SET @x = qb_adv_fn()"], "qb_adv_fn"),
    ("stored-function-in-show", [b"SHOW TABLES WHERE qb_adv_fn()"], "qb_adv_fn"),
    (
        "execute-immediate",
        [
            b"EXECUTE IMMEDIATE 'SET SESSION TRANSACTION READ WRITE'",
            b"EXECUTE IMMEDIATE 'INSERT INTO fn_probe VALUES (1)'",
        ],
        None,
    ),
    (
        "statement-named-immediate",
        [
            b"PREPARE immediate FROM 'SELECT 1'",
            b"EXECUTE immediate 'SET SESSION TRANSACTION READ WRITE'",
            b"EXECUTE immediate 'INSERT INTO fn_probe VALUES (1)'",
        ],
        None,
    ),
]


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with adversarial_gateway(mariadb_server, tmp_path_factory.mktemp("adv-fn") / "home") as gw:
        yield gw


@pytest.fixture
def probe(gateway: Gateway) -> None:
    gateway.root_sql(FUNCTION_SQL)


def run_direct(server: MariaDBServer, statements: list[bytes]) -> None:
    with pymysql.connect(
        host=server.host,
        port=server.port,
        user=ADV_LOGIN,
        password=ADV_PASSWORD,
        database=SCHEMA,
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    ) as conn:
        for sql in statements:
            if sql.startswith(b"PREPARE immediate"):
                continue  # only QueryBase's bookkeeping cared about that name
            if sql.startswith(b"EXECUTE immediate"):
                sql = b"EXECUTE IMMEDIATE" + sql[len(b"EXECUTE immediate") :]
            conn.query(sql)


@pytest.mark.parametrize(
    ("statements", "named"), [(s, n) for _, s, n in ATTACKS], ids=[i for i, _, _ in ATTACKS]
)
def test_attack_really_changes_mariadb(
    gateway: Gateway, probe: None, statements: list[bytes], named: str | None
) -> None:
    """The proof: run directly, the function (or the text) writes."""
    run_direct(gateway.server, statements)
    assert gateway.count("qbtest.fn_probe") >= 1


@pytest.mark.parametrize("user", ["carol", "alice"])
@pytest.mark.parametrize(
    ("statements", "named"), [(s, n) for _, s, n in ATTACKS], ids=[i for i, _, _ in ATTACKS]
)
def test_attack_fails_closed_through_querybase(
    gateway: Gateway, probe: None, user: str, statements: list[bytes], named: str | None
) -> None:
    """Rule: a function not known to be safe fails closed, named in the message (denied for read,
    held for propose); EXECUTE IMMEDIATE is classified by its text; nothing changes."""
    raw = connect_raw(gateway, user)
    answers = []
    try:
        for sql in statements:
            answers.append(raw_error(results(raw, sql)[-1][-1]))
    finally:
        raw.close()
    refused = [answer for answer in answers if answer[0] in (1142, 1227, 9001)]
    assert refused, answers
    if named is not None:
        assert named in refused[0][1], refused
        assert refused[0][0] == (1142 if user == "carol" else 9001), refused
    assert gateway.count("qbtest.fn_probe") == 0


@pytest.mark.parametrize(
    ("sql", "errno", "named"),
    [
        (b"SELECT BENCHMARK(1000, MD5('x'))", 1142, "BENCHMARK"),
        (b"SELECT LOAD_FILE('/etc/hostname')", 1227, "LOAD_FILE"),
        (b"SELECT `now`()", 1142, "now"),
        (b"SELECT SLEEP(0), NOW(), IFNULL(NULL, 1), JSON_OBJECT('a', 1), UUID() IS NOT NULL", 0, ""),
        (b"SELECT GET_LOCK('qb-adv', 0), RELEASE_LOCK('qb-adv')", 0, ""),
    ],
)
def test_builtins_by_category(gateway: Gateway, sql: bytes, errno: int, named: str) -> None:
    """Rule: vetted built-ins pass for a read user; BENCHMARK (not vetted) and LOAD_FILE (reads a
    server file: privileged) do not, and the message names them."""
    raw = connect_raw(gateway, "carol")
    try:
        got, message = raw_error(results(raw, sql)[-1][-1])
    finally:
        raw.close()
    assert got == errno, message
    assert named.lower() in message.lower()


def test_a_stored_function_the_source_trusts_is_a_read(gateway: Gateway, probe: None) -> None:
    """Class 6: `source set --trusted-functions` makes the named stored function callable in reads
    (names compared in lower case); the read-only session still stops its writes, and functions not
    named stay refused."""
    cli(gateway.config, "source", "set", ADV_SOURCE, "--trusted-functions", "QB_ADV_FN")
    try:
        raw = connect_raw(gateway, "carol")
        try:
            errno, message = raw_error(results(raw, b"SELECT qb_adv_fn()")[-1][-1])
            assert errno == 1792, message  # forwarded: ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
            errno, message = raw_error(results(raw, b"SELECT qbtest.qb_adv_fn()")[-1][-1])
            assert errno == 1142, message  # qualified: another name, not trusted
        finally:
            raw.close()
    finally:
        cli(gateway.config, "source", "set", ADV_SOURCE, "--trusted-functions", "")
    assert gateway.count("qbtest.fn_probe") == 0


def test_statement_text_does_not_reach_the_log(gateway: Gateway) -> None:
    """Statement text stays out of serve's log: sqlglot's "contains unsupported syntax" warning
    quotes the whole statement (found in the fuzz summary); QueryBase silences it."""
    marker = "qb-log-marker-7f3a"
    raw = connect_raw(gateway, "carol")
    try:
        results(raw, f"SET autocommit = 0SET autocommit = '{marker}'".encode())
    finally:
        raw.close()
    time.sleep(0.2)  # the log line, if any, is written by then
    assert marker not in gateway.serve.log

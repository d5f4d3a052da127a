"""The classifier reads text the way the server will (issue 10, class 4, MySQL side).

Session settings change how MariaDB tokenises a statement: sql_mode NO_BACKSLASH_ESCAPES and
ANSI_QUOTES, the client character set (SET NAMES, character_set_client), and MySQL's rules that
`--` starts a comment only before whitespace and that an executable comment ends at its first
`*/`. QueryBase reads sql_mode and the character set back from the server and classifies under
them; it refuses character sets whose multibyte characters can contain a backslash or quote byte,
and sql_modes with another grammar (ORACLE) for read/propose users; it refuses text the servers
could read two ways. Each attack is first run directly against MariaDB (as the source's own read
login, which can write) to prove it really changes the database there; through QueryBase the
database stays unchanged for `read` and `propose` users.
"""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.support.localdb import MariaDBServer
from tests.support.myfront import (
    ADV_LOGIN,
    ADV_PASSWORD,
    SCHEMA,
    Gateway,
    adversarial_gateway,
    connect_raw,
    raw_error,
    results,
    setup_items,
)

pytestmark = pytest.mark.integration

LIFT = b"SET SESSION TRANSACTION READ WRITE; INSERT INTO lex_probe VALUES (1)"
# (case id, statements that set the session up, the attack; all bytes)
ATTACKS = [
    (
        "no-backslash-escapes",
        [b"SET sql_mode = 'NO_BACKSLASH_ESCAPES'"],
        b"SELECT 'a\\' ; " + LIFT + b"; -- '",
    ),
    (
        "no-backslash-escapes-by-variable",
        [b"SET @m = 'NO_BACKSLASH_ESCAPES'", b"SET SESSION sql_mode = @m"],
        b'SELECT "a\\" ; ' + LIFT + b'; -- "',
    ),
    (
        "no-backslash-escapes-same-message",
        [],
        b"SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\\' ; " + LIFT + b"; -- '",
    ),
    (
        "ansi-quotes",
        [b"/*!40101 SET sql_mode = 'ANSI_QUOTES' */"],
        b'SELECT 1 AS "x\\"; ' + LIFT + b'; -- "',
    ),
    (
        "dash-dash-before-non-ascii",
        [],
        "SELECT 1 --\u00a0 FROM (SELECT 2 AS `\u00a0`) t; ".encode() + LIFT,
    ),
    (
        "skipped-executable-comment",
        [],
        b"SELECT 1 /*M!999999 '*/ ; " + LIFT + b"; -- '*/",
    ),
]


@pytest.fixture(scope="module")
def gateway(mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(mariadb_server)
    with adversarial_gateway(mariadb_server, tmp_path_factory.mktemp("adv-lex") / "home") as gw:
        yield gw


@pytest.fixture
def probe(gateway: Gateway) -> None:
    gateway.root_sql("DROP TABLE IF EXISTS lex_probe; CREATE TABLE lex_probe (id int)")


def direct(server: MariaDBServer) -> pymysql.Connection:
    """The source's read login straight to MariaDB, no QueryBase."""
    return pymysql.connect(
        host=server.host,
        port=server.port,
        user=ADV_LOGIN,
        password=ADV_PASSWORD,
        database=SCHEMA,
        autocommit=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
    )


def run_direct(server: MariaDBServer, statements: list[bytes]) -> None:
    with direct(server) as conn:
        for sql in statements:
            conn.query(sql)  # bytes go as they are
            while conn._result is not None and conn._result.has_next:
                conn.next_result()


@pytest.mark.parametrize(("setup", "attack"), [(s, a) for _, s, a in ATTACKS], ids=[i for i, _, _ in ATTACKS])
def test_attack_really_changes_mariadb(
    gateway: Gateway, probe: None, setup: list[bytes], attack: bytes
) -> None:
    """The proof: run directly, the attack's hidden statements run (the row appears)."""
    run_direct(gateway.server, [*setup, attack])
    assert gateway.count("qbtest.lex_probe") == 1


@pytest.mark.parametrize("user", ["carol", "alice"])
@pytest.mark.parametrize(("setup", "attack"), [(s, a) for _, s, a in ATTACKS], ids=[i for i, _, _ in ATTACKS])
def test_attack_is_refused_through_querybase(
    gateway: Gateway, probe: None, user: str, setup: list[bytes], attack: bytes
) -> None:
    """Rule: the classifier reads text as the server will (DESIGN.md §3 binding rules): the hidden
    statements are seen (denied, or held and not run) and the database is unchanged."""
    raw = connect_raw(gateway, user)
    try:
        for sql in setup:
            assert raw_error(results(raw, sql)[-1][-1]) == (0, ""), sql
        errno, message = raw_error(results(raw, attack)[-1][-1])
    finally:
        raw.close()
    assert errno in (1142, 1227, 9001), (errno, message)
    assert gateway.count("qbtest.lex_probe") == 0


def test_sjis_really_hides_a_statement(gateway: Gateway, probe: None) -> None:
    """The proof for character sets: in sjis, 0x95 0x5C is one character, so the backslash that a
    UTF-8 reader sees escaping the quote is not there and the INSERT runs."""
    run_direct(
        gateway.server,
        [b"SET NAMES sjis", b"SELECT LENGTH('\x95\\') AS n; INSERT INTO lex_probe VALUES (1); -- '"],
    )
    assert gateway.count("qbtest.lex_probe") == 1


@pytest.mark.parametrize("user", ["carol", "alice", "dave"])
@pytest.mark.parametrize(
    "statement",
    [
        b"SET NAMES sjis",
        b"/*!40101 SET NAMES 'gbk' */",
        b"SET CHARACTER SET big5",
        b"SET character_set_client = cp932",
        b"SET STATEMENT character_set_client = gb18030 FOR SELECT 1",
    ],
)
def test_unsafe_client_character_sets_are_refused(gateway: Gateway, user: str, statement: bytes) -> None:
    """Rule: client character sets whose multibyte characters can contain 0x5C are refused, for
    every user (QueryBase could not read their statements as the server does)."""
    raw = connect_raw(gateway, user)
    try:
        errno, message = raw_error(results(raw, statement)[-1][-1])
        assert errno == 1235, message
        assert "character set" in message
        assert raw_error(results(raw, b"SELECT @@character_set_client")[-1][-1]) == (0, "")
    finally:
        raw.close()


def test_unsafe_character_set_set_by_variable_ends_the_session(gateway: Gateway, probe: None) -> None:
    """Rule: a character set QueryBase cannot read that arrives by an expression (seen only when
    QueryBase reads the setting back) ends the session before another statement is read."""
    raw = connect_raw(gateway, "carol")
    try:
        assert raw_error(results(raw, b"SET @c = 'sjis'")[-1][-1]) == (0, "")
        first = results(raw, b"SET character_set_client = @c")[-1][-1]
        assert raw_error(first) == (0, "")  # the server's own answer, relayed
        got = raw.read()
        assert got is not None
        assert raw_error(got[1])[0] == 1235, got
        assert raw.ends(5)
    finally:
        raw.close()


@pytest.mark.parametrize("user", ["carol", "alice"])
def test_oracle_sql_mode_is_refused_below_write(gateway: Gateway, user: str) -> None:
    """Rule: sql_mode ORACLE gives MariaDB another grammar: refused for read/propose users."""
    raw = connect_raw(gateway, user)
    try:
        errno, message = raw_error(results(raw, b"SET sql_mode = 'ORACLE'")[-1][-1])
        assert errno == 1235, message
    finally:
        raw.close()


@pytest.mark.parametrize(
    "statements",
    [
        [b"SET @q = 'SET NAMES sjis'", b"EXECUTE IMMEDIATE @q"],
        [b"SET @q = 'SET NAMES sjis'", b"PREPARE s FROM @q", b"EXECUTE s"],
    ],
    ids=["execute-immediate", "prepare-from-variable"],
)
def test_unseen_character_set_ends_a_write_session(gateway: Gateway, statements: list[bytes]) -> None:
    """Rule: a `write` user may run text QueryBase cannot see, but a character set QueryBase cannot
    read is still caught when the setting is read back after it: the session ends (1235)."""
    raw = connect_raw(gateway, "dave")
    try:
        for sql in statements[:-1]:
            assert raw_error(results(raw, sql)[-1][-1]) == (0, ""), sql
        assert raw_error(results(raw, statements[-1])[-1][-1]) == (0, "")  # the server's answer
        got = raw.read()
        assert got is not None
        assert raw_error(got[1])[0] == 1235, got
        assert raw.ends(5)
    finally:
        raw.close()

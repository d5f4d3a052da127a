"""The literal-insensitive level of the classification caches never changes a verdict.

For every statement in the classifier table, a sibling with different constants is classified
first (priming the fingerprint level), then the statement itself; the cached answer must equal a
fresh `pg.classify`. Statements whose verdict depends on a constant are the point of the test.
"""

from __future__ import annotations

import re

import pytest

from policies import mysql, pg
from policies.cache import FingerprintLevel, MySQLFingerprintLevel
from policies.types import Kind
from tests.unit.test_policies_mysql import CASES as MYSQL_CASES
from tests.unit.test_policies_pg import CASES

_SWAPS = {"'off'": "'on'", "'on'": "'off'", "false": "true", "true": "false", " off": " on", " on": " off"}


def sibling(sql: str) -> str:
    """The same statement shape with other constants."""
    text = re.sub(r"\b\d+\b", lambda m: str(int(m.group()) + 7), sql)
    for old, new in _SWAPS.items():
        if old in text:
            return text.replace(old, new, 1)
    return text


@pytest.mark.parametrize("sql", [pytest.param(c.sql, id=c.case_id) for c in CASES])
def test_fingerprint_level_agrees_with_a_fresh_parse(sql: str) -> None:
    level = FingerprintLevel()
    level.classify(sibling(sql))
    assert level.classify(sql) == pg.classify(sql)


def test_literal_variants_share_one_parse() -> None:
    level = FingerprintLevel()
    for aid in range(50):
        got = level.classify(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
        assert got.kind is Kind.READ
    assert (level.hits, level.misses) == (49, 1)


@pytest.mark.parametrize(
    ("first", "second", "second_kind"),
    [
        ("SELECT set_config('default_transaction_read_only', 'on', false)",
         "SELECT set_config('default_transaction_read_only', 'off', false)", Kind.PRIVILEGED),
        ("SELECT 1; SET default_transaction_read_only = on",
         "SELECT 2; SET default_transaction_read_only = off", Kind.PRIVILEGED),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE true) DELETE FROM t", Kind.WRITE),
        ("SET transaction_read_only = on", "SET transaction_read_only = off", Kind.PRIVILEGED),
    ],
)  # fmt: skip
def test_constant_dependent_verdicts_are_not_shared(first: str, second: str, second_kind: Kind) -> None:
    level = FingerprintLevel()
    level.classify(first)
    assert level.classify(second).kind is second_kind


# ------------------------------------------------------------------------------------- MySQL

_MYSQL_SWAPS = {"'off'": "'on'", "'on'": "'off'", "= 0": "= 1", "= 1": "= 0", "'": "'x"}


def mysql_sibling(sql: str) -> str:
    text = re.sub(r"\b\d+\b", lambda m: str(int(m.group()) + 7), sql)
    for old, new in _MYSQL_SWAPS.items():
        if old in text:
            return text.replace(old, new, 1)
    return text


@pytest.mark.parametrize("sql", [pytest.param(c.sql, id=c.case_id) for c in MYSQL_CASES])
def test_mysql_fingerprint_level_agrees_with_a_fresh_parse(sql: str) -> None:
    level = MySQLFingerprintLevel()
    level.classify(mysql_sibling(sql))
    assert level.classify(sql) == mysql.classify(sql)


def test_mysql_literal_variants_share_one_parse() -> None:
    level = MySQLFingerprintLevel()
    for row in range(50):
        got = level.classify(f"SELECT c FROM sbtest1 WHERE id={row}")
        assert got.kind is Kind.READ
    assert (level.hits, level.misses) == (49, 1)
    level.classify("SELECT c FROM sbtest1 WHERE id='7'")  # a string literal is another shape
    assert level.misses == 2


@pytest.mark.parametrize(
    ("first", "second", "second_kind"),
    [
        ("SET SESSION transaction_read_only = 1", "SET SESSION transaction_read_only = 0", Kind.PRIVILEGED),
        ("PREPARE s FROM 'SELECT 1'", "PREPARE s FROM 'DELETE FROM t'", Kind.WRITE),
        ("SELECT 1; SET tx_read_only = 1", "SELECT 2; SET tx_read_only = 0", Kind.PRIVILEGED),
        ("/*!50000 SELECT 1 */", "/*!50000 DELETE FROM t */", Kind.WRITE),
        ("SELECT 1 /*!50000 , 2 */", "SELECT 1 /*!50000 ; DELETE FROM t */", Kind.WRITE),
    ],
)  # fmt: skip
def test_mysql_constant_dependent_verdicts_are_not_shared(first: str, second: str, second_kind: Kind) -> None:
    level = MySQLFingerprintLevel()
    level.classify(first)
    assert level.classify(second).kind is second_kind


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SELECT token FROM creds", "SELECT token FROM secret.creds"),
        ("SELECT token FROM secret.creds", "SELECT token FROM public.creds"),
        ('SELECT token FROM "Creds"', "SELECT token FROM creds"),
        ("SELECT lower(x) FROM t", "SELECT public.lower(x) FROM t"),
        ("SELECT lower(x) FROM t", 'SELECT "Lower"(x) FROM t'),
        ("SELECT data FROM t", 'SELECT U&"d\\0061ta" FROM t'),
    ],
)
def test_names_are_never_shared_between_texts(first: str, second: str) -> None:
    """Issue 10 class 7: the key keeps every name as written (schemas, quoting, unicode escapes),
    so a verdict that depends on a name (schema allowlist, function allowlist) is never reused."""
    level = FingerprintLevel()
    assert level.key(first) != level.key(second)
    level.classify(first)
    assert level.classify(second) == pg.classify(second)

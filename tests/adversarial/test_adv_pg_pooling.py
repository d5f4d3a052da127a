"""Transaction pooling, attacked: one client tries to reach what another left on a shared server
connection, or to leave something behind for the next one (docs/pooling.md, docs/security.md).

Source `tiny` has one upstream connection, so consecutive clients share it for certain; `shared`
has two and trusts a function that changes a setting behind QueryBase's back.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.wire.pg import protocol as pgp
from tests.support.localdb import PG_PASSWORDS, PostgresCluster
from tests.support.pgfront import TINY_SOURCE, Gateway, RawPg, cli, running_gateway, setup_items

pytestmark = pytest.mark.integration

SHARED = "shared"
SECRET_COLUMN = b"another_clients_column"


@pytest.fixture(scope="module")
def gateway(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    setup_items(pg_server)
    pg_server.execute_sql(
        "CREATE OR REPLACE FUNCTION qb_quiet_setting() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('work_mem', '13MB', false); RETURN 1; END $$;"
        "GRANT EXECUTE ON FUNCTION qb_quiet_setting() TO qb_reader;"
    )
    with running_gateway(pg_server, tmp_path_factory.mktemp("adv-pool") / "qb", tls_mode="disable") as gw:
        cli(
            gw.config,
            *("source", "add", SHARED, "--engine", "postgresql", "--host", pg_server.host),
            *("--port", str(pg_server.port), "--database", "qbtest", "--user", "qb_reader"),
            *("--password-env", "READ_PW", "--tls", "disable", "--pool-size", "2"),
            env={"READ_PW": PG_PASSWORDS["qb_reader"]},
        )
        cli(gw.config, "source", "set", SHARED, "--trusted-functions", "qb_quiet_setting")
        cli(gw.config, "grant", "readers", SHARED, "read")
        yield gw


def login(gw: Gateway, source: str, user: str = "carol") -> RawPg:
    raw = RawPg(gw.host, gw.port)
    raw.login(user, gw.passwords[user], source)
    return raw


def until_ready(raw: RawPg) -> list[tuple[bytes, bytes]]:
    seen = []
    while (msg := raw.read_message()) is not None:
        seen.append(msg)
        if msg[0] == b"Z":
            break
    return seen


def value(raw: RawPg, sql: str) -> bytes | None:
    rows, _ = raw.query(sql)
    return rows[0][0]


@pytest.mark.parametrize(
    "probe",
    [
        pgp.make_describe(b"S", b""),
        pgp.make_bind(b"", b"", [], [], []) + pgp.make_describe(b"P", b"") + pgp.make_execute(b""),
    ],
    ids=["describe-statement", "bind-describe-execute"],
)
def test_the_unnamed_statement_another_client_left_on_the_connection_stays_hidden(
    gateway: Gateway, probe: bytes
) -> None:
    """The server keeps the unnamed statement after it ran, and the connection goes to the next
    client: its text, parameters and columns must not reach that client."""
    # Both log in first (a login carries settings with a simple Query, which would drop the
    # unnamed statement); they have the same settings, so nothing runs between the two.
    with login(gateway, TINY_SOURCE) as first, login(gateway, TINY_SOURCE) as second:
        first.send(
            pgp.make_parse(b"", b"SELECT 'x'::text AS " + SECRET_COLUMN, [])
            + pgp.make_bind(b"", b"", [], [], [])
            + pgp.make_execute(b"")
            + pgp.SYNC
        )
        assert [t for t, _ in until_ready(first)] == [b"1", b"2", b"D", b"C", b"Z"]
        second.send(probe + pgp.SYNC)  # the one connection, now second's
        replies = until_ready(second)
        assert [t for t, _ in replies] == [b"E", b"Z"], replies
        assert pgp.parse_error_fields(replies[0][1])["C"] == "26000"
        assert not any(SECRET_COLUMN in body for _, body in replies)
        assert value(second, "SELECT 1") == b"1"  # and the session goes on


def test_settings_a_client_leaves_behind_do_not_reach_the_next(gateway: Gateway) -> None:
    with login(gateway, TINY_SOURCE) as first:
        defaults = (value(first, "SHOW statement_timeout"), value(first, "SHOW search_path"))
        first.query("SET statement_timeout = '1ms'")
        first.query("SELECT set_config('search_path', 'pg_catalog', false)")
        assert value(first, "SHOW statement_timeout") == b"1ms"
        with login(gateway, TINY_SOURCE) as second:
            for _ in range(3):
                assert (
                    value(second, "SHOW statement_timeout"),
                    value(second, "SHOW search_path"),
                ) == defaults
                assert value(second, "SELECT count(*) FROM items") == b"5"  # not cut off at 1 ms
            assert value(first, "SHOW statement_timeout") == b"1ms"


def test_a_setting_changed_inside_a_function_pins_instead_of_leaking(gateway: Gateway) -> None:
    """A trusted function changes work_mem where QueryBase cannot see it: the caller keeps its
    connection, and nobody else is served by it."""
    before = pins(gateway, "function")
    with login(gateway, SHARED) as caller, login(gateway, SHARED) as other:
        assert value(caller, "SELECT qb_quiet_setting()") == b"1"
        for _ in range(4):
            assert value(other, "SHOW work_mem") != b"13MB"
            assert value(caller, "SHOW work_mem") == b"13MB"
    assert pins(gateway, "function") == before + 1


@pytest.mark.parametrize(
    "attempt",
    [
        "SET default_transaction_read_only = off",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "RESET default_transaction_read_only",
    ],
)
def test_no_client_can_carry_read_write_to_a_pooled_connection(gateway: Gateway, attempt: str) -> None:
    with login(gateway, TINY_SOURCE) as attacker:
        with pytest.raises(Exception, match="42501"):
            attacker.query(attempt)
        with login(gateway, TINY_SOURCE) as victim:
            assert value(victim, "SHOW default_transaction_read_only") == b"on"
        assert value(attacker, "SHOW default_transaction_read_only") == b"on"


def pins(gw: Gateway, reason: str) -> float:
    text = httpx.get(f"{gw.serve.admin_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "querybase_pool_pins_total" and sample.labels.get("reason") == reason
    )

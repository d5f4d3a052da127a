"""A PostgreSQL source's schema allowlist on every table reference (issue 10, class 3).

Source `scoped` allows only `public`; schema `secret` holds a table the read login can read. No
statement of a `read` user may return its rows: qualified names, search_path changes (SET,
set_config, startup parameter), the extended protocol, a multi-statement Query.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proxy.wire.pg import protocol as pgp
from tests.support.localdb import PG_PASSWORDS, PostgresCluster
from tests.support.pgfront import ITEMS, Gateway, RawPg, ServerError, cli, running_gateway, setup_items

pytestmark = pytest.mark.integration

SCOPED = "scoped"


@pytest.fixture(scope="module", params=["transaction", "session"])
def gateway(
    pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """Every attack runs against a source in each pool mode."""
    setup_items(pg_server)
    pg_server.execute_sql(
        "DROP SCHEMA IF EXISTS secret CASCADE; CREATE SCHEMA secret; "
        "CREATE TABLE secret.creds (token text); INSERT INTO secret.creds VALUES ('s3cr3t-token'); "
        "CREATE TABLE secret.items (id int); "
        "GRANT USAGE ON SCHEMA secret TO qb_reader, qb_scram; "
        "GRANT SELECT ON ALL TABLES IN SCHEMA secret TO qb_reader, qb_scram;"
    )
    with running_gateway(
        pg_server, tmp_path_factory.mktemp("adv-schemas") / "qb", tls_mode="disable", pool_mode=request.param
    ) as gw:
        cli(
            gw.config,
            *("source", "add", SCOPED, "--engine", "postgresql", "--host", pg_server.host),
            *("--pool-mode", request.param),
            *("--port", str(pg_server.port), "--database", "qbtest", "--user", "qb_reader"),
            *("--password-env", "READ_PW", "--tls", "disable"),
            env={"READ_PW": PG_PASSWORDS["qb_reader"]},
        )
        cli(gw.config, "source", "set", SCOPED, "--schemas", "public")
        cli(gw.config, "grant", "readers", SCOPED, "read")
        cli(gw.config, "grant", "writers", SCOPED, "write")
        yield gw


def connect(gateway: Gateway, user: str = "carol", **extra: str) -> RawPg:
    raw = RawPg(gateway.host, gateway.port)
    raw.login(user, gateway.passwords[user], SCOPED, extra=extra or None)
    return raw


@pytest.mark.usefixtures("gateway")
def test_the_secret_is_readable_without_the_allowlist(pg_server: PostgresCluster) -> None:
    """Without QueryBase's allowlist the read login does read it: the tests below prove something."""
    with RawPg(pg_server.host, pg_server.port) as direct:
        direct.login("qb_reader", PG_PASSWORDS["qb_reader"], "qbtest")
        assert direct.query("SELECT token FROM secret.creds")[0] == [[b"s3cr3t-token"]]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT token FROM secret.creds",
        'SELECT token FROM "secret"."creds"',
        "SELECT token FROM qbtest.secret.creds",
        "SELECT * FROM items WHERE id IN (SELECT length(token) FROM secret.creds)",
        "WITH x AS (SELECT token FROM secret.creds) SELECT * FROM x",
        "SELECT 1; SELECT token FROM secret.creds",
        "COPY secret.creds TO STDOUT",
        "TABLE secret.creds",
        "SET search_path TO secret",
        "SET search_path = 'public, secret'",
        "SELECT set_config('search_path', 'secret', false)",
        "SELECT set_config('search_path', current_user, false)",
        "SELECT * FROM public.items, secret.creds",
    ],
)
@pytest.mark.parametrize("user", ["carol", "dave"])
def test_other_schemas_are_refused(gateway: Gateway, user: str, sql: str) -> None:
    """Rule: every schema a statement names must be allowed on the source, for every user."""
    with connect(gateway, user) as raw:
        with pytest.raises(ServerError) as caught:
            raw.query(sql)
        assert caught.value.sqlstate == "42501", caught.value.fields
        assert "secret" in caught.value.fields["M"] or "search_path" in caught.value.fields["M"]
        assert raw.query("SELECT count(*) FROM items")[0] == [[str(len(ITEMS)).encode()]]


def test_unqualified_names_resolve_in_the_allowed_schemas_only(gateway: Gateway) -> None:
    """Rule: QueryBase pins search_path to the allowlist, so `creds` is not found and `items` is
    public.items (secret.items exists too)."""
    with connect(gateway) as raw:
        assert raw.query("SHOW search_path")[0] == [[b'"public"']]
        with pytest.raises(ServerError) as caught:
            raw.query("SELECT token FROM creds")
        assert caught.value.sqlstate == "42P01"
        assert raw.query("SELECT count(*) FROM items")[0] == [[str(len(ITEMS)).encode()]]
        raw.query("SET search_path TO public")
        raw.query("RESET search_path")
        assert raw.query("SHOW search_path")[0] == [[b'"public"']]


def test_extended_protocol_reads_of_other_schemas_are_refused(gateway: Gateway) -> None:
    """Rule: the same check applies to the statement a portal runs."""
    with connect(gateway) as raw:
        raw.send(
            pgp.make_parse(b"", b"SELECT token FROM secret.creds", [])
            + pgp.make_bind(b"", b"", [], [], [])
            + pgp.make_execute(b"")
            + pgp.SYNC
        )
        seen = []
        while (msg := raw.read_message()) is not None and msg[0] != b"Z":
            seen.append(msg)
        assert [pgp.parse_error_fields(b)["C"] for t, b in seen if t == b"E"] == ["42501"]
        assert not [t for t, _ in seen if t == b"D"]


@pytest.mark.parametrize("extra", [{"search_path": "secret"}, {"options": "-c search_path=secret"}])
def test_startup_search_path_outside_the_allowlist_is_refused(
    gateway: Gateway, extra: dict[str, str]
) -> None:
    with RawPg(gateway.host, gateway.port) as raw, pytest.raises(ServerError) as caught:
        raw.login("carol", gateway.passwords["carol"], SCOPED, extra=extra)
    assert caught.value.sqlstate == "42501"

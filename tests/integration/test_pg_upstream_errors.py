"""An upstream that refuses QueryBase's own login shows up as 08001, never as the client's 28P01."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.support.localdb import PG_PASSWORDS, PostgresCluster, free_port
from tests.support.pgfront import Gateway, cli, running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(pg_server, tmp_path_factory.mktemp("qb-upstream"), users=["carol"]) as gw:
        common = ("--engine", "postgresql", "--host", "127.0.0.1", "--database", "qbtest", "--tls", "disable")
        cli(gw.config, "source", "add", "badpw", *common, "--port", str(pg_server.port),
            "--user", "qb_reader", "--password-env", "PW", env={"PW": "not-the-password"})  # fmt: skip
        cli(gw.config, "source", "add", "gone", *common, "--port", str(free_port()),
            "--user", "qb_reader", "--no-password")  # fmt: skip
        for source in ("badpw", "gone"):
            cli(gw.config, "grant", "readers", source, "read")
        yield gw


@pytest.mark.parametrize(
    ("source", "message"),
    [("badpw", "password authentication failed"), ("gone", "cannot connect to upstream")],
)
async def test_upstream_refusal_is_08001(gateway: Gateway, source: str, message: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as caught:
        await asyncpg.connect(
            host=gateway.host, port=gateway.port, user="carol", password=gateway.passwords["carol"],
            database=source, ssl=False,
        )  # fmt: skip
    assert caught.value.sqlstate == "08001"
    assert message in str(caught.value)
    # The client's own password was right: nothing counts against carol's login limit.
    with psycopg.connect(gateway.conninfo("carol")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("tls", ["require", "prefer"])
def test_upstream_over_tls(gateway: Gateway, pg_server: PostgresCluster, tls: str) -> None:
    name = f"tls_{tls}"
    cli(gateway.config, "source", "add", name, "--engine", "postgresql", "--host", "127.0.0.1",
        "--port", str(pg_server.port), "--database", "qbtest", "--user", "qb_reader",
        "--password-env", "PW", "--tls", tls, env={"PW": PG_PASSWORDS["qb_reader"]})  # fmt: skip
    cli(gateway.config, "grant", "readers", name, "read")
    with psycopg.connect(gateway.conninfo("carol", dbname=name)) as conn:
        # The upstream session QueryBase opened for carol is encrypted.
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)

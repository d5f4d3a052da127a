"""Per-user PostgreSQL login methods: scram (default), md5, password (cleartext, over TLS only)."""

from __future__ import annotations

import contextlib
import sqlite3
import ssl
from collections.abc import Iterator

import asyncpg
import pytest

from proxy.wire.pg.protocol import AuthCode, make_startup, parse_auth
from tests.support.localdb import PostgresCluster
from tests.support.pgfront import Gateway, RawPg, cli, running_gateway

pytestmark = pytest.mark.integration

MD5_PW = "md5-user-password"
CLEAR_PW = "cleartext-user-password"


@pytest.fixture(scope="module")
def gateway(pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(pg_server, tmp_path_factory.mktemp("qb-auth"), users=["carol"]) as gw:
        env = {"MD5_PW": MD5_PW, "CLEAR_PW": CLEAR_PW}
        cli(gw.config, "user", "add", "mona", "--pg-auth", "md5", "--password-env", "MD5_PW", env=env)
        cli(gw.config, "user", "add", "cleo", "--pg-auth", "password", "--password-env", "CLEAR_PW", env=env)
        for user in ("mona", "cleo"):
            cli(gw.config, "group", "member", "add", "readers", user)
        yield gw


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _login(gw: Gateway, user: str, password: str, *, tls: bool) -> str:
    conn = await asyncpg.connect(
        host=gw.host, port=gw.port, user=user, password=password, database="shop",
        ssl=_no_verify() if tls else False,
    )  # fmt: skip
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_md5_user_logs_in_with_md5(gateway: Gateway, tls: bool) -> None:
    assert await _login(gateway, "mona", MD5_PW, tls=tls) == "qb_reader"
    with pytest.raises(asyncpg.InvalidPasswordError, match='password authentication failed for user "mona"'):
        await _login(gateway, "mona", "not-" + MD5_PW, tls=tls)


async def test_cleartext_user_over_tls(gateway: Gateway) -> None:
    assert await _login(gateway, "cleo", CLEAR_PW, tls=True) == "qb_reader"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _login(gateway, "cleo", "not-" + CLEAR_PW, tls=True)


async def test_cleartext_user_without_tls_gets_scram(gateway: Gateway) -> None:
    # The password never crosses the wire in clear: without TLS the same user logs in with SCRAM.
    assert await _login(gateway, "cleo", CLEAR_PW, tls=False) == "qb_reader"


@pytest.mark.parametrize(("user", "code"), [("mona", AuthCode.MD5_PASSWORD), ("cleo", AuthCode.SASL)])
def test_the_server_asks_for_the_users_method(gateway: Gateway, user: str, code: int) -> None:
    with RawPg(gateway.host, gateway.port) as raw:
        raw.send(make_startup({"user": user, "database": "shop"}))
        assert parse_auth(raw.expect(b"R"))[0] == code


def _users(gateway: Gateway, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(gateway.config.parent / "querybase.db")) as db:
        return db.execute(sql).fetchall()


def test_the_md5_verifier_is_kept_only_for_md5_users(gateway: Gateway) -> None:
    rows = dict(
        _users(gateway, "SELECT name, md5_verifier FROM users WHERE name IN ('mona', 'cleo', 'carol')")
    )
    assert str(rows["mona"]).startswith("md5")
    assert rows["cleo"] is None
    assert rows["carol"] is None
    # Switching mona back to SCRAM drops her md5 verifier.
    env = {"PW": MD5_PW}
    cli(gateway.config, "user", "passwd", "mona", "--pg-auth", "scram", "--password-env", "PW", env=env)
    assert _users(gateway, "SELECT md5_verifier, pg_auth FROM users WHERE name = 'mona'") == [(None, "scram")]

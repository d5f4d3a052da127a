"""The `querybase` CLI end to end on a real store.

Most verbs run through `proxy.cli.main` in this process (the same code path, ten times faster than
a fresh interpreter per call); `init`, `QUERYBASE_CONFIG` and argv handling run as subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.localdb import MARIADB_PASSWORDS, PG_PASSWORDS, MariaDBServer, PostgresCluster, free_port
from tests.support.querybase import (
    ADMIN_PASSWORD,
    base_env,
    init_home,
    run_cli,
    run_cli_in_process,
    write_config,
)

pytestmark = pytest.mark.integration

READ_SECRET = "read-Secret-4f1c9a"
WRITE_SECRET = "write-Secret-77ab02"
USER_SECRET = "alice-Secret-0d9e33"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return init_home(tmp_path / "qb")


def ok(config: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    result = run_cli_in_process(config, *args, stdin=stdin, env=env)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    assert result.stderr == ""
    return result.stdout


def fails(config: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """The command exits 1 with exactly one `querybase: error: …` line and no traceback."""
    result = run_cli_in_process(config, *args, stdin=stdin, env=env)
    assert result.returncode == 1, f"{args}: rc={result.returncode} {result.stdout} {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("querybase: error: ")
    return lines[0]


def test_init_creates_everything_and_is_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "dir"
    config = home / "querybase.toml"
    result = run_cli(config, "init", env={"QUERYBASE_ADMIN_PASSWORD": ADMIN_PASSWORD})
    assert result.returncode == 0, result.stderr
    assert config.exists()
    key = home / "querybase.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "tls" / "server.key").stat().st_mode) == 0o600
    assert (home / "tls" / "server.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (home / "querybase.db").exists()
    assert "created 'admin'" in result.stdout
    assert ADMIN_PASSWORD not in result.stdout
    key_before = key.read_bytes()

    again = run_cli(config, "init")
    assert again.returncode == 0, again.stderr
    assert "'admin' exists, unchanged" in again.stdout
    assert key.read_bytes() == key_before
    users = json.loads(ok(config, "user", "list", "--json"))
    assert [(u["name"], u["admin"], u["active"]) for u in users] == [("admin", True, True)]


def test_init_without_password_generates_one_and_prints_it_once(tmp_path: Path) -> None:
    config = write_config(tmp_path / "qb")
    result = run_cli(config, "init")  # stdin is not a terminal, no QUERYBASE_ADMIN_PASSWORD
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("admin user:"))
    assert "shown only once" in line
    again = run_cli(config, "init")
    assert "shown only once" not in again.stdout


def test_init_uses_secret_key_from_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path / "qb")
    env = {"QUERYBASE_SECRET_KEY": "A" * 43, "QUERYBASE_ADMIN_PASSWORD": ADMIN_PASSWORD}
    assert run_cli(config, "init", env=env).returncode == 0
    assert not (config.parent / "querybase.key").exists()
    ok(
        config,
        "source",
        "add",
        "s",
        "--engine",
        "postgresql",
        "--host",
        "db",
        "--database",
        "d",
        "--user",
        "u",
        "--password-env",
        "PW",
        env={**env, "PW": READ_SECRET},
    )
    # The same sealed password does not open under another key.
    other = fails(config, "source", "test", "s", env={"QUERYBASE_SECRET_KEY": "B" * 43})
    assert "wrong key or modified ciphertext" in other


def test_users_round_trip(config: Path) -> None:
    assert "created" in ok(config, "user", "add", "alice", "--password-stdin", stdin=USER_SECRET + "\n")
    ok(config, "user", "add", "root2", "--admin", "--password-env", "PW", env={"PW": USER_SECRET})
    users = {u["name"]: u for u in json.loads(ok(config, "user", "list", "--json"))}
    assert users["alice"]["admin"] is False
    assert users["root2"]["admin"] is True
    table = ok(config, "user", "list")
    assert table.splitlines()[0].split() == ["NAME", "ADMIN", "ACTIVE", "GROUPS", "PG_AUTH", "CREATED"]

    ok(config, "user", "disable", "alice")
    users = {u["name"]: u for u in json.loads(ok(config, "user", "list", "--json"))}
    assert users["alice"]["active"] is False
    ok(config, "user", "enable", "alice")
    users = {u["name"]: u for u in json.loads(ok(config, "user", "list", "--json"))}
    assert users["alice"]["active"] is True
    ok(config, "user", "passwd", "alice", "--password-stdin", stdin="another-password\n")

    assert "already exists" in fails(config, "user", "add", "alice", "--password-stdin", stdin="x" * 12)
    assert "too short" in fails(config, "user", "add", "bob", "--password-stdin", stdin="short\n")
    assert "invalid user name" in fails(config, "user", "add", "9lives", "--password-stdin", stdin="x" * 9)
    assert "no user named 'ghost'" in fails(config, "user", "disable", "ghost")
    assert "no user named 'ghost'" in fails(
        config, "user", "passwd", "ghost", "--password-stdin", stdin="x" * 9
    )
    assert "standard input is empty" in fails(config, "user", "add", "carol", "--password-stdin")
    assert "PW_MISSING is not set" in fails(config, "user", "add", "carol", "--password-env", "PW_MISSING")
    assert "stdin is not a terminal" in fails(config, "user", "add", "carol")


def test_password_is_never_accepted_from_argv(config: Path) -> None:
    result = run_cli(config, "user", "add", "dave", "--password", USER_SECRET)
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr or "ambiguous option" in result.stderr


def test_groups_and_members(config: Path) -> None:
    ok(config, "user", "add", "alice", "--password-stdin", stdin=USER_SECRET)
    ok(config, "group", "add", "analysts")
    ok(config, "group", "member", "add", "analysts", "alice")
    groups = json.loads(ok(config, "group", "list", "--json"))
    assert groups == [{"name": "analysts", "members": ["alice"]}]
    users = {u["name"]: u for u in json.loads(ok(config, "user", "list", "--json"))}
    assert users["alice"]["groups"] == ["analysts"]
    assert "already a member" in fails(config, "group", "member", "add", "analysts", "alice")
    assert "already exists" in fails(config, "group", "add", "analysts")
    assert "no group named 'nope'" in fails(config, "group", "member", "add", "nope", "alice")
    ok(config, "group", "member", "remove", "analysts", "alice")
    assert json.loads(ok(config, "group", "list", "--json")) == [{"name": "analysts", "members": []}]
    assert "is not a member" in fails(config, "group", "member", "remove", "analysts", "alice")


def _add_source(config: Path, name: str = "shop", *extra: str) -> str:
    return ok(
        config,
        "source",
        "add",
        name,
        "--engine",
        "postgresql",
        "--host",
        "db.internal",
        "--port",
        "5433",
        "--database",
        "shop",
        "--user",
        "reader",
        "--password-env",
        "RPW",
        "--write-user",
        "writer",
        "--write-password-env",
        "WPW",
        *extra,
        env={"RPW": READ_SECRET, "WPW": WRITE_SECRET},
    )


def test_sources_and_grants_round_trip(config: Path) -> None:
    _add_source(config, "shop", "--tls", "require", "--pool-size", "4")
    ok(
        config,
        "source",
        "add",
        "crm",
        "--engine",
        "mysql",
        "--host",
        "10.0.0.5",
        "--database",
        "crm",
        "--user",
        "ro",
        "--no-password",
    )
    sources = {s["name"]: s for s in json.loads(ok(config, "source", "list", "--json"))}
    assert sources["shop"]["engine"] == "postgresql"
    assert sources["shop"]["port"] == 5433
    assert sources["shop"]["tls"] == "require"
    assert sources["shop"]["pool_size"] == 4
    assert sources["shop"]["read_password_set"] is True
    assert sources["shop"]["write_user"] == "writer"
    assert sources["crm"]["port"] == 3306  # the engine's default
    assert sources["crm"]["read_password_set"] is False

    ok(config, "group", "add", "analysts")
    ok(config, "grant", "analysts", "shop", "propose")
    ok(config, "grant", "analysts", "shop", "approve")
    ok(config, "grant", "analysts", "crm", "read")
    grants = json.loads(ok(config, "grant", "list", "--json"))
    assert grants == [
        {"group": "analysts", "source": "crm", "level": "read"},
        {"group": "analysts", "source": "shop", "level": "approve"},
        {"group": "analysts", "source": "shop", "level": "propose"},
    ]
    shown = json.loads(ok(config, "source", "show", "shop", "--json"))
    assert {(g["group"], g["level"]) for g in shown["grants"]} == {
        ("analysts", "propose"),
        ("analysts", "approve"),
    }
    assert "grants:" in ok(config, "source", "show", "shop")

    assert "already has propose" in fails(config, "grant", "analysts", "shop", "propose")
    assert "no source named 'nope'" in fails(config, "grant", "analysts", "nope", "read")
    ok(config, "revoke", "analysts", "shop", "approve")
    assert "has no approve grant" in fails(config, "revoke", "analysts", "shop", "approve")
    bad_level = run_cli_in_process(config, "grant", "analysts", "shop", "superuser")
    assert bad_level.returncode == 2
    assert "invalid choice" in bad_level.stderr
    assert "usage: querybase grant" in fails(config, "grant", "analysts", "shop")

    ok(config, "source", "remove", "shop")
    assert [g["source"] for g in json.loads(ok(config, "grant", "list", "--json"))] == ["crm"]
    assert "no source named 'shop'" in fails(config, "source", "show", "shop")
    assert "already exists" in fails(
        config,
        "source",
        "add",
        "crm",
        "--engine",
        "mysql",
        "--host",
        "h",
        "--database",
        "d",
        "--user",
        "u",
        "--no-password",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "invalid port 70000"),
        (["--pool-size", "0"], "invalid pool size 0"),
        (["--host", "bad host"], "invalid host"),
    ],
)
def test_source_add_rejects_bad_values(config: Path, args: list[str], message: str) -> None:
    base = [
        "source",
        "add",
        "s",
        "--engine",
        "postgresql",
        "--host",
        "h",
        "--database",
        "d",
        "--user",
        "u",
        "--no-password",
    ]
    # argparse keeps the last occurrence of an option, so appending overrides the defaults above.
    assert message in fails(config, *base, *args)


def test_source_add_usage_errors_exit_2(config: Path) -> None:
    result = run_cli_in_process(
        config, "source", "add", "s", "--engine", "oracle", "--host", "h", "--database", "d", "--user", "u"
    )
    assert result.returncode == 2
    assert "invalid choice: 'oracle'" in result.stderr


def test_no_secret_in_output_or_store_file(config: Path) -> None:
    ok(config, "user", "add", "alice", "--password-stdin", stdin=USER_SECRET)
    _add_source(config)
    outputs = [
        ok(config, *args)
        for args in (
            ["source", "list"],
            ["source", "list", "--json"],
            ["source", "show", "shop"],
            ["source", "show", "shop", "--json"],
            ["user", "list"],
            ["user", "list", "--json"],
            ["group", "list", "--json"],
            ["grant", "list", "--json"],
            ["audit", "verify", "--json"],
        )
    ]
    for text in outputs:
        for secret in (READ_SECRET, WRITE_SECRET, USER_SECRET, "v1:"):
            assert secret not in text
    store_bytes = b"".join(p.read_bytes() for p in config.parent.glob("querybase.db*"))
    assert b"shop" in store_bytes  # the file really holds the catalog
    for secret in (READ_SECRET, WRITE_SECRET, USER_SECRET):
        assert secret.encode() not in store_bytes


def test_audit_verify_counts_catalog_changes(config: Path) -> None:
    ok(config, "group", "add", "g1")
    ok(config, "group", "add", "g2")
    report = json.loads(ok(config, "audit", "verify", "--json"))
    assert report["ok"] is True
    assert report["events"] == 3  # admin user from init, two groups
    assert ok(config, "audit", "verify").strip() == "audit chain intact: 3 events"


def test_commands_refuse_an_uninitialised_store(tmp_path: Path) -> None:
    config = write_config(tmp_path / "qb")
    assert "is not initialised: run `querybase init`" in fails(config, "user", "list")


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "qb", extra="[bogus]\nx = 1\n")
    assert "bogus: unknown section" in fails(config, "user", "list")
    config = write_config(tmp_path / "qb2")
    assert "postgres.listen" in fails(config, "user", "list", env={"QUERYBASE_POSTGRES__LISTEN": "nowhere"})
    assert "does not exist" in fails(tmp_path / "missing.toml", "user", "list")


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    # Without --config, QUERYBASE_CONFIG names the file.
    env = base_env({"QUERYBASE_CONFIG": str(config)})
    listed = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "user", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["name"] == "admin"


def test_source_test_against_real_servers(
    config: Path, pg_server: PostgresCluster, mariadb_server: MariaDBServer
) -> None:
    env = {
        "PG_PW": PG_PASSWORDS["qb_reader"],
        "PG_WPW": PG_PASSWORDS["qb_scram"],
        "MY_PW": MARIADB_PASSWORDS["qb_reader"],
        "BAD": "not-the-password",
    }
    ok(
        config,
        "source",
        "add",
        "pg",
        "--engine",
        "postgresql",
        "--host",
        pg_server.host,
        "--port",
        str(pg_server.port),
        "--database",
        "qbtest",
        "--user",
        "qb_reader",
        "--password-env",
        "PG_PW",
        "--write-user",
        "qb_scram",
        "--write-password-env",
        "PG_WPW",
        "--tls",
        "disable",
        env=env,
    )
    ok(
        config,
        "source",
        "add",
        "my",
        "--engine",
        "mysql",
        "--host",
        mariadb_server.host,
        "--port",
        str(mariadb_server.port),
        "--database",
        "qbtest",
        "--user",
        "qb_reader",
        "--password-env",
        "MY_PW",
        "--tls",
        "disable",
        env=env,
    )
    ok(
        config,
        "source",
        "add",
        "pgbad",
        "--engine",
        "postgresql",
        "--host",
        pg_server.host,
        "--port",
        str(pg_server.port),
        "--database",
        "qbtest",
        "--user",
        "qb_reader",
        "--password-env",
        "BAD",
        "--tls",
        "disable",
        env=env,
    )
    ok(
        config,
        "source",
        "add",
        "mybad",
        "--engine",
        "mysql",
        "--host",
        mariadb_server.host,
        "--port",
        str(mariadb_server.port),
        "--database",
        "qbtest",
        "--user",
        "qb_reader",
        "--password-env",
        "BAD",
        "--tls",
        "disable",
        env=env,
    )

    pg = ok(config, "source", "test", "pg")
    assert f"pg read login 'qb_reader': ok: PostgreSQL {pg_server.version}" in pg
    assert "pg write login 'qb_scram': ok" in pg
    my = json.loads(ok(config, "source", "test", "my", "--json"))
    assert my["logins"][0]["ok"] is True
    assert mariadb_server.version in my["logins"][0]["detail"]
    assert my["boundary"]["login"] == "qb_reader"

    bad = run_cli_in_process(config, "source", "test", "pgbad")
    assert bad.returncode == 1
    assert "FAILED: login refused: password authentication failed" in bad.stdout
    assert "(SQLSTATE 28P01)" in bad.stdout
    bad = run_cli_in_process(config, "source", "test", "mybad")
    assert bad.returncode == 1
    assert "FAILED: login refused: Access denied" in bad.stdout
    assert "(errno 1045)" in bad.stdout
    for text in (pg, bad.stdout):
        assert PG_PASSWORDS["qb_reader"] not in text
    # When QueryBase's own login fails, the report says whether a driver gets in with the same
    # settings (then the fault is QueryBase's, not the source definition's).
    for name, expected in (("pg", "asyncpg logs in"), ("my", "PyMySQL logs in"), ("pgbad", None)):
        opinion = asyncio.run(_driver_opinion_of(config, name))
        if expected is None:
            assert opinion == "QueryBase's reason"
        else:
            assert opinion == (
                f"QueryBase's reason (but {expected} with the same settings: "
                "please report this QueryBase bug)"
            )


async def _driver_opinion_of(config: Path, source: str) -> str:
    from proxy.config import load_settings
    from proxy.store.catalog import Catalog
    from proxy.store.crypto import SecretBox, load_key
    from proxy.store.db import Store
    from proxy.upstream.probe import _driver_opinion

    settings = load_settings(config, {})
    store = Store(settings.store.url)
    try:
        creds = await Catalog(store, SecretBox(load_key(settings, {}))).source_credentials(source)
        return await _driver_opinion(creds, creds.view.read_user, creds.read_password, "QueryBase's reason")
    finally:
        await store.close()


def test_source_test_reports_unreachable_host(config: Path) -> None:
    port = str(free_port())  # nothing listens there
    ok(
        config,
        "source",
        "add",
        "gone",
        "--engine",
        "postgresql",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--database",
        "d",
        "--user",
        "u",
        "--no-password",
        "--tls",
        "disable",
    )
    result = run_cli_in_process(config, "source", "test", "gone")
    assert result.returncode == 1
    assert "FAILED" in result.stdout
    assert "Connect call failed" in result.stdout or "refused" in result.stdout.lower()

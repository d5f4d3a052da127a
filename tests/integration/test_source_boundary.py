"""`source test` says what a source's read login could do without QueryBase (docs/source-boundary.md).

Real PostgreSQL and MariaDB: a least-privilege login made exactly as the docs say has no findings;
logins with INSERT, ownership, superuser, a privileged predefined role, a SECURITY DEFINER function,
an inherited grant, FILE, SUPER or a role holding INSERT get the finding that names it. The last
finding is kept with the source and shown by `source show` (CLI and API).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.changes import Api
from tests.support.localdb import MariaDBServer, PostgresCluster
from tests.support.querybase import init_home, run_cli_in_process, start_serve

pytestmark = pytest.mark.integration

PG_DB = "qb_boundary"
MY_DB = "qb_boundary"
PASSWORD = "bd-Secret-pw-42"

# The docs' least-privilege recipe (docs/source-boundary.md), with the names filled in.
PG_LEAST = f"""
CREATE ROLE bd_least LOGIN PASSWORD '{PASSWORD}';
GRANT CONNECT ON DATABASE {PG_DB} TO bd_least;
GRANT USAGE ON SCHEMA app TO bd_least;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO bd_least;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO bd_least;
"""

PG_SETUP = rf"""
DROP SCHEMA IF EXISTS app CASCADE;
DROP SCHEMA IF EXISTS fn CASCADE;
DO $$
DECLARE r text;
BEGIN  -- roles are the cluster's: an earlier run's go first
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'bd\_%' LOOP
        EXECUTE format('DROP OWNED BY %I', r);
        EXECUTE format('DROP ROLE %I', r);
    END LOOP;
END $$;
CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, name text);
CREATE TABLE app.orders (id int PRIMARY KEY);
{PG_LEAST}
CREATE ROLE bd_insert LOGIN PASSWORD '{PASSWORD}';
GRANT CONNECT ON DATABASE {PG_DB} TO bd_insert;
GRANT USAGE ON SCHEMA app TO bd_insert;
GRANT SELECT, INSERT ON app.items TO bd_insert;
CREATE ROLE bd_owner LOGIN PASSWORD '{PASSWORD}';
GRANT USAGE ON SCHEMA app TO bd_owner;
CREATE TABLE app.owned (id int);
ALTER TABLE app.owned OWNER TO bd_owner;
CREATE ROLE bd_wad LOGIN PASSWORD '{PASSWORD}';
GRANT pg_write_all_data TO bd_wad;
CREATE ROLE bd_super LOGIN SUPERUSER PASSWORD '{PASSWORD}';
CREATE SCHEMA fn;
CREATE FUNCTION fn.wipe() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM app.items';
CREATE ROLE bd_fn LOGIN PASSWORD '{PASSWORD}';
GRANT USAGE ON SCHEMA app, fn TO bd_fn;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO bd_fn;
CREATE ROLE bd_writers NOLOGIN;
GRANT USAGE ON SCHEMA app TO bd_writers;
GRANT UPDATE ON app.orders TO bd_writers;
CREATE ROLE bd_inherit LOGIN PASSWORD '{PASSWORD}' IN ROLE bd_writers;
"""

PG_ROLES = ("bd_least", "bd_insert", "bd_owner", "bd_wad", "bd_super", "bd_fn", "bd_inherit")

MY_LEAST = f"""
CREATE USER bd_least@'%' IDENTIFIED BY '{PASSWORD}';
GRANT SELECT, SHOW VIEW ON {MY_DB}.* TO bd_least@'%';
"""

MY_SETUP = f"""
DROP USER IF EXISTS bd_least@'%', bd_insert@'%', bd_file@'%', bd_super@'%', bd_role@'%';
DROP ROLE IF EXISTS bd_inserter;
DROP DATABASE IF EXISTS {MY_DB};
CREATE DATABASE {MY_DB};
CREATE TABLE {MY_DB}.items (id INT PRIMARY KEY, name TEXT);
{MY_LEAST}
CREATE USER bd_insert@'%' IDENTIFIED BY '{PASSWORD}';
GRANT SELECT, INSERT ON {MY_DB}.items TO bd_insert@'%';
CREATE USER bd_file@'%' IDENTIFIED BY '{PASSWORD}';
GRANT SELECT ON {MY_DB}.* TO bd_file@'%';
GRANT FILE ON *.* TO bd_file@'%';
CREATE USER bd_super@'%' IDENTIFIED BY '{PASSWORD}';
GRANT SELECT ON {MY_DB}.* TO bd_super@'%';
GRANT SUPER ON *.* TO bd_super@'%';
CREATE ROLE bd_inserter;
GRANT INSERT ON {MY_DB}.* TO bd_inserter;
CREATE USER bd_role@'%' IDENTIFIED BY '{PASSWORD}';
GRANT SELECT ON {MY_DB}.* TO bd_role@'%';
GRANT bd_inserter TO bd_role@'%';
"""

MY_USERS = ("bd_least", "bd_insert", "bd_file", "bd_super", "bd_role")


@pytest.fixture(scope="module")
def config(
    pg_server: PostgresCluster, mariadb_server: MariaDBServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    if not pg_server.execute_sql(f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'", "postgres").strip():
        pg_server.execute_sql(f"CREATE DATABASE {PG_DB}", "postgres")
    pg_server.execute_sql(PG_SETUP, PG_DB)
    mariadb_server.execute_sql(MY_SETUP, database="mysql")
    config = init_home(tmp_path_factory.mktemp("qb-boundary"))
    env = {"PW": PASSWORD}
    for role in PG_ROLES:
        ok(config, "source", "add", f"pg_{role}", "--engine", "postgresql", "--host", pg_server.host,
           "--port", str(pg_server.port), "--database", PG_DB, "--user", role, "--password-env", "PW",
           "--tls", "disable", env=env)  # fmt: skip
    ok(config, "source", "add", "pg_untested", "--engine", "postgresql", "--host", pg_server.host,
       "--database", PG_DB, "--user", "bd_least", "--no-password", "--tls", "disable")  # fmt: skip
    for user in MY_USERS:
        ok(config, "source", "add", f"my_{user}", "--engine", "mysql", "--host", mariadb_server.host,
           "--port", str(mariadb_server.port), "--database", MY_DB, "--user", user, "--password-env", "PW",
           "--tls", "disable", env=env)  # fmt: skip
    return config


def ok(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = run_cli_in_process(config, *args, env=env)
    assert result.returncode == 0, f"querybase {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def source_test_json(config: Path, source: str) -> dict[str, Any]:
    """`source test --json`: the logins and the boundary as stored."""
    found: dict[str, Any] = json.loads(ok(config, "source", "test", source, "--json"))
    assert [login["ok"] for login in found["logins"]] == [True], found
    return found


def findings(config: Path, source: str) -> set[tuple[str, str, str]]:
    """(code, severity, what) of every finding; the check itself must have run."""
    boundary = source_test_json(config, source)["boundary"]
    assert boundary["error"] is None, boundary
    return {(f["code"], f["severity"], f["what"]) for f in boundary["findings"]}


# -------------------------------------------------------------------------------- PostgreSQL


def test_pg_least_privilege_login_has_no_findings(config: Path) -> None:
    assert findings(config, "pg_bd_least") == set()
    out = ok(config, "source", "test", "pg_bd_least")
    assert "pg_bd_least boundary: read login 'bd_least' could not write on its own: no findings" in out


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("bd_insert", {("table_write", "high", "INSERT on 1 table: app.items")}),
        ("bd_owner", {("owner", "high", "owns 1 table: app.owned")}),
        ("bd_super", {("superuser", "high", "superuser")}),
        (
            "bd_fn",
            {
                (
                    "security_definer",
                    "high",
                    "EXECUTE on 1 SECURITY DEFINER function: fn.wipe() (owner qb_admin)",
                )
            },
        ),
        ("bd_inherit", {("table_write", "high", "UPDATE on 1 table: app.orders")}),
    ],
)
def test_pg_findings_name_what_the_login_holds(
    config: Path, role: str, expected: set[tuple[str, str, str]]
) -> None:
    assert findings(config, f"pg_{role}") == expected


def test_pg_member_of_pg_write_all_data(config: Path) -> None:
    found = findings(config, "pg_bd_wad")
    assert ("privileged_role", "high", "member of pg_write_all_data") in found
    # The role's effect, table by table, is reported as well.
    assert ("table_write", "high", "INSERT on 3 tables: app.items, app.orders, app.owned") in found
    assert ("table_write", "high", "DELETE on 3 tables: app.items, app.orders, app.owned") in found


def test_the_finding_is_kept_and_shown(config: Path, pg_server: PostgresCluster) -> None:
    source_test_json(config, "pg_bd_insert")
    shown = json.loads(ok(config, "source", "show", "pg_bd_insert", "--json"))["boundary"]
    assert shown["login"] == "bd_insert"
    assert shown["checked_at"].endswith("+00:00")
    assert [(f["code"], f["what"]) for f in shown["findings"]] == [
        ("table_write", "INSERT on 1 table: app.items")
    ]
    assert "with no change request or approval" in shown["findings"][0]["why"]
    text = ok(config, "source", "show", "pg_bd_insert")
    assert "boundary:               read login 'bd_insert' could act without QueryBase: 1 finding" in text
    assert "[high] INSERT on 1 table: app.items" in text
    # The grant is revoked: the next test finds nothing, and that is what is kept.
    pg_server.execute_sql("REVOKE INSERT ON app.items FROM bd_insert", PG_DB)
    try:
        assert findings(config, "pg_bd_insert") == set()
        shown = json.loads(ok(config, "source", "show", "pg_bd_insert", "--json"))["boundary"]
        assert shown["findings"] == []
    finally:
        pg_server.execute_sql("GRANT INSERT ON app.items TO bd_insert", PG_DB)
    # A failed login (wrong password) does not erase the last real finding.
    ok(config, "source", "set", "pg_bd_insert", "--password-env", "PW", env={"PW": "wrong-password"})
    failed = run_cli_in_process(config, "source", "test", "pg_bd_insert")
    assert failed.returncode == 1
    assert "boundary: not checked: the read login failed" in failed.stdout
    assert json.loads(ok(config, "source", "show", "pg_bd_insert", "--json"))["boundary"]["findings"] == []
    ok(config, "source", "set", "pg_bd_insert", "--password-env", "PW", env={"PW": PASSWORD})


def test_never_tested_source_says_so(config: Path) -> None:
    assert json.loads(ok(config, "source", "show", "pg_untested", "--json"))["boundary"] is None
    text = ok(config, "source", "show", "pg_untested")
    assert "boundary:               never checked (run `querybase source test pg_untested`)" in text


def test_admin_api_test_returns_and_keeps_the_findings(config: Path) -> None:
    serve = start_serve(config)
    try:
        api = Api.admin(serve.admin_url)
        result = api.ok("POST", "/sources/pg_bd_super/test")
        assert result["ok"] is True
        assert [(f["code"], f["severity"]) for f in result["boundary"]["findings"]] == [("superuser", "high")]
        shown = api.ok("GET", "/sources/pg_bd_super")
        assert shown["boundary"]["login"] == "bd_super"
        assert shown["boundary"]["findings"] == result["boundary"]["findings"]
        events = api.ok("GET", "/audit", source="pg_bd_super", kind="source.tested")["events"]
        assert events[0]["payload"]["boundary"] == {
            "login": "bd_super",
            "findings": ["high:superuser"],
            "error": None,
        }
    finally:
        if serve.stop() != 0:
            serve.kill()


# ----------------------------------------------------------------------------------- MariaDB


def test_mariadb_least_privilege_login_has_no_findings(config: Path) -> None:
    assert findings(config, "my_bd_least") == set()


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("bd_insert", {("privilege", "high", f"INSERT on `{MY_DB}`.`items`")}),
        ("bd_file", {("global_privilege", "high", "FILE on *.*")}),
        ("bd_super", {("global_privilege", "high", "SUPER on *.*")}),
        ("bd_role", {("privilege", "high", f"INSERT on `{MY_DB}`.*")}),  # through its role
    ],
)
def test_mariadb_findings_name_what_the_login_holds(
    config: Path, user: str, expected: set[tuple[str, str, str]]
) -> None:
    assert findings(config, f"my_{user}") == expected

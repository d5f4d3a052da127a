"""The CLI's admin verbs that mirror the admin API: `user set/remove`, `group remove`, `source set`
and `token create/list/revoke`, end to end on a real store in a temp home.

Each verb runs through `proxy.cli.main` in this process; the token test also starts a real
`querybase serve` and calls its admin API with the token the CLI minted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from policies import pg as pg_policy
from proxy.cli import _os_user
from proxy.config import load_settings
from proxy.store import requests as rq
from proxy.store.db import Store
from proxy.tlsfiles import tls_warning
from tests.support.querybase import ADMIN_PASSWORD, init_home, run_cli_in_process, start_serve

pytestmark = pytest.mark.integration

USER_SECRET = "user-Secret-5be21c"
READ_SECRET = "read-Secret-a3c4d2"
NEW_READ_SECRET = "read-Secret-new-9e0f17"
WRITE_SECRET = "write-Secret-c0ffee"
SECRETS = (ADMIN_PASSWORD, USER_SECRET, READ_SECRET, NEW_READ_SECRET, WRITE_SECRET)
ACTOR = f"cli:{_os_user()}"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return init_home(tmp_path / "qb")


def run(config: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Any:
    result = run_cli_in_process(config, *args, stdin=stdin, env=env)
    leaked = [s for s in SECRETS if s in result.stdout or s in result.stderr]
    assert not leaked, f"{args} printed a password"
    return result


def ok(config: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    result = run(config, *args, stdin=stdin, env=env)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    assert result.stderr == ""
    return str(result.stdout)


def fails(config: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    """The command exits 1 with exactly one `querybase: error: …` line and no traceback."""
    result = run(config, *args, stdin=stdin, env=env)
    assert result.returncode == 1, f"{args}: rc={result.returncode} {result.stdout} {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("querybase: error: ")
    assert result.stdout == ""
    return str(lines[0])


def usage_error(config: Path, *args: str) -> str:
    result = run(config, *args)
    assert result.returncode == 2, f"{args}: rc={result.returncode} {result.stderr}"
    return str(result.stderr)


def events(config: Path, kind_prefix: str) -> list[dict[str, Any]]:
    result = run_cli_in_process(config, "audit", "export")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return [e for e in lines if e["kind"].startswith(kind_prefix)]


def users(config: Path) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in json.loads(ok(config, "user", "list", "--json"))}


def add_user(config: Path, name: str, *extra: str) -> None:
    ok(config, "user", "add", name, *extra, "--password-stdin", stdin=USER_SECRET + "\n")


def add_source(config: Path, name: str = "shop") -> None:
    ok(
        config,
        "source",
        "add",
        name,
        "--engine",
        "postgresql",
        "--host",
        "db.internal",
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
        env={"RPW": READ_SECRET, "WPW": WRITE_SECRET},
    )


def show(config: Path, name: str = "shop") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(config, "source", "show", name, "--json"))
    return data


def run_store(config: Path, work: Any) -> Any:
    async def go() -> Any:
        store = Store(load_settings(config, {}).store.url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


# ------------------------------------------------------------------------------------- users


def test_user_set_admin_flag(config: Path) -> None:
    add_user(config, "alice")
    assert "'alice' is an admin" in ok(config, "user", "set", "alice", "--admin")
    assert users(config)["alice"]["admin"] is True
    assert "'alice' is not an admin" in ok(config, "user", "set", "alice", "--no-admin")
    assert users(config)["alice"]["admin"] is False
    changed = events(config, "user.admin_changed")
    assert [(e["actor"], e["subject"], e["payload"]) for e in changed] == [
        (ACTOR, "alice", {"admin": True}),
        (ACTOR, "alice", {"admin": False}),
    ]

    assert "no user named 'ghost'" in fails(config, "user", "set", "ghost", "--admin")
    assert "one of the arguments --admin --no-admin is required" in usage_error(
        config, "user", "set", "alice"
    )
    assert "not allowed with argument" in usage_error(config, "user", "set", "alice", "--admin", "--no-admin")


def test_last_active_admin_is_kept(config: Path) -> None:
    last = "'admin' is the last active admin"
    assert last in fails(config, "user", "set", "admin", "--no-admin")
    assert last in fails(config, "user", "disable", "admin")
    assert last in fails(config, "user", "remove", "admin")
    admin = users(config)["admin"]
    assert (admin["admin"], admin["active"]) == (True, True)
    assert events(config, "user.admin_changed") == events(config, "user.disabled") == []

    # With a second active admin, the first may go.
    add_user(config, "root2", "--admin")
    ok(config, "user", "set", "admin", "--no-admin")
    assert "'root2' is the last active admin" in fails(config, "user", "disable", "root2")
    ok(config, "user", "set", "admin", "--admin")
    ok(config, "user", "disable", "admin")
    assert users(config)["admin"]["active"] is False
    ok(config, "user", "enable", "admin")
    ok(config, "user", "remove", "root2")
    assert set(users(config)) == {"admin"}


def test_user_remove(config: Path) -> None:
    add_user(config, "alice")
    ok(config, "group", "add", "analysts")
    ok(config, "group", "member", "add", "analysts", "alice")
    create_token(config, "--user", "alice", "--name", "ci")
    assert "'alice' removed" in ok(config, "user", "remove", "alice")
    assert "alice" not in users(config)
    assert json.loads(ok(config, "group", "list", "--json")) == [{"name": "analysts", "members": []}]
    assert json.loads(ok(config, "token", "list", "--json")) == []  # the user's tokens went too
    assert [(e["actor"], e["subject"]) for e in events(config, "user.removed")] == [(ACTOR, "alice")]
    assert "no user named 'alice'" in fails(config, "user", "remove", "alice")


def test_user_with_change_requests_is_not_removed(config: Path) -> None:
    add_user(config, "alice")
    add_source(config)
    sql = "UPDATE items SET qty = 0"
    held = rq.HeldStatement(
        text=sql, classification=pg_policy.classify(sql), parameters=None, session_facts={}
    )
    run_store(config, lambda store: rq.create_request(store, user="alice", source="shop", held=held))
    message = fails(config, "user", "remove", "alice")
    assert "'alice' has change requests or reviews; disable the user instead" in message
    assert "alice" in users(config)
    ok(config, "user", "disable", "alice")
    assert events(config, "user.removed") == []


# ------------------------------------------------------------------------------------ groups


def test_group_remove(config: Path) -> None:
    add_user(config, "alice")
    add_source(config)
    ok(config, "group", "add", "analysts")
    ok(config, "group", "add", "ops")
    ok(config, "group", "member", "add", "analysts", "alice")
    ok(config, "grant", "analysts", "shop", "read")
    ok(config, "grant", "ops", "shop", "approve")
    assert "'analysts' removed" in ok(config, "group", "remove", "analysts")
    assert [g["name"] for g in json.loads(ok(config, "group", "list", "--json"))] == ["ops"]
    assert users(config)["alice"]["groups"] == []
    assert json.loads(ok(config, "grant", "list", "--json")) == [
        {"group": "ops", "source": "shop", "level": "approve"}
    ]
    assert [(e["actor"], e["subject"]) for e in events(config, "group.removed")] == [(ACTOR, "analysts")]
    assert "no group named 'analysts'" in fails(config, "group", "remove", "analysts")


# ----------------------------------------------------------------------------------- sources


def test_source_set_changes_only_the_given_options(config: Path) -> None:
    add_source(config)
    before = show(config)
    out = ok(
        config,
        "source",
        "set",
        "shop",
        "--host",
        "db2.internal",
        "--port",
        "6543",
        "--tls",
        "require",
        "--pool-size",
        "3",
        "--pool-timeout",
        "2.5",
        "--approvals",
        "2",
        "--ddl-approvals",
        "3",
        "--block-ddl",
        "--request-ttl",
        "3600",
        "--hold-wait",
        "30",
        "--schemas",
        "public, sales",
    )
    assert out.startswith("source 'shop' updated: ")
    after = show(config)
    expected = {
        **before,
        "host": "db2.internal",
        "port": 6543,
        "tls": "require",
        "tls_warning": tls_warning("require"),  # prefer's warning before
        "pool_size": 3,
        "pool_timeout_seconds": 2.5,
        "approvals_required": 2,
        "ddl_approvals_required": 3,
        "block_ddl": True,
        "request_ttl_seconds": 3600,
        "hold_wait_seconds": 30,
        "allowed_schemas": ["public", "sales"],
    }
    assert after == expected

    ok(config, "source", "set", "shop", "--database", "shop2", "--user", "reader2")
    assert show(config) == {**expected, "database": "shop2", "read_user": "reader2"}

    ok(config, "source", "set", "shop", "--no-ddl-approvals", "--allow-ddl", "--all-schemas")
    reset = show(config)
    assert (reset["ddl_approvals_required"], reset["block_ddl"], reset["allowed_schemas"]) == (
        None,
        False,
        None,
    )

    updates = events(config, "source.updated")
    assert [e["actor"] for e in updates] == [ACTOR] * 3
    assert updates[0]["payload"]["allowed_schemas"] == ["public", "sales"]
    assert updates[-1]["payload"] == {
        "ddl_approvals_required": None,
        "block_ddl": False,
        "allowed_schemas": None,
    }


def test_source_set_passwords(config: Path) -> None:
    add_source(config)
    key = config.parent / "querybase.key"

    ok(config, "source", "set", "shop", "--password-stdin", stdin=NEW_READ_SECRET + "\n")
    ok(config, "source", "set", "shop", "--no-password")
    assert show(config)["read_password_set"] is False
    ok(config, "source", "set", "shop", "--password-env", "PW", env={"PW": NEW_READ_SECRET})
    assert show(config)["read_password_set"] is True

    ok(
        config,
        "source",
        "set",
        "shop",
        "--write-user",
        "writer2",
        "--write-password-stdin",
        stdin=WRITE_SECRET,
    )
    shown = show(config)
    assert (shown["write_user"], shown["write_password_set"]) == ("writer2", True)
    ok(config, "source", "set", "shop", "--no-write-user")  # clears the write password too
    shown = show(config)
    assert (shown["write_user"], shown["write_password_set"]) == (None, False)
    assert "a write password needs a write user" in fails(
        config, "source", "set", "shop", "--write-password-env", "W", env={"W": WRITE_SECRET}
    )
    ok(
        config,
        "source",
        "set",
        "shop",
        "--write-user",
        "writer",
        "--write-password-env",
        "W",
        env={"W": WRITE_SECRET},
    )

    payloads = [e["payload"] for e in events(config, "source.updated")]
    assert payloads == [
        {"read_password": "set"},
        {"read_password": "cleared"},
        {"read_password": "set"},
        {"write_user": "writer2", "write_password": "set"},
        {"write_user": None, "write_password": "cleared"},
        {"write_user": "writer", "write_password": "set"},
    ]
    export = run_cli_in_process(config, "audit", "export").stdout
    assert not [s for s in SECRETS if s in export]
    store_bytes = (config.parent / "querybase.db").read_bytes()
    assert not [s for s in SECRETS if s.encode() in store_bytes]
    assert key.exists()


@pytest.mark.parametrize(
    ("args", "stdin", "env", "message"),
    [
        ([], None, {}, "nothing to change"),
        (["--port", "70000"], None, {}, "invalid port 70000"),
        (["--pool-size", "0"], None, {}, "invalid pool size 0"),
        (["--host", "bad host"], None, {}, "invalid host"),
        (["--approvals", "0"], None, {}, "invalid approvals_required 0"),
        (["--request-ttl", "5"], None, {}, "invalid request_ttl_seconds 5"),
        (["--hold-wait", "-1"], None, {}, "invalid hold_wait_seconds -1"),
        (["--schemas", "a,,b"], None, {}, "invalid schema name ''"),
        (["--user", ""], None, {}, "the read user must not be empty"),
        (["--write-user", ""], None, {}, "--write-user must not be empty"),
        (["--password-env", "NOPE"], None, {}, "environment variable NOPE is not set"),
        (["--password-env", "E"], None, {"E": ""}, "is empty; to clear the password use --no-password"),
        (["--password-stdin"], "", {}, "--password-stdin: standard input is empty"),
        (
            ["--password-stdin", "--write-password-stdin"],
            "a\nb\n",
            {},
            "stdin holds only one password",
        ),
        (
            ["--no-write-user", "--write-password-env", "W"],
            None,
            {"W": WRITE_SECRET},
            "--no-write-user clears the write password too",
        ),
    ],
)
def test_source_set_refusals(
    config: Path, args: list[str], stdin: str | None, env: dict[str, str], message: str
) -> None:
    add_source(config)
    before = show(config)
    assert message in fails(config, "source", "set", "shop", *args, stdin=stdin, env=env)
    assert show(config) == before
    assert events(config, "source.updated") == []


def test_source_set_unknown_source_and_usage_errors(config: Path) -> None:
    assert "no source named 'nope'" in fails(config, "source", "set", "nope", "--port", "5433")
    assert "not allowed with argument" in usage_error(
        config, "source", "set", "s", "--no-password", "--password-stdin"
    )
    assert "not allowed with argument" in usage_error(
        config, "source", "set", "s", "--block-ddl", "--allow-ddl"
    )
    assert "not allowed with argument" in usage_error(
        config, "source", "set", "s", "--schemas", "a", "--all-schemas"
    )
    assert "invalid choice: 'maybe'" in usage_error(config, "source", "set", "s", "--tls", "maybe")
    argv_password = usage_error(config, "source", "set", "s", "--password", READ_SECRET[:4])
    assert "ambiguous option" in argv_password or "unrecognized arguments" in argv_password
    assert "unrecognized arguments" in usage_error(config, "source", "set", "s", "--engine", "mysql")


# ------------------------------------------------------------------------------------ tokens


def create_token(config: Path, *args: str) -> tuple[str, str]:
    result = run_cli_in_process(config, "token", "create", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


def test_token_create_list_revoke(config: Path) -> None:
    add_user(config, "alice")
    token, note = create_token(config, "--user", "alice", "--name", "ci", "--expires-days", "30")
    assert token.startswith("qbt_")
    assert "\n" not in token
    assert "API token 1 'ci' for user 'alice' created (expires " in note
    assert "shown only this once" in note
    create_token(config, "--user", "admin", "--name", "backup")

    listed = json.loads(ok(config, "token", "list", "--json"))
    assert [(t["id"], t["name"], t["user"], t["created_by"]) for t in listed] == [
        (1, "ci", "alice", ACTOR),
        (2, "backup", "admin", ACTOR),
    ]
    assert listed[0]["expires_at"] is not None
    assert listed[1]["expires_at"] is None
    assert all(t["revoked_at"] is None for t in listed)
    table = ok(config, "token", "list")
    assert token not in table
    assert token not in json.dumps(listed)
    assert table.splitlines()[0].split() == [
        "ID",
        "NAME",
        "USER",
        "CREATED_BY",
        "CREATED",
        "EXPIRES",
        "REVOKED",
        "LAST_USED",
    ]

    assert ok(config, "token", "revoke", "1").strip() == "API token 1 revoked"
    ok(config, "token", "revoke", "1")  # again: a no-op that succeeds, as in the API
    listed = json.loads(ok(config, "token", "list", "--json"))
    assert listed[0]["revoked_at"] is not None
    assert listed[1]["revoked_at"] is None

    created = events(config, "api.token_created")
    assert [(e["actor"], e["subject"], e["payload"]["name"]) for e in created] == [
        (ACTOR, "alice", "ci"),
        (ACTOR, "admin", "backup"),
    ]
    assert [e["payload"]["token_id"] for e in events(config, "api.token_revoked")] == [1, 1]
    export = run_cli_in_process(config, "audit", "export").stdout
    assert token not in export


def test_token_refusals(config: Path) -> None:
    assert "no user named 'ghost'" in fails(config, "token", "create", "--user", "ghost", "--name", "ci")
    assert "no API token with id 99" in fails(config, "token", "revoke", "99")
    assert "--expires-days: must be 1-3650" in fails(
        config, "token", "create", "--user", "admin", "--name", "ci", "--expires-days", "0"
    )
    assert "--name: 1-63 characters" in fails(
        config, "token", "create", "--user", "admin", "--name", "x" * 64
    )
    assert "the following arguments are required: --name" in usage_error(
        config, "token", "create", "--user", "admin"
    )
    assert "invalid int value" in usage_error(config, "token", "revoke", "one")
    assert json.loads(ok(config, "token", "list", "--json")) == []
    failed = [(e["kind"], e["actor"]) for e in events(config, "api.token_")]
    assert failed == [("api.token_create_failed", ACTOR), ("api.token_revoke_failed", ACTOR)]


def test_cli_token_authenticates_against_serve_until_revoked(tmp_path: Path) -> None:
    config = init_home(tmp_path / "qb")
    add_user(config, "alice")
    admin_token, _ = create_token(config, "--user", "admin", "--name", "ops")
    alice_token, _ = create_token(config, "--user", "alice", "--name", "ci")
    serve = start_serve(config)
    try:
        with httpx.Client(base_url=f"{serve.admin_url}/api/v1", timeout=30) as client:

            def get(path: str, token: str) -> httpx.Response:
                return client.get(path, headers={"Authorization": f"Bearer {token}"})

            me = get("/me", admin_token)
            assert me.status_code == 200, me.text
            assert (me.json()["name"], me.json()["admin"]) == ("admin", True)
            assert get("/users", admin_token).status_code == 200
            assert get("/me", alice_token).json()["name"] == "alice"
            assert get("/users", alice_token).status_code == 403  # the token is alice, not an admin

            # The API sees the CLI's tokens, and the CLI sees the tokens the API mints.
            minted = client.post(
                "/tokens",
                json={"user": "alice", "name": "from-api"},
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            assert minted.status_code == 201, minted.text
            names = [t["name"] for t in json.loads(ok(config, "token", "list", "--json"))]
            assert names == ["ops", "ci", "from-api"]

            ok(config, "token", "revoke", "2")
            revoked = get("/me", alice_token)
            assert revoked.status_code == 401
            assert "revoked" in revoked.json()["message"]
            ok(config, "token", "revoke", "1")
            assert get("/users", admin_token).status_code == 401
    finally:
        assert serve.stop() == 0, serve.log
    assert admin_token not in serve.log
    assert alice_token not in serve.log

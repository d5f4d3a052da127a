"""`querybase requests …` end to end: a real PostgreSQL, the store in a temp home, a webhook receiver.

Held requests are inserted with `proxy.store.requests.create_request` (what a wire session calls
when it holds a statement); every verb then runs through `proxy.cli.main` in this process, as the
named user, and approvals execute on the real database through the executor in that process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from admin_api import tokens
from policies import pg as pg_policy
from proxy.config import load_settings
from proxy.store import requests as rq
from proxy.store.db import Store
from tests.support.localdb import PostgresCluster
from tests.support.pgfront import PASSWORDS, SOURCE, provision, setup_items, store_path
from tests.support.querybase import init_home, run_cli_in_process
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.integration

USERS = ("alice", "bob", "carol", "erin")


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def config(
    pg_server: PostgresCluster, tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> Path:
    target = f'{{ name = "test", kind = "json", url = "{receiver.url}" }}'
    notify = f"[notify]\ntargets = [{target}]\nbackoff_seconds = 0.1\n"
    config = init_home(tmp_path_factory.mktemp("cli-requests"), tls_mode="disable", extra=notify)
    provision(config, pg_server, USERS)
    return config


@pytest.fixture
def items(pg_server: PostgresCluster) -> PostgresCluster:
    setup_items(pg_server)
    return pg_server


def run_store(config: Path, work: Any) -> Any:
    async def go() -> Any:
        store = Store(load_settings(config, {}).store.url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def hold(config: Path, user: str, sql: str, parameters: list[dict[str, Any]] | None = None) -> int:
    """A pending change request, stored exactly as a PostgreSQL session holds one."""
    held = rq.HeldStatement(
        text=sql,
        classification=pg_policy.classify(sql),
        parameters=parameters,
        session_facts={"protocol": "postgresql", "client_encoding": "UTF8", "application_name": "test"},
    )
    request_id: int = run_store(
        config, lambda store: rq.create_request(store, user=user, source=SOURCE, held=held)
    )
    return request_id


def qb(config: Path, *args: str, user: str | None = None, env: dict[str, str] | None = None) -> Any:
    """`querybase requests ARGS --as USER` with USER's password in $QUERYBASE_PASSWORD."""
    acting = ["--as", user] if user else []
    environ = {"QUERYBASE_PASSWORD": PASSWORDS[user]} if user else {}
    return run_cli_in_process(config, "requests", *args, *acting, env={**environ, **(env or {})})


def ok(config: Path, *args: str, user: str | None = None, env: dict[str, str] | None = None) -> str:
    result = qb(config, *args, user=user, env=env)
    assert result.returncode == 0, f"{args}: rc={result.returncode} {result.stderr}"
    assert result.stderr == ""
    return str(result.stdout)


def refused(
    config: Path, code: int, *args: str, user: str | None = None, env: dict[str, str] | None = None
) -> str:
    """The command exits `code` with exactly one `querybase: error: …` line."""
    result = qb(config, *args, user=user, env=env)
    assert result.returncode == code, f"{args}: rc={result.returncode} {result.stdout} {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("querybase: error: "), lines[0]
    assert result.stdout == ""
    return str(lines[0])


def status_of(config: Path, request_id: int) -> str:
    with sqlite3.connect(store_path(config)) as db:
        row = db.execute("SELECT status FROM change_requests WHERE id = ?", (request_id,)).fetchone()
    return str(row[0])


def audit_kinds(config: Path, actor: str) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(store_path(config)) as db:
        rows = db.execute(
            "SELECT kind, payload FROM audit_events WHERE actor = ? ORDER BY id", (actor,)
        ).fetchall()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def name_of(pg: PostgresCluster, item_id: int) -> str:
    return pg.execute_sql(f"SELECT name FROM items WHERE id = {item_id}").strip()


# ------------------------------------------------------------------------------------ reads


def test_list_and_show_respect_visibility(config: Path, items: PostgresCluster) -> None:
    mine = hold(config, "alice", "UPDATE items SET name = 'x' WHERE id = 1")
    carols = hold(config, "carol", "DELETE FROM items WHERE id = 5")  # held for a reader too

    listed = json.loads(ok(config, "list", "--json", user="alice"))
    ids = {r["id"] for r in listed}
    assert mine in ids
    assert carols not in ids
    assert {r["requester"] for r in listed} == {"alice"}

    by_bob = json.loads(ok(config, "list", "--json", "--status", "pending", user="bob"))
    assert {mine, carols} <= {r["id"] for r in by_bob}
    assert all(r["status"] == "pending" for r in by_bob)
    only_carol = json.loads(ok(config, "list", "--json", "--requester", "carol", user="bob"))
    assert {r["requester"] for r in only_carol} == {"carol"}
    assert len(json.loads(ok(config, "list", "--json", "--limit", "1", user="bob"))) == 1

    table = ok(config, "list", "--source", SOURCE, user="bob").splitlines()
    assert table[0].split()[:4] == ["ID", "STATUS", "SOURCE", "REQUESTER"]
    assert any(line.split()[:4] == [str(mine), "pending", SOURCE, "alice"] for line in table[1:])

    text = ok(config, "show", str(mine), user="alice")
    assert "status:         pending" in text
    assert "requester:      alice" in text
    assert "  UPDATE items SET name = 'x' WHERE id = 1" in text
    assert "approvals:      0/1" in text
    assert "classification: write, tables items, 1 statement(s), UPDATE" in text
    assert "  protocol: postgresql" in text

    # Somebody else's request is "not found" for alice, as in the API.
    line = refused(config, 5, "show", str(carols), user="alice")
    assert line == f"querybase: error: not_found: change request {carols} does not exist"
    refused(config, 5, "show", "999999", user="bob")
    bad = refused(config, 7, "list", "--status", "nonsense", user="bob")
    assert "invalid: unknown status 'nonsense'" in bad


def test_show_decodes_parameters(config: Path, items: PostgresCluster) -> None:
    params: list[dict[str, Any]] = [
        {"type_oid": 25, "format": 0, "value_b64": base64.b64encode(b"fig").decode()},
        {"type_oid": 23, "format": 1, "value_b64": base64.b64encode(struct.pack("!i", 3)).decode()},
        {"type_oid": 0, "format": 0, "value_b64": None},
    ]
    request_id = hold(
        config, "alice", "UPDATE items SET name = $1 WHERE id = $2 AND $3::text IS NULL", params
    )
    text = ok(config, "show", str(request_id), user="bob")
    assert "  $1  oid 25, text  'fig'" in text
    assert "  $2  oid 23, binary  base64:AAAAAw==" in text
    assert "  $3  oid 0, text  NULL" in text
    shown = json.loads(ok(config, "show", str(request_id), "--json", user="bob"))
    assert shown["parameters"] == params
    assert shown["execution"] is None

    # Approving runs it with exactly those parameter bytes.
    assert ok(config, "approve", str(request_id), user="bob").startswith(
        f"change request {request_id}: approved and executed: succeeded, 1 row affected (UPDATE 1)"
    )
    assert name_of(items, 3) == "fig"


# ---------------------------------------------------------------------------------- decisions


def test_approve_runs_exactly_once_and_notifies(
    config: Path, items: PostgresCluster, receiver: WebhookReceiver
) -> None:
    request_id = hold(config, "alice", "UPDATE items SET name = name || '!' WHERE id = 2 RETURNING id, name")
    assert name_of(items, 2) == "banana"  # held, not run

    out = ok(config, "approve", str(request_id), "--comment", "fine", user="bob")
    lines = out.splitlines()
    assert (
        lines[0]
        == f"change request {request_id}: approved and executed: succeeded, 1 row affected (UPDATE 1)"
    )
    assert json.loads(lines[1]) == {"id": "2", "name": "banana!"}
    assert name_of(items, 2) == "banana!"
    assert status_of(config, request_id) == "succeeded"

    text = ok(config, "show", str(request_id), user="alice")
    assert "status:         succeeded" in text
    assert "bob  approve  'fine'" in text
    assert "  outcome:     succeeded" in text
    assert "  affected:    1 row affected (UPDATE 1)" in text
    assert "  returning:   1 row(s)" in text
    shown = json.loads(ok(config, "show", str(request_id), "--json", user="bob"))
    assert shown["execution"]["rows_affected"]["total"] == 1
    assert shown["execution"]["returning_rows"] == [{"id": "2", "name": "banana!"}]

    # Approving again is a state conflict and runs nothing a second time.
    line = refused(config, 6, "approve", str(request_id), user="bob")
    assert line.startswith("querybase: error: state_conflict: ")
    assert name_of(items, 2) == "banana!"
    # The CLI drained its notifier before it returned: the events are already delivered.
    assert receiver.events(request_id) == ["approved", "executed"]


def test_approve_reports_a_failed_execution(config: Path, items: PostgresCluster) -> None:
    request_id = hold(config, "alice", "UPDATE items SET id = 1 WHERE id = 2")  # duplicate key
    result = qb(config, "approve", str(request_id), user="bob")
    assert result.returncode == 8, result.stderr
    assert result.stdout.startswith(
        f"change request {request_id}: approved, execution failed: SQLSTATE 23505: "
    )
    assert status_of(config, request_id) == "failed"
    assert "  error:       SQLSTATE 23505: " in ok(config, "show", str(request_id), user="bob")


def test_reject_needs_a_comment(config: Path, items: PostgresCluster) -> None:
    request_id = hold(config, "alice", "DELETE FROM items WHERE id = 4")
    usage = qb(config, "reject", str(request_id), user="bob")
    assert usage.returncode == 2
    assert "--comment" in usage.stderr
    line = refused(config, 7, "reject", str(request_id), "--comment", "  ", user="bob")
    assert line == "querybase: error: invalid: a rejection needs a comment saying why"
    assert status_of(config, request_id) == "pending"
    assert ok(config, "reject", str(request_id), "--comment", "not today", user="bob") == (
        f"change request {request_id}: rejected\n"
    )
    assert status_of(config, request_id) == "rejected"
    assert name_of(items, 4) == "date"


def test_self_approval_and_missing_grant_are_refused(config: Path, items: PostgresCluster) -> None:
    by_bob = hold(config, "bob", "DELETE FROM items WHERE id = 1")
    line = refused(config, 4, "approve", str(by_bob), user="bob")
    assert line == "querybase: error: forbidden: you cannot review your own change request"
    by_alice = hold(config, "alice", "DELETE FROM items WHERE id = 1")
    line = refused(config, 4, "approve", str(by_alice), user="alice")
    assert line == f'querybase: error: forbidden: user "alice" has no approve grant on source "{SOURCE}"'
    # carol can neither approve nor even see alice's request.
    refused(config, 5, "approve", str(by_alice), user="carol")
    assert status_of(config, by_bob) == status_of(config, by_alice) == "pending"
    assert name_of(items, 1) == "apple"


def test_cancel_by_the_requester_only(config: Path, items: PostgresCluster) -> None:
    request_id = hold(config, "alice", "DELETE FROM items WHERE id = 3")
    line = refused(config, 4, "cancel", str(request_id), user="bob")
    assert line == "querybase: error: forbidden: only the requester (or an admin) can cancel a change request"
    assert ok(config, "cancel", str(request_id), "--comment", "oops", user="alice") == (
        f"change request {request_id}: cancelled\n"
    )
    assert status_of(config, request_id) == "cancelled"
    refused(config, 6, "cancel", str(request_id), user="alice")
    refused(config, 6, "approve", str(request_id), user="bob")


# ------------------------------------------------------------------------------------- submit


def test_submit_as_proposer_then_approve(
    config: Path, items: PostgresCluster, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    script = tmp_path / "change.sql"
    script.write_text("UPDATE items SET name = 'kiwi' WHERE id = 5;\nDELETE FROM items WHERE id = 4;\n")
    out = ok(config, "submit", "--source", SOURCE, "--file", str(script), user="alice")
    assert f"created on {SOURCE}: pending" in out
    request_id = int(out.split()[2])
    shown = json.loads(ok(config, "show", str(request_id), "--json", user="alice"))
    assert shown["requester"] == "alice"
    assert shown["session_facts"] == {"protocol": "api", "submitted_by": "alice"}
    assert name_of(items, 5) == "elderberry"
    assert receiver.events(request_id) == ["created"]
    out = ok(config, "approve", str(request_id), user="bob")
    assert "succeeded, 2 rows affected (UPDATE 1, DELETE 1)" in out
    assert name_of(items, 5) == "kiwi"
    assert name_of(items, 4) == ""

    inline = ok(config, "submit", "--source", SOURCE, "--sql", "DELETE FROM items WHERE id = 1", user="alice")
    assert "pending" in inline


def test_submit_refusals(config: Path, items: PostgresCluster) -> None:
    line = refused(config, 4, "submit", "--source", SOURCE, "--sql", "DELETE FROM items", user="carol")
    assert line.startswith(f"querybase: error: forbidden: cannot propose this on source {SOURCE!r}")
    line = refused(config, 7, "submit", "--source", SOURCE, "--sql", "SELECT 1", user="alice")
    assert "invalid: the script changes nothing" in line
    refused(config, 5, "submit", "--source", "nowhere", "--sql", "DELETE FROM items", user="alice")
    assert qb(config, "submit", "--source", SOURCE, user="alice").returncode == 2  # no --file/--sql


# ----------------------------------------------------------------------------------- identity


def test_no_identity(config: Path) -> None:
    line = refused(config, 2, "list")
    assert line.startswith("querybase: error: no_identity: say who is acting: --as USER")
    # --as without a password and no terminal to ask on
    result = run_cli_in_process(config, "requests", "list", "--as", "alice")
    assert result.returncode == 2
    assert "no_identity: no password for 'alice': set $QUERYBASE_PASSWORD" in result.stderr
    assert qb(config, "list", "--as", "alice", "--token", "qbt_x").returncode == 2  # one or the other


def test_bad_password_is_refused_audited_and_limited(config: Path) -> None:
    wrong = {"QUERYBASE_PASSWORD": "not-the-password"}
    for _ in range(5):
        result = run_cli_in_process(config, "requests", "list", "--as", "erin", env=wrong)
        assert result.returncode == 3
        assert result.stderr == "querybase: error: unauthorized: invalid user name or password\n"
    line = refused(config, 3, "list", user="erin")  # the right password, but locked out for now
    assert line == (
        "querybase: error: login_failed: too many failed logins for this user; try again in 60 seconds"
    )
    reasons = [p["reason"] for kind, p in audit_kinds(config, "erin") if kind == "cli.login_failed"]
    assert reasons == ["wrong password"] * 5 + ["rate limited"]

    result = run_cli_in_process(config, "requests", "list", "--as", "nobody", env=wrong)
    assert result.returncode == 3
    assert result.stderr == "querybase: error: unauthorized: invalid user name or password\n"
    assert [p["reason"] for _, p in audit_kinds(config, "nobody")] == ["unknown user"]


def test_api_token(config: Path, items: PostgresCluster) -> None:
    token, _ = run_store(
        config,
        lambda store: tokens.create_api_token(
            store, user="bob", name="ci", expires_in_days=None, actor="admin"
        ),
    )
    request_id = hold(config, "alice", "UPDATE items SET name = 'plum' WHERE id = 1")
    listed = json.loads(ok(config, "list", "--json", "--token", token))
    assert request_id in {r["id"] for r in listed}
    out = ok(config, "approve", str(request_id), env={"QUERYBASE_TOKEN": token})
    assert "succeeded, 1 row affected" in out
    assert name_of(items, 1) == "plum"
    reviews = json.loads(ok(config, "show", str(request_id), "--json", "--token", token))["reviews"]
    assert [(r["reviewer"], r["decision"]) for r in reviews] == [("bob", "approve")]

    line = refused(config, 3, "list", "--token", "qbt_not-a-real-token")
    assert line == "querybase: error: unauthorized: unknown API token"
